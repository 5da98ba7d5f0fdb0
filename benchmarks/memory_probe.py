"""Peak memory of one supervised train step, in a fresh process (for step_benchmark.py).

    python benchmarks/memory_probe.py --framework jax|torch --size 256x512

Builds the step of benchmarks/step_benchmark.py (compiling it, for jax), then takes two
steps while sampling the process RSS; prints one JSON line: RSS before the steps, the
peak during them and the difference. A fresh process per framework, because in one
process the second framework reuses memory the first one freed (malloc keeps it), and
its growth reads as ~0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import bench_utils as bu


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--framework', choices=('jax', 'torch'), required=True)
  bu.add_network_args(parser)
  parser.add_argument('--conv_impl', default='auto')
  args = parser.parse_args()
  size, s = bu.network_args(args)
  config = bu.make_config(s, 'supervised', 1, args.conv_impl)
  if args.framework == 'jax':
    runner = bu.JaxStep(config, size, model_flops=False)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    runner = torch_step.TorchStep(config, size)
  with bu.PeakRss() as rss:
    runner.run()
    runner.run()
  print(json.dumps({'framework': args.framework, 'size': size, 'rss_before': rss.start,
                    'rss_peak': rss.peak, 'growth': rss.growth}))


if __name__ == '__main__':
  main()
