"""Evaluation: confusion matrices and mIoU of every student and teacher (SPEC "Evaluation").

    eval_step = jax.jit(make_eval_step(config, model))  # the loop adds shardings
    results = evaluate(eval_step, state, datasets.eval_batches(), config)
    results['teacher_0']['miou'], results['best']

Networks are scored in the order of `network_names(config)`. `data.eval_protocol` is a
data-side choice (the pipeline delivers images at the protocol's size); on top of it
`eval_sliding_window` slides crops of `data.crop_size` over the image and averages their
softmax, the usual companion of full-resolution evaluation.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ctt_jax.train_state import tree_index
from ctt_jax.train_step import normalize_images, upsample_bilinear

ENSEMBLE = 'ensemble'


# ----------------------------------------------------------------------------------------
# Confusion matrix and IoU
# ----------------------------------------------------------------------------------------


def confusion_matrix(pred, label, valid, num_classes: int, ignore_label: int = 255):
  """int32 [C, C] counts, rows = ground truth, columns = prediction.

  Args:
    pred: int [..., H, W] predicted classes.
    label: int [..., H, W] ground truth; `ignore_label` (and anything outside [0, C)) is
      left out.
    valid: bool [..., H, W] or None; False (padding) is left out.
    num_classes: C.
    ignore_label: the label value that is not scored.

  Counted per image as a one-hot matmul (MXU/tensor-core friendly, no scatter); the 0/1
  products summed in float32 are exact below 2**24 pixels per image (16.7M, 8x a
  Cityscapes frame), and the per-image counts are summed in int32.
  """
  pred = jnp.asarray(pred)
  label = jnp.asarray(label)
  height, width = label.shape[-2:]
  keep = label != ignore_label
  if valid is not None:
    keep = keep & jnp.asarray(valid, bool)
  # one_hot(-1) is all zeros, so excluded pixels add nothing.
  truth = jnp.where(keep, label, -1).reshape(-1, height * width)
  pred = pred.reshape(-1, height * width)
  truth_1h = jax.nn.one_hot(truth, num_classes, dtype=jnp.float32)  # [N, P, C]
  pred_1h = jax.nn.one_hot(pred, num_classes, dtype=jnp.float32)
  per_image = jnp.einsum('npc,npd->ncd', truth_1h, pred_1h)
  return jnp.round(per_image).astype(jnp.int32).sum(axis=0)


def iou_from_confusion(cm) -> tuple[float, np.ndarray]:
  """(mIoU, per-class IoU float64 [C]) of a [C, C] confusion matrix (rows = truth).

  IoU_c = TP / (TP + FP + FN). A class absent from both the ground truth and the
  predictions has no IoU: it is NaN in the per-class array and left out of the mean (a
  class predicted but never present scores 0 and counts). mIoU is NaN if every class is.
  """
  cm = np.asarray(cm, np.int64)
  tp = np.diag(cm)
  union = cm.sum(axis=0) + cm.sum(axis=1) - tp  # TP + FP + FN
  iou = np.full(cm.shape[0], np.nan)
  present = union > 0
  iou[present] = tp[present] / union[present]
  miou = float(iou[present].mean()) if present.any() else float('nan')
  return miou, iou


# ----------------------------------------------------------------------------------------
# Forward passes of the stacked networks
# ----------------------------------------------------------------------------------------


def network_names(config: ml_collections.ConfigDict) -> list[str]:
  """'student_0'..'student_{n-1}', 'teacher_0'.., and 'ensemble' for method=ensemble."""
  n = int(config.num_pairs)
  names = [f'student_{k}' for k in range(n)] + [f'teacher_{k}' for k in range(n)]
  if config.method == 'ensemble':
    names.append(ENSEMBLE)  # the teachers' averaged softmax
  return names


@dataclasses.dataclass(frozen=True)
class _Settings:
  """The config values evaluation reads, hashable so they can be a static jit argument.

  Has `image_mean`/`image_std` attributes, so it can stand in for the config in
  `normalize_images`.
  """
  num_pairs: int
  num_classes: int
  ignore_label: int
  image_mean: tuple[float, ...]
  image_std: tuple[float, ...]
  ensemble: bool
  sliding_window: bool
  crop_size: tuple[int, int]
  stride_fraction: float


def _settings(config: ml_collections.ConfigDict) -> _Settings:
  return _Settings(
      num_pairs=int(config.num_pairs),
      num_classes=int(config.num_classes),
      ignore_label=int(config.ignore_label),
      image_mean=tuple(float(v) for v in config.image_mean),
      image_std=tuple(float(v) for v in config.image_std),
      ensemble=config.method == 'ensemble',
      sliding_window=bool(config.get('eval_sliding_window', False)),
      crop_size=tuple(int(v) for v in config.data.crop_size),
      stride_fraction=float(config.get('eval_window_stride_fraction', 2 / 3)))


def _logits_at(model, variables, x, size):
  """float32 [B, *size, C]: eval-mode logits (running BN stats) upsampled to `size`."""
  logits = model.apply(variables, x, train=False)['logits'].astype(jnp.float32)
  return upsample_bilinear(logits, size)


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """Start offsets of windows of `window` pixels covering [0, size); the last one is
  moved back to end at the border, so every window lies inside the image."""
  if size <= window:
    return [0]
  count = -(-(size - window) // stride) + 1
  return [min(i * stride, size - window) for i in range(count)]


def _sliding_probs(settings: _Settings, model, variables, x):
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


def _scores(settings: _Settings, model, variables, x):
  """float32 [B, H, W, C] whose argmax is the prediction: upsampled logits, or with
  sliding windows the averaged softmax."""
  if settings.sliding_window:
    return _sliding_probs(settings, model, variables, x)
  return _logits_at(model, variables, x, x.shape[1:3])


def _as_probs(settings: _Settings, scores):
  return scores if settings.sliding_window else jax.nn.softmax(scores, axis=-1)


def _predict_stacked(settings: _Settings, model, params, batch_stats, x, sum_probs: bool):
  """Runs n stacked networks one after another on normalised images x [B, H, W, 3].

  A lax.scan over the stacked axis compiles one forward pass whatever n is and holds one
  network's activations at a time. Returns (preds int32 [n, B, H, W], the sum of the n
  networks' softmax [B, H, W, C] if `sum_probs`, else a dummy scalar).
  """
  def one_network(prob_sum, variables):
    scores = _scores(settings, model, variables, x)
    if sum_probs:
      prob_sum = prob_sum + _as_probs(settings, scores)
    return prob_sum, jnp.argmax(scores, axis=-1).astype(jnp.int32)

  init = (jnp.zeros((*x.shape[:-1], settings.num_classes), jnp.float32) if sum_probs
          else jnp.zeros((), jnp.float32))
  prob_sum, preds = jax.lax.scan(one_network, init,
                                 {'params': params, 'batch_stats': batch_stats})
  return preds, prob_sum


def _normalized(images_uint8, settings: _Settings):
  return normalize_images(jnp.asarray(images_uint8).astype(jnp.float32) / 255.0, settings)


def make_eval_step(config: ml_collections.ConfigDict, model) -> Callable:
  """Builds `eval_step(state, batch) -> int32 [num_networks, C, C]` (pure, jit-able).

  `batch` is the eval format of docs/INTERFACES.md (image uint8 [B, H, W, 3], label int32
  [B, H, W], valid bool [B, H, W]); row i of the result is the confusion matrix of
  `network_names(config)[i]` on this batch.
  """
  settings = _settings(config)

  def eval_step(state, batch):
    x = _normalized(batch['image'], settings)
    student_preds, _ = _predict_stacked(settings, model, state.params, state.batch_stats,
                                        x, sum_probs=False)
    teacher_preds, prob_sum = _predict_stacked(
        settings, model, state.teacher_params, state.teacher_batch_stats, x,
        sum_probs=settings.ensemble)
    preds = [student_preds, teacher_preds]
    if settings.ensemble:  # argmax of the sum = argmax of the mean
      preds.append(jnp.argmax(prob_sum, axis=-1).astype(jnp.int32)[None])
    preds = jnp.concatenate(preds)  # [num_networks, B, H, W]
    label = batch['label'].astype(jnp.int32)
    valid = batch['valid'].astype(bool)
    score = functools.partial(confusion_matrix, label=label, valid=valid,
                              num_classes=settings.num_classes,
                              ignore_label=settings.ignore_label)
    return jax.vmap(score)(preds)

  return eval_step


# ----------------------------------------------------------------------------------------
# Predictions of one network (image summaries, --mode=predict)
# ----------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 1))
def _predict_one(settings, model, params, batch_stats, k, images_uint8):
  # k is traced: every student and teacher shares one compiled function.
  variables = {'params': tree_index(params, k), 'batch_stats': tree_index(batch_stats, k)}
  scores = _scores(settings, model, variables, _normalized(images_uint8, settings))
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _predict_ensemble(settings, model, params, batch_stats, images_uint8):
  _, prob_sum = _predict_stacked(settings, model, params, batch_stats,
                                 _normalized(images_uint8, settings), sum_probs=True)
  return jnp.argmax(prob_sum, axis=-1).astype(jnp.int32)


def _parse_network(network: str, num_pairs: int) -> tuple[str, int]:
  kind, _, index = network.partition('_')
  if network == ENSEMBLE:
    return ENSEMBLE, -1
  if kind in ('student', 'teacher') and index.isdigit() and int(index) < num_pairs:
    return kind, int(index)
  valid = [f'{role}_{k}' for role in ('student', 'teacher') for k in range(num_pairs)]
  raise ValueError(f'Unknown network {network!r}; valid: {", ".join(valid)}, ensemble.')


def predict_batch(config: ml_collections.ConfigDict, model, state, images_uint8,
                  network: str = 'teacher_0'):
  """int32 [B, H, W] classes predicted by one network for uint8 images [B, H, W, 3].

  `network` is 'student_k', 'teacher_k' or 'ensemble' (the teachers' averaged softmax;
  allowed for any method). Inference is as in `make_eval_step` (eval mode, bilinear
  upsampling to the input size, sliding windows if configured). The forward pass is
  jitted once per image shape, shared by all students and teachers.
  """
  settings = _settings(config)
  kind, k = _parse_network(network, settings.num_pairs)
  if kind == ENSEMBLE:
    return _predict_ensemble(settings, model, state.teacher_params,
                             state.teacher_batch_stats, images_uint8)
  if kind == 'student':
    params, stats = state.params, state.batch_stats
  else:
    params, stats = state.teacher_params, state.teacher_batch_stats
  return _predict_one(settings, model, params, stats, jnp.int32(k), images_uint8)


# ----------------------------------------------------------------------------------------
# The whole validation set
# ----------------------------------------------------------------------------------------


def _nan_last(miou: float) -> float:
  return -math.inf if math.isnan(miou) else miou


def evaluate(eval_step: Callable, state, batches: Iterable[Any],
             config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Scores every network over all `batches` (numpy or device arrays).

  Returns {name: {'miou': float, 'per_class_iou': [C floats, NaN = class absent],
  'confusion': [[C ints]] * C}} for each of `network_names(config)`, and 'best': the name
  with the highest mIoU.
  """
  names = network_names(config)
  c = int(config.num_classes)
  total = np.zeros((len(names), c, c), np.int64)  # int64: no overflow over a whole val set
  pending = None
  for batch in batches:
    matrices = eval_step(state, batch)  # dispatched asynchronously
    if pending is not None:  # fetch the previous batch's result while this one runs
      total += np.asarray(jax.device_get(pending), np.int64)
    pending = matrices
  if pending is None:
    raise ValueError('The evaluation set yielded no batches; check data.data_dir and that '
                     'the validation split lists images.')
  total += np.asarray(jax.device_get(pending), np.int64)
  if total.shape[0] != len(names):
    raise ValueError(f'eval_step returned {total.shape[0]} confusion matrices for '
                     f'{len(names)} networks; build it with make_eval_step(config, ...).')

  results: dict[str, Any] = {}
  for name, cm in zip(names, total):
    miou, per_class = iou_from_confusion(cm)
    results[name] = {'miou': miou, 'per_class_iou': [float(v) for v in per_class],
                     'confusion': cm.tolist()}
  results['best'] = max(names, key=lambda n: _nan_last(results[n]['miou']))
  return results


def _finite_or_none(value: float):
  return None if math.isnan(value) else value  # JSON has no NaN


def write_eval_json(results: dict[str, Any], path: str, class_names: Sequence[str]):
  """Writes `evaluate`'s results to `path`, per-class IoU keyed by class name (null = class
  absent from truth and predictions). Written to a temporary file, then renamed, so a
  reader never sees half a file."""
  names = [n for n in results if n != 'best']
  out = {'best': results['best']}
  for name in names:
    r = results[name]
    if len(r['per_class_iou']) != len(class_names):
      raise ValueError(f'{len(class_names)} class names for {len(r["per_class_iou"])} '
                       'classes; pass the dataset\'s class_names.')
    out[name] = {
        'miou': _finite_or_none(r['miou']),
        'per_class_iou': {cls: _finite_or_none(v)
                          for cls, v in zip(class_names, r['per_class_iou'])},
        'confusion': r['confusion'],
    }
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(out, f, indent=1)
  os.replace(tmp, path)
