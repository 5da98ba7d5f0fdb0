"""How the contrastive features of a finished run sit against its memory banks.

    python experiments/camvid/contrastive_diagnostic.py --workdir=workdirs/camvid_grid/p0_s0/ctt \
        --config='configs/camvid.py:1_8,method=ctt,data.partition_seed=0,seed=0'

Restores the latest checkpoint, runs every student and teacher on the first val batch
(`--images`), and prints (and with `--out`, writes as JSON), per network, the mean cosine similarity of each pixel's
normalised feature with the bank entries of its own class and with those of the other
classes (classes without bank entries skipped); then, per bank, the mean cosine within a
class and between classes, and how full each class's queue is. It tells a contrastive loss
that cannot go lower (features already aligned, temperature-bound) from one that is
broken (features not aligned with their class's entries).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import common
from ctt_jax import resize_normalize
from ctt_jax import memory_bank
from ctt_jax import stacked_networks
from ctt_jax import train
from ctt_jax.data import pipeline


def unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def own_and_other(feats, labels, bank, valid):
  """Mean cosine of pixels with their class's bank entries and with the others'."""
  own, other = [], []
  for c in range(bank.shape[0]):
    pixels = feats[labels == c]
    if not len(pixels) or not valid[c].any():
      continue
    own.append((pixels @ bank[c][valid[c]].T).mean())
    other.append(np.mean([(pixels @ bank[d][valid[d]].T).mean()
                          for d in range(bank.shape[0]) if d != c and valid[d].any()]))
  return float(np.mean(own)), float(np.mean(other))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--config', required=True, help='FILE:ARGS, as main.py --config')
  parser.add_argument('--images', type=int, default=4)
  parser.add_argument('--out', default='', help='also write the numbers to this JSON file')
  args = parser.parse_args()
  config = common.from_file(args.config, ROOT)
  run = train.Run(config, args.workdir, asynchronous_checkpoints=False)
  state, step = run.restore()
  data = pipeline.build_datasets(config, training=False, process_index=0, process_count=1)
  batch = next(iter(data.eval_batches()))
  x = resize_normalize.normalizer(config)(
      resize_normalize.to_unit_range(jnp.asarray(batch['image'][:args.images])))
  bank, valid = np.asarray(state.banks.feats), np.asarray(memory_bank.valid_entries(
      state.banks))
  print(f'step {step}; entries per class and bank:\n{valid.sum(-1)}')
  report = {'config': args.config, 'step': int(step), 'images': args.images,
            'entries_per_class_and_bank': valid.sum(-1).tolist(), 'networks': {},
            'banks': {}}
  for role, params, stats in (('student', state.params, state.batch_stats),
                              ('teacher', state.teacher_params, state.teacher_batch_stats)):
    out, _ = stacked_networks.apply(run.model, params, stats, x, train=False, how='unroll')
    feats = unit(np.asarray(out['features']))  # [n, B, h, w, D]
    labels = np.asarray(resize_normalize.resize_labels_nearest(
        jnp.asarray(batch['label'][:args.images]), feats.shape[2:4]))
    for k in range(feats.shape[0]):
      own, other = own_and_other(feats[k], labels, bank[k], valid[k])
      report['networks'][f'{role}_{k}'] = {'cosine_own_class': float(own),
                                           'cosine_other_classes': float(other)}
      print(f'{role}_{k}: cosine with its class\'s bank entries {own:+.3f}, with the other '
            f'classes\' {other:+.3f}')
  for k in range(bank.shape[0]):
    e, m = bank[k], valid[k]
    present = [c for c in range(e.shape[0]) if m[c].any()]
    within = np.mean([(e[c][m[c]] @ e[c][m[c]].T).mean() for c in present])
    between = np.mean([(e[c][m[c]] @ e[d][m[d]].T).mean() for c in present for d in present
                       if c != d])
    print(f'bank {k}: cosine within a class {within:+.3f}, between classes {between:+.3f}')
    report['banks'][str(k)] = {'cosine_within_class': float(within),
                               'cosine_between_classes': float(between)}
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
