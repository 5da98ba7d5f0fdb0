"""Inference: forward passes of the stacked students and teachers, whole-image or by
sliding windows; the eval step and single-network predictions.

    eval_step = jax.jit(make_eval_step(config, model))  # the loop adds shardings
    matrices = eval_step(state, batch)   # int32 [num_networks, C, C], metrics.evaluate sums
    classes = predict_batch(config, model, state, images_uint8, network='teacher_0')

Networks are scored in the order of `Method.network_names()`. `data.eval_protocol` is a
data-side choice (the pipeline delivers images at the protocol's size); on top of it
`eval_sliding_window` slides crops of `data.crop_size` over the image and averages their
softmax, the usual companion of full-resolution evaluation.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ctt_jax import resize_normalize
from ctt_jax import methods as methods_lib
from ctt_jax import metrics
from ctt_jax import stacked_networks


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config values inference reads; hashable, so it can be a static jit argument."""
  num_pairs: int
  num_classes: int
  ignore_label: int
  image_mean: tuple[float, ...]
  image_std: tuple[float, ...]
  image_channel_order: str
  ensemble: bool
  teachers: bool  # False: only the students are scored (Method.eval_teachers)
  sliding_window: bool
  crop_size: tuple[int, int]
  stride_fraction: float


def settings_from_config(config: ml_collections.ConfigDict) -> Settings:
  method = methods_lib.from_config(config)
  return Settings(
      num_pairs=int(config.num_pairs),
      num_classes=int(config.num_classes),
      ignore_label=int(config.ignore_label),
      image_mean=tuple(float(v) for v in config.image_mean),
      image_std=tuple(float(v) for v in config.image_std),
      image_channel_order=config.image_channel_order,
      ensemble=method.eval_ensemble,
      teachers=method.eval_teachers,
      sliding_window=bool(config.eval_sliding_window),
      crop_size=tuple(int(v) for v in config.data.crop_size),
      stride_fraction=float(config.eval_window_stride_fraction))


def _normalized(images_uint8, settings: Settings):
  return resize_normalize.normalize(resize_normalize.to_unit_range(images_uint8),
                                    settings.image_mean, settings.image_std,
                                    settings.image_channel_order)


