"""Segmentation metrics: confusion matrices over the whole val set, per-class IoU and mIoU
(the ignore label excluded), and their JSON.

    results = evaluate(eval_step, state, batches, method.network_names(), num_classes)
    results['teacher_0']['miou'], results['best']
    write_eval_json(results, path, class_names)
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


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


def _nan_last(miou: float) -> float:
  return -math.inf if math.isnan(miou) else miou


def evaluate(eval_step: Callable, state, batches: Iterable[Any], names: Sequence[str],
             num_classes: int) -> dict[str, Any]:
  """Scores every network over all `batches` (numpy or device arrays).

  eval_step(state, batch) returns one [C, C] confusion matrix per name of `names`
  (`inference.make_eval_step`). Returns {name: {'miou': float, 'per_class_iou': [C floats,
  NaN = class absent], 'confusion': [[C ints]] * C}} for each name, and 'best': the name
  with the highest mIoU.
  """
  names, c = list(names), int(num_classes)
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
                     f'{len(names)} networks; build it with inference.make_eval_step for the same method.')

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


def read_eval_json(path: str) -> dict[str, Any]:
  """`write_eval_json`'s file back as `evaluate`'s results (+ 'class_names'; NaN for
  classes with no IoU)."""
  with open(path) as f:
    saved = json.load(f)
  results: dict[str, Any] = {'best': saved.pop('best')}
  class_names = None
  for name, r in saved.items():
    class_names = list(r['per_class_iou'])
    per_class = [math.nan if v is None else v for v in r['per_class_iou'].values()]
    miou = math.nan if r['miou'] is None else r['miou']
    results[name] = {'miou': miou, 'per_class_iou': per_class, 'confusion': r['confusion']}
  results['class_names'] = class_names or []
  return results
