"""Opt-in: the recipe adapted to a batch_size other than the one it was tuned for.

`scaling.rule='none'` (the default) runs the config as written, whatever `batch_size` is.
With `batch_size` B instead of the recipe's B0 (`scaling.base_batch_size`, the dataset's
batch) and a rule:

    linear: lr x B / B0            sqrt: lr x sqrt(B / B0)
    both:   total_steps and every period counted in steps (log, eval, checkpoint, the
            contrastive start, stop_at_step) x B0 / B: the run sees as many images;
            ema_decay -> ema_decay ** (B / B0): the teachers move as far per image.

The bank's k per push and the batch-norm statistics are not rescaled: the banks take k
features per class and step whatever the batch, so with a larger batch they hold fresher
features. Nothing is scaled silently: `apply` logs every key it changes.
"""
from __future__ import annotations

import math

from absl import logging
import ml_collections

# Periods in steps; -1 (off) stays as it is.
_STEP_KEYS = ('log_every', 'eval_every', 'checkpoint_every', 'contrastive_start_step',
              'stop_at_step')


def scaled_values(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{key: (recipe value, scaled value)} of every key the rule changes; {} for 'none' or
  when batch_size is the recipe's."""
  rule, base, batch = config.scaling.rule, int(config.scaling.base_batch_size), int(
      config.batch_size)
  if rule == 'none' or batch == base:
    return {}
  if rule not in ('linear', 'sqrt'):
    raise ValueError(f'Unknown scaling.rule {rule!r}; valid: none, linear, sqrt.')
  factor = batch / base
  changes = {
      'lr': config.lr * (factor if rule == 'linear' else math.sqrt(factor)),
      'total_steps': max(1, math.ceil(config.total_steps / factor)),
      'ema_decay': config.ema_decay ** factor,
  }
  for key in _STEP_KEYS:
    if config[key] > 0:
      changes[key] = max(1, round(config[key] / factor))
  return {k: (config[k], v) for k, v in changes.items() if v != config[k]}


def apply(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the scaling rule applied (a copy; the same object for rule 'none')."""
  changes = scaled_values(config)
  if not changes:
    return config
  config = config.copy_and_resolve_references()
  for key, (_, value) in changes.items():
    config[key] = value
  logging.warning(
      'scaling.rule=%s for batch_size=%d (the recipe was tuned for %d): %s.',
      config.scaling.rule, config.batch_size, config.scaling.base_batch_size,
      ', '.join(f'{k} {old:g} -> {new:g}' for k, (old, new) in changes.items()))
  return config
