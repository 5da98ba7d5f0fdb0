"""ctt-jax supervised step time for several `model.conv_impl` / dtype variants, alternating.

    python benchmarks/conv_impl_compare.py --size 256x512 --variants xla,im2col,auto
    python benchmarks/conv_impl_compare.py --size 128x256 --variants auto,auto:bfloat16

A variant is `conv_impl[:dtype]`. Steps of the variants alternate (one untimed step each,
then `--steps` rounds), so a change of machine load hits every variant alike; the ratio
to the first variant is the number to read. XLA flags apply to the whole process: compare
them by running this script twice (e.g. with XLA_FLAGS=...) on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import bench_utils as bu


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  bu.add_network_args(parser)
  parser.add_argument('--variants', default='xla,im2col,auto')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--method', default='supervised')
  args = parser.parse_args()
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
  times = bu.alternate(runners, args.steps)
  first = bu.median(times[next(iter(times))])
  print(f'{args.method} step, {args.backbone} x{args.width_multiplier}, {args.size}, '
        f'median of {args.steps}, load average {os.getloadavg()}:')
  for name, values in times.items():
    print(f'  {name:<20} {bu.median(values):8.3f} s  {bu.median(values) / first:6.2f}x '
          f'(min {min(values):.3f} s)')


if __name__ == '__main__':
  main()
