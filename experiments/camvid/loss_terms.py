"""How much of a run's training loss each term carries, from its event files.

    python experiments/camvid/loss_terms.py --workdir=workdirs/camvid_grid/p0_s0/ctt \
        [--window=500] [--out=FILE.json]

Reads the logged `train/loss` and its terms (`train/loss_sup`, `loss_ct`, `loss_hc`,
`loss_lc`; HC and LC are logged before their lambda) and the lambdas from the run's
`config.json`, and prints per window of steps each term's mean raw value, its weighted
value (zero while the contrastive terms wait for `contrastive_start_step`) and its
share of the weighted sum. It tells whether a term the run trains with
dominates the objective, and whether it still falls.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
import run_grid  # its event-file reader

TERMS = ('sup', 'ct', 'hc', 'lc')


def loss_terms(workdir: str, window: int) -> dict:
  """{'lambdas', 'windows': [{'steps': [a, b], 'total', 'terms': {term: {...}}}]}."""
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise SystemExit(f'{config_path} does not exist: point --workdir at one run of main.py.')
  with open(config_path) as f:
    config = json.load(f)
  lambdas = {t: float(config.get(f'lambda_{t}', 0.0)) * bool(config.get(f'use_{t}', True))
             for t in TERMS}
  series = run_grid.read_scalars(workdir, 'train/')
  if 'train/loss' not in series:
    raise SystemExit(f'{workdir} has no logged train/loss: was it trained with main.py?')
  # HC and LC are logged from step 0 but enter the loss only once `contrastive_active`.
  active = dict(series.get('train/contrastive_active', ()))
  last = series['train/loss'][-1][0]
  windows = []
  for start in range(0, last, window):
    end = min(start + window, last)
    total = [v for s, v in series['train/loss'] if start < s <= end]
    terms = {}
    for term in TERMS:
      logged = [(s, v) for s, v in series.get(f'train/loss_{term}', ()) if start < s <= end]
      if not logged:
        continue
      on = [1.0 if term in ('sup', 'ct') else active.get(s, 1.0) for s, _ in logged]
      raw = [v for _, v in logged]
      terms[term] = {'raw': float(np.mean(raw)),
                     'weighted': float(np.mean(np.multiply(raw, on))) * lambdas[term]}
    weighted_sum = sum(t['weighted'] for t in terms.values())
    for t in terms.values():
      t['share'] = t['weighted'] / weighted_sum if weighted_sum else None
    windows.append({'steps': [start, end], 'total': float(np.mean(total)) if total else None,
                    'terms': terms})
  return {'lambdas': lambdas, 'windows': windows}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--window', type=int, default=500, help='steps per row')
  parser.add_argument('--out', default='', help='also write the numbers to this JSON file')
  args = parser.parse_args()
  result = loss_terms(args.workdir, args.window)
  print('lambdas: ' + ', '.join(f'{t} {v:g}' for t, v in result['lambdas'].items()))
  print('| steps | train/loss | ' + ' | '.join(f'{t}: raw, weighted (share)' for t in TERMS)
        + ' |')
  print('|---|---|' + '---|' * len(TERMS))
  for w in result['windows']:
    cells = []
    for t in TERMS:
      v = w['terms'].get(t)
      cells.append('-' if v is None else
                   f"{v['raw']:.3f}, {v['weighted']:.3f} ({100 * v['share']:.0f}%)")
    total = '-' if w['total'] is None else f"{w['total']:.3f}"
    print(f"| {w['steps'][0]}-{w['steps'][1]} | {total} | " + ' | '.join(cells) + ' |')
  if args.out:
    with open(args.out, 'w') as f:
      # The run's place in its grid (recipe/subset_seed/method), no machine path.
      run = '/'.join(os.path.normpath(args.workdir).split(os.sep)[-3:])
      json.dump({'run': run, **result}, f, indent=1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
