"""What the supervised step spends around the network, removed change by change.

    python benchmarks/step_overhead.py --size 64x128 --steps 9
    python benchmarks/step_overhead.py --size 256x512 --steps 5

Variants of the supervised DeepLabV2-R101 step (batch 2, frozen BN, the Cityscapes head),
alternating step by step with PyTorch's (benchmarks/torch_step.py), under the load
protocol of benchmarks/load_guard.py (every thread at nice --priority; others' CPU share
recorded per step):
  before      ctt_jax/train_step.py as of --baseline (git show): the non-finite guard
              selects between the whole old and new state (`jnp.where` per leaf), the
              gradient norm includes the frozen batch-norm leaves, EMA teacher;
  cond_guard  today's step with the gradient norm over every leaf again: isolates the
              guard, now `lax.cond` around the update (stages 6-7);
  today       today's step: + gradient norm of the trained leaves only;
  no_ema      today's step with `supervised_ema=False`: + no EMA copy (plain SGD, the
              same work as the PyTorch step);
  torch       PyTorch, SGD with momentum and weight decay (no EMA).
Writes benchmarks/results/step_overhead_<size>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from benchmarks.load_guard import LoadGuard, add_protocol_args


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', default='64x128')
  parser.add_argument('--steps', type=int, default=9)
  parser.add_argument('--baseline', default='551fd3c',
                      help='commit whose ctt_jax/train_step.py is the "before" variant')
  parser.add_argument('--variants', default='before,cond_guard,today,no_ema,torch')
  parser.add_argument('--backbone', default='resnet101')
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--out', default='')
  add_protocol_args(parser)
  return parser.parse_args(argv)


ARGS = parse_args()
GUARD = LoadGuard(ARGS.others_threshold, ARGS.priority)
GUARD.enforce_priority('start')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# What main.py runs with (ctt_jax/xla_cpu_flags.py); a flag set in XLA_FLAGS wins.
from ctt_jax import backend_flags  # pylint: disable=g-import-not-at-top,wrong-import-position
backend_flags.add_xla_cpu_defaults()

# pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import importlib.util
import json
import subprocess
import time

import jax
import jax.numpy as jnp

from benchmarks import bench_utils as bu
from benchmarks import load_guard as lg
from benchmarks import torch_step
from ctt_jax import optim
from ctt_jax import train_step
# pylint: enable=g-import-not-at-top,wrong-import-position


def baseline_module(commit: str):
  """ctt_jax/train_step.py as of `commit`, imported under another name."""
  source = subprocess.run(['git', 'show', f'{commit}:ctt_jax/train_step.py'], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
  path = f'/tmp/train_step_{commit}.py'
  with open(path, 'w') as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location(f'train_step_{commit}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def every_leaf_norm(grads, freeze_bn):
  del freeze_bn
  return jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree.leaves(grads)))


@contextlib.contextmanager
def patched(module, name, value):
  """`module.name = value` while the step is traced and compiled."""
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


def jax_runner(name: str, size, s):
  overrides = {'supervised_ema': False} if name == 'no_ema' else {}
  config = bu.make_config(s, 'supervised', num_pairs=1, conv_impl='auto', **overrides)
  if name == 'before':
    return bu.JaxStep(config, size, model_flops=False,
                      make_step=baseline_module(ARGS.baseline).make_train_step)
  norm = every_leaf_norm if name == 'cond_guard' else optim.trained_grad_norm
  with patched(optim, 'trained_grad_norm', norm):
    return bu.JaxStep(config, size, model_flops=False, make_step=train_step.make_train_step)


def main():
  size = bu.parse_size(ARGS.size)
  s = {'backbone': ARGS.backbone, 'width_multiplier': ARGS.width_multiplier, 'head': ''}
  runners = {}
  for name in ARGS.variants.split(','):
    if name == 'torch':
      config = bu.make_config(s, 'supervised', num_pairs=1, conv_impl='auto')
      runners[name] = torch_step.TorchStep(config, size, seed=0)
      torch_step.assert_same_network(config, runners[name].net)
    else:
      runners[name] = jax_runner(name, size, s)
      bu.log(f'{name}: compiled in {runners[name].compile_s:.1f}s, XLA temporaries '
             f'{runners[name].memory["temp_size"] / 2**20:.0f} MiB')
  started = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())
  t = bu.alternate(runners, ARGS.steps, GUARD, ARGS.timing)
  results = {'size': size, 'started': started, 'cpu': bu.cpu_name(),
             'baseline': ARGS.baseline, 'priority_ok': GUARD.priority_ok(),
             'xla_flags': os.environ.get('XLA_FLAGS', ''),
             'window': t['window'], 'runners': t['runners'],
             'memory': {k: r.memory for k, r in runners.items() if hasattr(r, 'memory')}}
  out = ARGS.out or os.path.join(ROOT, 'benchmarks', 'results',
                                 f'step_overhead_{ARGS.size}')
  with open(out + '.json', 'w') as f:
    json.dump(results, f, indent=1, default=bu.json_default)
  with open(out + '.md', 'w') as f:
    f.write(markdown(results) + '\n')
  print(markdown(results))


def markdown(results: dict) -> str:
  r = results['runners']
  torch_s = r['torch']['median_s'] if 'torch' in r else None
  first = next(iter(r.values()))['median_s']
  lines = [f'Supervised DeepLabV2-R101 step {results["size"][0]}x{results["size"][1]}, '
           f'batch 2; {results["cpu"]}; {results["started"]}; baseline '
           f'{results["baseline"]}; others used {results["window"]["others_share"]:.1%} of '
           f'the CPUs over the timed rounds; priority raised: {results["priority_ok"]}; '
           f'XLA_FLAGS="{results.get("xla_flags", "")}".', '',
           '| variant | median s | vs first row | / PyTorch | median over | '
           'XLA temporaries MiB |', '|---|---|---|---|---|---|']
  for name, v in r.items():
    mem = results['memory'].get(name)
    vs_torch = '-' if torch_s is None else f'{v["median_s"] / torch_s:.3f}'
    temps = '-' if mem is None else f'{mem["temp_size"] / 2**20:.0f}'
    lines.append(f'| {name} | {v["median_s"]:.3f} | {v["median_s"] / first - 1:+.1%} | '
                 f'{vs_torch} | {lg.median_note(v)} | {temps} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