def _logits_at(model, variables, x, size):
  """float32 [B, *size, C]: eval-mode logits (running BN stats) upsampled to `size`."""
  logits = model.apply(variables, x, train=False)['logits'].astype(jnp.float32)
  return resize_normalize.upsample_bilinear(logits, size)


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """Start offsets of windows of `window` pixels covering [0, size); the last one is
  moved back to end at the border, so every window lies inside the image."""
  if size <= window:
    return [0]
  count = -(-(size - window) // stride) + 1
  return [min(i * stride, size - window) for i in range(count)]


def _sliding_probs(settings: Settings, model, variables, x):
  """float32 [B, H, W, C]: softmax averaged over the crops covering each pixel.

  Crops are `crop_size` (clipped to the image) at a stride of `stride_fraction` x crop.
  All crops have one shape, so a lax.scan over their (static) offsets runs one compiled
  forward pass, whatever the number of crops.
  """
  batch, height, width, channels = x.shape
  crop_h, crop_w = min(settings.crop_size[0], height), min(settings.crop_size[1], width)
  stride_h = max(1, round(settings.crop_size[0] * settings.stride_fraction))
  stride_w = max(1, round(settings.crop_size[1] * settings.stride_fraction))
  offsets = np.array([(y, x0) for y in window_starts(height, crop_h, stride_h)
                      for x0 in window_starts(width, crop_w, stride_w)], np.int32)
  counts = np.zeros((height, width), np.float32)
  for y, x0 in offsets:
    counts[y:y + crop_h, x0:x0 + crop_w] += 1

  def add_window(prob_sum, offset):
    y, x0 = offset[0], offset[1]
    crop = jax.lax.dynamic_slice(x, (0, y, x0, 0), (batch, crop_h, crop_w, channels))
    probs = jax.nn.softmax(_logits_at(model, variables, crop, (crop_h, crop_w)), axis=-1)
    start = (0, y, x0, 0)
    current = jax.lax.dynamic_slice(prob_sum, start, probs.shape)
    return jax.lax.dynamic_update_slice(prob_sum, current + probs, start), None

  init = jnp.zeros((batch, height, width, settings.num_classes), jnp.float32)
  prob_sum, _ = jax.lax.scan(add_window, init, jnp.asarray(offsets))
  return prob_sum / counts[None, :, :, None]


def network_scores(settings: Settings, model, variables, x):
  """float32 [B, H, W, C] whose argmax is one network's prediction at the input size:
  upsampled logits, or with sliding windows the averaged softmax. x: normalised images."""
  if settings.sliding_window:
    return _sliding_probs(settings, model, variables, x)
  return _logits_at(model, variables, x, x.shape[1:3])


def _as_probs(settings: Settings, scores):
  return scores if settings.sliding_window else jax.nn.softmax(scores, axis=-1)


def stacked_predictions(settings: Settings, model, params, batch_stats, x, with_mean: bool):
  """Classes of n stacked networks, int32 [n, B, H, W], and, if `with_mean`, the argmax
  of their averaged softmax [B, H, W] (else None). One network runs at a time (scan)."""
  def one(variables):
    scores = network_scores(settings, model, variables, x)
    probs = _as_probs(settings, scores) if with_mean else None
    return jnp.argmax(scores, axis=-1).astype(jnp.int32), probs

  preds, probs = stacked_networks.map_networks(
      one, {'params': params, 'batch_stats': batch_stats}, how='scan')
  mean_pred = jnp.argmax(probs.sum(0), axis=-1).astype(jnp.int32) if with_mean else None
  return preds, mean_pred


def make_eval_step(config: ml_collections.ConfigDict, model) -> Callable:
  """`eval_step(state, batch) -> int32 [num_networks, C, C]` (pure, jit-able).

  `batch` is the eval format of docs/INTERFACES.md (image uint8 [B, H, W, 3], label int32
  [B, H, W], valid bool [B, H, W]); row i of the result is the confusion matrix of
  `Method.network_names()[i]` on this batch.
  """
  settings = settings_from_config(config)
  return functools.partial(eval_step, settings=settings, model=model)


def eval_step(state, batch, *, settings: Settings, model):
  x = _normalized(batch['image'], settings)
  student_preds, _ = stacked_predictions(settings, model, state.params, state.batch_stats,
                                         x, with_mean=False)
  preds = [student_preds]
  if settings.teachers:
    teacher_preds, ensemble_pred = stacked_predictions(
        settings, model, state.teacher_params, state.teacher_batch_stats, x,
        with_mean=settings.ensemble)
    preds.append(teacher_preds)
  if settings.ensemble:
    preds.append(ensemble_pred[None])
  score = functools.partial(metrics.confusion_matrix, label=batch['label'].astype(jnp.int32),
                            valid=batch['valid'].astype(bool),
                            num_classes=settings.num_classes,
                            ignore_label=settings.ignore_label)
  return jax.vmap(score)(jnp.concatenate(preds))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _predict_one(settings, model, params, batch_stats, k, images_uint8):
  # k is traced: every student and teacher shares one compiled function.
  variables = {'params': stacked_networks.tree_index(params, k),
               'batch_stats': stacked_networks.tree_index(batch_stats, k)}
  scores = network_scores(settings, model, variables, _normalized(images_uint8, settings))
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _predict_ensemble(settings, model, params, batch_stats, images_uint8):
  _, mean_pred = stacked_predictions(settings, model, params, batch_stats,
                                     _normalized(images_uint8, settings), with_mean=True)
  return mean_pred


def parse_network(network: str, num_pairs: int) -> tuple[str, int]:
  """'student_k' / 'teacher_k' / 'ensemble' -> (kind, k); one sentence if unknown."""
  kind, _, index = network.partition('_')
  if network == methods_lib.ENSEMBLE_NETWORK:
    return network, -1
  if kind in ('student', 'teacher') and index.isdigit() and int(index) < num_pairs:
    return kind, int(index)
  valid = [f'{role}_{k}' for role in ('student', 'teacher') for k in range(num_pairs)]
  raise ValueError(f'Unknown network {network!r}; valid: {", ".join(valid)}, '
                   f'{methods_lib.ENSEMBLE_NETWORK}.')


def predict_batch(config: ml_collections.ConfigDict, model, state, images_uint8,
                  network: str = 'teacher_0'):
  """int32 [B, H, W] classes predicted by one network for uint8 images [B, H, W, 3].

  `network` is 'student_k', 'teacher_k' or 'ensemble' (the teachers' averaged softmax;
  allowed for any method). Inference is as in `make_eval_step` (eval mode, bilinear
  upsampling to the input size, sliding windows if configured). The forward pass is
  jitted once per image shape, shared by all students and teachers.
  """
  settings = settings_from_config(config)
  kind, k = parse_network(network, settings.num_pairs)
  if kind == methods_lib.ENSEMBLE_NETWORK:
    return _predict_ensemble(settings, model, state.teacher_params,
                             state.teacher_batch_stats, images_uint8)
  if kind == 'student':
    params, stats = state.params, state.batch_stats
  else:
    params, stats = state.teacher_params, state.teacher_batch_stats
  return _predict_one(settings, model, params, stats, jnp.int32(k), images_uint8)
