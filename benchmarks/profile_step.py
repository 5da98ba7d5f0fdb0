"""Where the time of a ctt-jax train step goes: XLA:CPU ops grouped by kind.

    python benchmarks/profile_step.py --size 256x512 --conv_impl auto [--method ctt]

Compiles the step, traces `--steps` executions with `jax.profiler`, reads the trace
(`*.xplane.pb`, parsed with TensorFlow's xplane proto) and sums each HLO instruction's
time. Instructions are grouped by what they compute, from the HLO text: convolutions
(forward, input gradient, kernel gradient), matmuls, and the rest (elementwise fusions,
copies, reductions...). Prints the groups and the most expensive instructions of each.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from benchmarks import bench_utils as bu

_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$')


def hlo_index(text: str) -> dict[str, dict]:
  """name -> {shape, opcode, op_name, computation body kinds} for every instruction."""
  computations, bodies, current, index = {}, {}, None, {}
  for line in text.split('\n'):
    if line.endswith('{') and ('(' in line) and not line.startswith(' '):
      current = line.split()[0].lstrip('%') if not line.startswith('ENTRY') else 'ENTRY'
      computations[current], bodies[current] = [], ''
      continue
    if current is not None:
      bodies[current] += line
    m = _INSTRUCTION.match(line)
    if not m or current is None:
      continue
    name, shape, opcode, rest = m.groups()
    computations[current].append(opcode)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    calls = re.search(r'calls=%?([\w.\-]+)', rest)
    index[name] = {'shape': shape, 'opcode': opcode, 'rest': rest,
                   'op_name': op_name.group(1) if op_name else '',
                   'calls': calls.group(1) if calls else None}
  for info in index.values():
    info['body'] = computations.get(info['calls'], []) if info['calls'] else []
    info['fused_text'] = bodies.get(info['calls'], info['rest'])
  return index


def kind_of(info: dict) -> str:
  ops = set(info['body']) | {info['opcode']}
  op_name = info['op_name']
  backward = 'transpose(' in op_name
  if 'convolution' in ops:
    # The kernel gradient is a convolution of the input with the output gradient, with
    # batch and feature dimensions swapped (it loses its op_name in XLA's rewrites).
    window = re.search(r'window=\{size=(\d+)x(\d+)', info['fused_text'])
    if window and int(window.group(1)) * int(window.group(2)) > 49:  # window = dy's size
      return 'conv kernel grad (XLA)'
    return 'conv input grad (XLA)' if backward else 'conv forward (XLA)'
  if 'dot' in ops:  # including the kernel-gradient matmuls of models/fast_conv.py
    return 'matmul backward' if backward else 'matmul forward'
  if 'reduce-window' in ops or 'select-and-scatter' in ops:
    return 'pooling'
  if 'concatenate' in ops or 'pad' in ops or 'slice' in ops:
    return 'slice/pad/concat'
  if 'reduce' in ops:
    return 'reduction'
  if ops & {'copy', 'transpose'}:
    return 'copy/transpose'
  return 'elementwise/other'


def profile(run_step, steps: int) -> dict[str, float]:
  """Seconds per HLO instruction name, summed over `steps` executions."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  directory = tempfile.mkdtemp(prefix='ctt_profile_')
  with jax.profiler.trace(directory):
    for _ in range(steps):
      run_step()
  path = sorted(glob.glob(os.path.join(directory, '**', '*.xplane.pb'), recursive=True))[-1]
  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  totals = collections.Counter()
  for plane in space.planes:
    if plane.name != '/host:CPU':
      continue
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        totals[name] += event.duration_ps * 1e-12
  return totals


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  bu.add_network_args(parser)
  parser.add_argument('--conv_impl', default='auto')
  parser.add_argument('--method', default='supervised')
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--top', type=int, default=6, help='instructions listed per group')
  args = parser.parse_args()
  size, s = bu.network_args(args)
  pairs = 1 if args.method == 'supervised' else 2
  config = bu.make_config(s, args.method, pairs, args.conv_impl)
  step = bu.JaxStep(config, size, fill_banks=True, model_flops=False)
  step.run()  # warm-up
  index = hlo_index(step.compiled.as_text())
  totals = profile(step.run, args.steps)
  per_step = {name: t / args.steps for name, t in totals.items() if name in index}
  groups = collections.Counter()
  for name, t in per_step.items():
    groups[kind_of(index[name])] += t
  total = sum(per_step.values())
  # Ops can overlap on the thread pool, so the sum can exceed the wall time.
  print(f'{args.method} {args.size} conv_impl={args.conv_impl}: sum of HLO op times '
        f'{total:.3f} s/step, load average {os.getloadavg()}')
  for kind, t in groups.most_common():
    print(f'  {kind:<40} {t:8.3f} s  {100 * t / total:5.1f}%')
  ranked = sorted(per_step.items(), key=lambda kv: -kv[1])
  for kind, _ in groups.most_common():
    print(f'most expensive {kind}:')
    for name, t in [kv for kv in ranked if kind_of(index[kv[0]]) == kind][:args.top]:
      info = index[name]
      print(f'  {t * 1e3:8.1f} ms  {name:<28} {info["shape"][:36]:<36} '
            f'{info["op_name"][-80:]}')


if __name__ == '__main__':
  main()
