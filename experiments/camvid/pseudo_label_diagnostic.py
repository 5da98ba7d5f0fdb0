"""Where a finished run's pseudo-labels go wrong, and what each CT weighting makes of it.

    python experiments/camvid/pseudo_label_diagnostic.py --workdir=workdirs/camvid_grid/p0_s0/ctt \
        --config='configs/camvid.py:1_8,method=ctt,data.partition_seed=0,seed=0' [--step=N]

Restores a checkpoint (the latest, or `--step`), runs every teacher in eval mode on the
whole unlabeled images (no crop, no flip: the weak view without its augmentation), and
prints (and with `--out`, writes as JSON) per ground-truth class, for teacher_0: how many of the class's pixels the
pseudo-labels get right (recall), their mean confidence when right and when wrong, and the
share of the cross-teacher loss weight that lands on wrong pseudo-labels under each
`ct_weighting` (`batch_confident_fraction` weighs every pixel of a batch alike, so its
share is the error rate; `confidence_power` weighs a pixel by confidence ** power).

It tells whether a per-pixel weighting would spare a class its confirmation bias: if the
wrong pseudo-labels of the classes the teachers lose are as confident as the right ones,
no confidence weighting can.
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
from ctt_jax import stacked_networks
from ctt_jax import train
from ctt_jax.data import pipeline
from ctt_jax.data import streams


def teacher_predictions(run, state, config, source, batch_size):
  """(confidence [n, N, H, W], prediction [n, N, H, W], truth [N, H, W], valid [N, H, W])
  of every teacher on every unlabeled image, in list order."""
  resize_to, pad_size = pipeline.eval_geometry(config.data, source)
  ds = streams.eval_stream(source.unlabeled, resize_to=resize_to, pad_size=pad_size,
                           global_batch=batch_size, process_index=0, process_count=1)
  confs, preds, truths, valids = [], [], [], []
  for batch in ds.as_numpy_iterator():
    unit = resize_normalize.to_unit_range(jnp.asarray(batch['image']))
    x = resize_normalize.normalizer(config)(unit)
    out, _ = stacked_networks.apply(run.model, state.teacher_params,
                                    state.teacher_batch_stats, x, train=False, how='unroll')
    # As the step does (train_step.pseudo_labels): bilinear logits to image size, softmax.
    logits = resize_normalize.upsample_bilinear(out['logits'], batch['label'].shape[-2:])
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    confs.append(probs.max(-1))
    preds.append(probs.argmax(-1))
    truths.append(batch['label'])
    valids.append(batch['valid'] & (batch['label'] != config.ignore_label))
  return (np.concatenate(confs, 1), np.concatenate(preds, 1), np.concatenate(truths),
          np.concatenate(valids))


def wrong_share(conf, right, power: float) -> float:
  """Share of the weight conf ** power (power 0: every pixel alike) on wrong labels."""
  w = conf ** power
  return float((w * ~right).sum() / w.sum())


def class_table(conf, pred, truth, valid, class_names, threshold, powers):
  """Rows per ground-truth class of one teacher's pseudo-labels (see the module doc)."""
  rows = []
  for c, name in enumerate(class_names):
    pixels = valid & (truth == c)
    if not pixels.any():
      continue
    right = pred[pixels] == c
    p = conf[pixels]
    row = {'class': name, 'share_of_pixels': pixels.sum() / valid.sum(),
           'recall': right.mean(),
           'conf_right': p[right].mean() if right.any() else float('nan'),
           'conf_wrong': p[~right].mean() if (~right).any() else float('nan'),
           'wrong_weight/uniform': wrong_share(p, right, 0),
           'wrong_weight/threshold': ((p >= threshold) & ~right).sum() / max(
               (p >= threshold).sum(), 1)}
    for power in powers:
      row[f'wrong_weight/conf^{power:g}'] = wrong_share(p, right, power)
    rows.append(row)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--config', required=True, help='FILE:ARGS, as main.py --config')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (latest)')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--out', default='', help='also write the numbers to this JSON file')
  args = parser.parse_args()
  config = common.from_file(args.config, ROOT)
  run = train.Run(config, args.workdir, asynchronous_checkpoints=False)
  state, step = run.restore(args.step)
  source = pipeline.load_source(config)
  conf, pred, truth, valid = teacher_predictions(run, state, config, source,
                                                 args.batch_size)
  names, _ = pipeline.class_info(config.data.name)
  threshold = float(config.ct_confidence_threshold)
  agreement = {f'0_vs_{k}': float((pred[0][valid] == pred[k][valid]).mean())
               for k in range(1, len(pred))}
  print(f'step {step}; {valid.sum()} labelled pixels of {len(source.unlabeled)} unlabeled '
        f'images; teacher agreement '
        + ', '.join(f'{v:.3f} ({k.replace("_", " ")})' for k, v in agreement.items()))
  rows = [{k: v if isinstance(v, str) else float(v) for k, v in r.items()}
          for r in class_table(conf[0], pred[0], truth, valid, names, threshold,
                               powers=(1, 6))]
  columns = list(rows[0])
  print('teacher_0 | ' + ' | '.join(columns[1:]))
  for r in rows:
    print(f'{r["class"]:>11} | ' + ' | '.join(f'{r[k]:.3f}' for k in columns[1:]))
  right, p = pred[0][valid] == truth[valid], conf[0][valid]
  overall = {'recall': float(right.mean()), 'wrong_weight/uniform': wrong_share(p, right, 0)}
  for power in (1, 6):
    overall[f'wrong_weight/conf^{power}'] = wrong_share(p, right, power)
    print(f'all classes: wrong share of the weight, conf^{power}: '
          f'{overall[f"wrong_weight/conf^{power}"]:.3f} '
          f'(uniform: {overall["wrong_weight/uniform"]:.3f})')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'config': args.config, 'step': int(step), 'teachers_mode': 'eval',
                 'unlabeled_images': len(source.unlabeled),
                 'teacher_agreement': agreement, 'teacher_0_per_class': rows,
                 'teacher_0_all_classes': overall}, f, indent=1)
    print(f'wrote {args.out}')

if __name__ == '__main__':
  main()
