"""ctt-jax supervised step time for several `model.conv_impl` / dtype variants, alternating.

    python benchmarks/conv_impl_compare.py --size 256x512 --variants xla,im2col,auto
    python benchmarks/conv_impl_compare.py --size 128x256 --variants auto,auto:bfloat16

    python benchmarks/conv_impl_compare.py --size 128x256 --variants auto@9ae05e6,auto --torch

A variant is `conv_impl[:dtype][@git revision]`: with a revision, `ctt_jax/models/fast_conv.py`
as of that commit stands in for today's while the step is traced (A/B of a fast_conv
change in one process; the rest of the code is today's). `--torch` adds PyTorch's step of
the same network to the rotation. Steps of the variants alternate (one untimed step each,
then `--steps` rounds), so a change of machine load hits every variant alike; the ratio
to the first variant is the number to read. The load protocol of step_benchmark.py
applies (benchmarks/load_guard.py: `--priority`, `--others_threshold`, `--strict`,
`--timing`). XLA flags apply to the whole process: compare them by running this script
twice (e.g. with XLA_FLAGS=...) on a quiet machine.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import types

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# What main.py runs with (ctt_jax/xla_cpu_flags.py); a flag set in XLA_FLAGS wins.
from ctt_jax import backend_flags  # pylint: disable=g-import-not-at-top,wrong-import-position
backend_flags.add_xla_cpu_defaults()

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import load_guard as lg  # standard library only


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', default='256x512')
  parser.add_argument('--backbone', default='resnet101')
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--head', default='', choices=('', 'aspp_se', 'bottleneck'),
                      help="DeepLabV2 head ('': configs/cityscapes.py's)")
  parser.add_argument('--variants', default='xla,im2col,auto')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--method', default='supervised')
  parser.add_argument('--threads', type=int, default=0,
                      help='CPUs the process may use, i.e. XLA:CPU threads (0: all)')
  parser.add_argument('--torch', action='store_true',
                      help="PyTorch's step of the same network alternates with the variants")
  lg.add_protocol_args(parser)
  return parser.parse_args()


def fast_conv_at(revision: str) -> types.ModuleType:
  """ctt_jax/models/fast_conv.py as of git `revision`, as a module of its own."""
  try:
    source = subprocess.run(
        ['git', '-C', ROOT, 'show', f'{revision}:ctt_jax/models/fast_conv.py'],
        check=True, capture_output=True, text=True).stdout
  except subprocess.CalledProcessError as e:
    sys.exit(f'Variant @{revision}: git cannot show ctt_jax/models/fast_conv.py at that '
             f'revision ({e.stderr.strip()}); name a commit of this repository.')
  module = types.ModuleType(f'fast_conv_at_{revision}')
  sys.modules[module.__name__] = module  # flax's dataclasses look their module up
  exec(compile(source, f'{revision}:ctt_jax/models/fast_conv.py', 'exec'), module.__dict__)
  return module


@contextlib.contextmanager
def fast_conv_replaced_by(module: types.ModuleType | None):
  """Every name of `module` stands in for today's in ctt_jax.models.fast_conv (the models
  look its functions up at trace time)."""
  from ctt_jax.models import fast_conv  # pylint: disable=g-import-not-at-top
  if module is None:
    yield
    return
  today = dict(vars(fast_conv))
  names = [n for n in vars(module) if not n.startswith('__')]
  for name in names:
    setattr(fast_conv, name, getattr(module, name))
  try:
    yield
  finally:
    for name in names:
      if name in today:
        setattr(fast_conv, name, today[name])
      else:
        delattr(fast_conv, name)


def main():
  args = parse_args()
  if args.threads:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
  lg.check_timing_args(args, len(os.sched_getaffinity(0)))
  # Priority before jax exists (its pool inherits it; alternate() checks every thread).
  guard = lg.LoadGuard(args.others_threshold, args.priority)
  guard.enforce_priority('start')
  from benchmarks import bench_utils as bu
  args.head = args.head or bu.default_head()
  size, s = bu.network_args(args)
  runners = {}
  pairs = 1 if args.method == 'supervised' else 2
  for variant in args.variants.split(','):
    spec, _, revision = variant.partition('@')
    impl, _, dtype = spec.partition(':')
    config = bu.make_config(s, args.method, pairs, impl,
                            **({'supervised_ema': False} if args.torch else {}))
    config.model.dtype = dtype or 'float32'
    with fast_conv_replaced_by(fast_conv_at(revision) if revision else None):
      runners[variant] = bu.JaxStep(config, size, fill_banks=True, model_flops=False)
    bu.log(f'{variant}: compiled in {runners[variant].compile_s:.0f}s, XLA memory '
           f'{runners[variant].memory["total"] / 2**20:.0f} MiB (temporaries '
           f'{runners[variant].memory["temp_size"] / 2**20:.0f} MiB)')
  if args.torch:
    if args.method != 'supervised':
      sys.exit('--torch compares the supervised step only; drop --method or --torch.')
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    runners['torch'] = torch_step.TorchStep(config, size, seed=0)
    torch_step.assert_same_network(config, runners['torch'].net)
  start = guard.sample()
  t = bu.alternate(runners, args.steps, guard, args.timing)
  report(args, t, guard.shares(start, guard.sample()), guard)


def report(args, t: dict, section: dict, guard: lg.LoadGuard):
  """Medians and ratios to the first variant; LOADED and exit 1 with --strict if others
  used more than the threshold of the CPUs."""
  runners = t['runners']
  first = runners[next(iter(runners))]['median_s']
  print(f'{args.method} step, {args.backbone} x{args.width_multiplier}, head {args.head}, '
        f'{args.size}, {t["timing"]} time, nice {guard.priority}'
        f'{"" if guard.priority_ok() else " NOT SET"}; others used '
        f'{section["others_share"]:.1%} of the CPUs (timed rounds '
        f'{t["window"]["others_share"]:.1%}), load average {os.getloadavg()}:')
  for name, r in runners.items():
    print(f'  {name:<20} {r["median_s"]:8.3f} s  {r["median_s"] / first:6.2f}x '
          f'(min {min(r["times"]):.3f} s; {lg.median_note(r)})')
  if section['disturbed']:
    message = (f'LOADED: other processes used {section["others_share"]:.0%} of the CPUs '
               'during the comparison; re-run on a quiet machine.')
    if args.strict:
      sys.exit(message)
    print(message)


if __name__ == '__main__':
  main()
