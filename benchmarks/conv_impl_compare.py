"""ctt-jax supervised step time for several `model.conv_impl` / dtype variants, alternating.

    python benchmarks/conv_impl_compare.py --size 256x512 --variants xla,im2col,auto
    python benchmarks/conv_impl_compare.py --size 128x256 --variants auto,auto:bfloat16

A variant is `conv_impl[:dtype]`. Steps of the variants alternate (one untimed step each,
then `--steps` rounds), so a change of machine load hits every variant alike; the ratio
to the first variant is the number to read. The load protocol of step_benchmark.py
applies (benchmarks/load_guard.py: `--priority`, `--others_threshold`, `--strict`,
`--timing`). XLA flags apply to the whole process: compare them by running this script
twice (e.g. with XLA_FLAGS=...) on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What main.py runs with (ctt_jax/xla_cpu_flags.py); a flag set in XLA_FLAGS wins.
from ctt_jax import xla_cpu_flags  # pylint: disable=g-import-not-at-top,wrong-import-position
xla_cpu_flags.add_defaults()

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
  lg.add_protocol_args(parser)
  return parser.parse_args()


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
  for variant in args.variants.split(','):
    impl, _, dtype = variant.partition(':')
    pairs = 1 if args.method == 'supervised' else 2
    config = bu.make_config(s, args.method, pairs, impl)
    config.model.dtype = dtype or 'float32'
    runners[variant] = bu.JaxStep(config, size, fill_banks=True, model_flops=False)
    bu.log(f'{variant}: compiled in {runners[variant].compile_s:.0f}s, XLA memory '
           f'{runners[variant].memory["total"] / 2**20:.0f} MiB')
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
