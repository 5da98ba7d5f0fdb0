"""CTT against the supervised baseline and mean teacher on CamVid, on a CPU.

    python scripts/camvid_experiment.py --workdir=/tmp/camvid_exp [--overrides=total_steps=1000]

Runs `supervised`, `mean_teacher` and `ctt` with configs/camvid.py on the same labeled
subset (same seed) and budget, one after another, each in its own process; every run
evaluates on the 101 val images every `eval_every` steps. Then writes, into the workdir:
- results.md: mIoU of teacher_0 at the final evaluation (the same network for every
  method), per-class IoU, the best network, steps, wall time, seed — the README's table;
- curves.png: val mIoU against steps per method (also in each run's TensorBoard events);
- results.json: everything above, machine-readable.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('supervised', 'mean_teacher', 'ctt')
# The paper's baselines are single networks: the supervised baseline and the classic mean
# teacher have one student (and its EMA teacher); CTT has two pairs.
METHOD_OVERRIDES = {'supervised': 'num_pairs=1', 'mean_teacher': 'num_pairs=1', 'ctt': ''}
# Every method is scored by the same network, fixed in advance (no pick of the best of
# several networks, which would favour methods with more of them).
REPORTED_NETWORK = 'teacher_0'


def run_method(method: str, workdir: str, split: str, overrides: str) -> float:
  """Trains one method to completion (resuming if its workdir has checkpoints)."""
  extra = ','.join(o for o in (METHOD_OVERRIDES.get(method, ''), overrides) if o)
  arg = f'{split},method={method}' + (f',{extra}' if extra else '')
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'),
         f'--config={os.path.join(ROOT, "configs", "camvid.py")}:{arg}',
         f'--workdir={workdir}']
  print('$', ' '.join(cmd), flush=True)
  start = time.time()
  with open(os.path.join(workdir + '.log'), 'a') as log:
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
  return time.time() - start


def read_curve(workdir: str) -> list[tuple[int, dict]]:
  """[(step, eval results)] from the run's eval/step_*.json files."""
  curve = []
  for path in sorted(glob.glob(os.path.join(workdir, 'eval', 'step_*.json'))):
    step = int(os.path.basename(path)[len('step_'):-len('.json')])
    with open(path) as f:
      curve.append((step, json.load(f)))
  return curve


def _reported(results: dict) -> dict:
  return results[REPORTED_NETWORK]


def _per_class(entry: dict) -> dict:
  per_class = entry['per_class_iou']
  return per_class if isinstance(per_class, dict) else dict(enumerate(per_class))


def write_table(summary: dict, path: str) -> str:
  methods = list(summary)
  classes = list(_per_class(summary[methods[0]]['final']))
  lines = [f'| method | mIoU ({REPORTED_NETWORK}) | best network (mIoU) | steps | wall time '
           '| seed | ' + ' | '.join(str(c) for c in classes) + ' |',
           '|---|---|---|---|---|---|' + '---|' * len(classes)]
  for m in methods:
    s = summary[m]
    per_class = _per_class(s['final'])
    cells = ' | '.join('-' if per_class[c] is None else f'{100 * per_class[c]:.1f}'
                       for c in classes)
    lines.append(f'| {m} | {100 * s["final"]["miou"]:.2f} | {s["best_network"]} '
                 f'({100 * s["best_miou"]:.2f}) | {s["steps"]} | {s["wall_minutes"]:.1f} min '
                 f'| {s["seed"]} | {cells} |')
  table = '\n'.join(lines) + '\n'
  with open(path, 'w') as f:
    f.write(table)
  return table


def plot_curves(curves: dict, path: str, split: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, curve in curves.items():
    steps = [s for s, _ in curve]
    mious = [100 * _reported(r)['miou'] for _, r in curve]
    ax.plot(steps, mious, marker='o', label=method)
  ax.set_xlabel('step')
  ax.set_ylabel(f'val mIoU (%), {REPORTED_NETWORK}')
  ax.set_title(f'CamVid val (101 images), {split.replace("_", "/")} labeled')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--split', default='1_8')
  parser.add_argument('--overrides', default='', help='extra key=value,... for every run')
  parser.add_argument('--methods', default=','.join(METHODS))
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  summary, curves = {}, {}
  for method in args.methods.split(','):
    run_dir = os.path.join(args.workdir, method)
    wall = run_method(method, run_dir, args.split, args.overrides)
    with open(os.path.join(run_dir, 'config.json')) as f:
      config = json.load(f)
    curve = read_curve(run_dir)
    if not curve:
      raise RuntimeError(f'{run_dir} has no eval/step_*.json: the run did not evaluate.')
    step, final = curve[-1]
    entry = _reported(final)
    summary[method] = {'final': entry, 'best_network': final['best'],
                       'best_miou': final[final['best']]['miou'], 'steps': step,
                       'wall_minutes': wall / 60, 'seed': config['seed'],
                       'curve': [(s, _reported(r)['miou']) for s, r in curve]}
    curves[method] = curve
    print(f'{method}: mIoU {100 * entry["miou"]:.2f} ({REPORTED_NETWORK}) after {step} '
          f'steps, {wall / 60:.1f} min', flush=True)
  table = write_table(summary, os.path.join(args.workdir, 'results.md'))
  plot_curves(curves, os.path.join(args.workdir, 'curves.png'), args.split)
  with open(os.path.join(args.workdir, 'results.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(table)


if __name__ == '__main__':
  main()
