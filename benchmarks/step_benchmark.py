"""The ctt-jax train step against PyTorch on the same CPU, in one run, side by side.

    python benchmarks/step_benchmark.py            # the full table (~25 min on 2 cores, ~17 GB RAM)
    python benchmarks/step_benchmark.py --quick    # tiny backbone and shapes (~1 min)

Rows (each printed with its ratio against its target; see benchmarks/README.md):
  supervised step  DeepLabV2-R101 (caffe, output stride 8, frozen BN, the CTT authors'
                   head), batch 2, 19 classes: `make_train_step(method=supervised,
                   num_pairs=1)` (SGD update included) vs the torch.nn reference net of
                   tests/torch_reference_nets.py with SGD(momentum, weight decay); at
                   256x512 and 64x128; `supervised_ema=False`, so both
                   sides do the same work. Target <= 1.0x. Beside them, the plain
                   PyTorch step of benchmarks/torch_plain_step.py (`--no_plain`: not):
                   the reference's time over it, target <= 1.03.
  CTT machinery    the full CTT step (2 pairs, HC + LC on, banks full) vs the network
                   passes it needs (benchmarks/network_passes.py: teachers on the weak
                   view and the labeled batch, students on both batches, update, EMA).
                   Target <= 5%. `--ctt_breakdown` adds the step without HC and LC, and
                   without HC, LC and bank push.
  throughput       XLA cost-analysis FLOPs of the supervised 256x512 step / its median
                   time, against a float32 4096^2 matmul measured in this run.
                   Target >= 60% of the jnp matmul.
  memory           XLA memory analysis of each compiled step (arguments + outputs + temps),
                   and the peak RSS growth of a supervised step, each framework in a
                   fresh process (benchmarks/memory_probe.py).
  eval             forward passes in eval mode, batch 2, images/s, both frameworks.

Both frameworks use the same threads: `--threads N` (default: every CPU this process may
run on) pins the process to N CPUs, which is how XLA:CPU sizes its intra-op thread pool,
and sets torch.set_num_threads(N). Both run the DeepLabV2 head of configs/cityscapes.py
(`--head`, default the CTT authors' 'aspp_se'); their trainable parameter counts must match.

Load protocol (benchmarks/load_guard.py): every thread at nice `--priority` (default -10,
needs root; otherwise a warning and a flag), steps of the frameworks (or CTT variants)
alternating, and for every section and every timed step the share of the benchmark's CPUs
that other processes used. A step above `--others_threshold` (5%) is disturbed: medians are
over the undisturbed steps when at least half are; a section above it is LOADED in the
JSON and the table, and `--strict` then exits non-zero. `--timing=cpu` times steps by
process CPU time (with `--threads 1`). Times are medians of `--steps` steps after one
untimed step; the two PyTorch steps, which swap places every round, are compared per pair
of rounds (bench_utils.paired_ratio).
Results: benchmarks/results/step_benchmark{,_quick}.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Standard library only: nothing may start threads before the priority is set.
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from benchmarks.load_guard import LoadGuard, add_protocol_args, check_timing_args


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='ResNet-18 at width 1/4 on tiny shapes: checks the script only')
  parser.add_argument('--threads', type=int, default=0,
                      help='CPUs for both frameworks (0: all schedulable CPUs)')
  parser.add_argument('--steps', type=int, default=0,
                      help='timed rounds per supervised row (even, >= 6)')
  parser.add_argument('--conv_impl', default='auto', help='model.conv_impl of ctt-jax')
  parser.add_argument('--sizes', default='', help='supervised rows, e.g. 256x512,64x128')
  parser.add_argument('--ctt_size', default='', help='CTT rows size, e.g. 256x512')
  parser.add_argument('--ctt_steps', type=int, default=0, help='timed CTT steps (>= 5)')
  parser.add_argument('--ctt_breakdown', action='store_true',
                      help='also time CTT with HC/LC off but the bank push on')
  parser.add_argument('--eval_size', default='', help='eval rows size, e.g. 512x1024')
  parser.add_argument('--skip', default='', help='comma list of: sup,ctt,eval,memory')
  parser.add_argument('--out', default='', help='results path without extension')
  parser.add_argument('--update', action='store_true',
                      help='load the results at --out (or the default path) and redo only '
                           'the sections not skipped, e.g. --update --skip ctt,eval,memory')
  parser.add_argument('--head', default='', choices=('', 'aspp_se', 'bottleneck'),
                      help="DeepLabV2 head of both sides ('': configs/cityscapes.py's)")
  parser.add_argument('--no_plain', action='store_true',
                      help='leave out the plain PyTorch step (benchmarks/torch_plain_step.py)')
  add_protocol_args(parser)
  return parser.parse_args(argv)


ARGS = parse_args()
if ARGS.threads:
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:ARGS.threads])
THREADS = len(os.sched_getaffinity(0))
check_timing_args(ARGS, THREADS)
# Before jax and torch exist: their pools inherit the nice of the thread creating them
# (checked and re-applied after every warm-up).
GUARD = LoadGuard(ARGS.others_threshold, ARGS.priority)
GUARD.enforce_priority('start')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# What main.py runs with (ctt_jax/backend_flags.py); a flag set in XLA_FLAGS wins.
from ctt_jax import backend_flags  # pylint: disable=g-import-not-at-top,wrong-import-position
backend_flags.add_xla_cpu_defaults()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import platform
import subprocess
import time

import jax
import torch

from benchmarks import bench_utils as bu
from benchmarks import network_passes
from benchmarks import torch_plain_step
from benchmarks import torch_step
from ctt_jax import train_step

torch.set_num_threads(THREADS)


# --- what is measured -------------------------------------------------------------------
def settings(args):
  """Model, shapes and step counts of a full or a --quick run."""
  size = bu.parse_size
  if args.quick:
    s = dict(backbone='resnet18', width_multiplier=0.25, sizes=[(32, 64)],
             ctt_size=(32, 64), eval_size=(32, 64), steps=6, ctt_steps=5)
  else:
    s = dict(backbone='resnet101', width_multiplier=1.0, sizes=[(256, 512), (64, 128)],
             ctt_size=(256, 512), eval_size=(512, 1024), steps=8, ctt_steps=5)
  if args.sizes:
    s['sizes'] = [size(t) for t in args.sizes.split(',')]
  if args.ctt_size:
    s['ctt_size'] = size(args.ctt_size)
  if args.eval_size:
    s['eval_size'] = size(args.eval_size)
  # An even number of rounds: the PyTorch steps' ratio is taken per pair of rounds.
  s['steps'] = max(6, args.steps or s['steps'])
  s['steps'] += s['steps'] % 2
  s['ctt_steps'] = max(5, args.ctt_steps or s['ctt_steps'])
  s['head'] = args.head or bu.default_head()
  return s


def alternate(runners: dict, steps: int) -> dict:
  return bu.alternate(runners, steps, GUARD, ARGS.timing)


def runner_fields(prefix: str, t: dict) -> dict:
  """One runner's result of `alternate` as row keys: `<prefix>_s` (median), `_times`,
  `_median` (which steps it is over) and `_samples` (time and load of every step)."""
  return {f'{prefix}_s': t['median_s'], f'{prefix}_times': t['times'],
          f'{prefix}_median': {k: t[k] for k in ('median_over', 'undisturbed', 'steps')},
          f'{prefix}_samples': t['samples']}


def supervised_row(s, size, results):
  """ctt-jax vs PyTorch supervised step at `size`, steps alternating."""
  # No EMA copy: PyTorch's step keeps none either (benchmarks/README.md).
  config = bu.make_config(s, 'supervised', num_pairs=1, conv_impl=ARGS.conv_impl,
                          supervised_ema=False)
  torch_run = torch_step.TorchStep(config, size, seed=0)
  params = torch_step.assert_same_network(config, torch_run.net)
  runners = {'torch': torch_run}
  if not ARGS.no_plain and torch_plain_step.supports(config):
    runners['torch_plain'] = torch_plain_step.PlainStep(config, size, reference=torch_run.net)
    if runners['torch_plain'].trainable_params != params:
      sys.exit(f'The plain PyTorch step trains {runners["torch_plain"].trainable_params:,} '
               f'parameters, the reference {params:,}.')
  jax_step = bu.JaxStep(config, size)
  bu.log(f'supervised {size}: compiled in {jax_step.compile_s:.1f}s, '
         f'{jax_step.flops / 1e9:.1f} GFLOP, {params:,} trainable parameters on every side')
  t = alternate({'jax': jax_step, **runners}, s['steps'])
  row = {
      'size': size, **runner_fields('jax', t['runners']['jax']), 'window': t['window'],
      'jax_compile_s': jax_step.compile_s, 'flops': jax_step.flops,
      'jax_memory': jax_step.memory, 'jax_rss_growth': jax_step.rss_growth,
      'trainable_params': params,
  }
  for name, runner in runners.items():
    row.update(runner_fields(name, t['runners'][name]))
    row[f'{name}_rss_growth'] = runner.rss_growth
  row['ratio'] = row['jax_s'] / row['torch_s']
  row['ratio_paired'] = bu.paired_ratio(t['runners']['jax']['samples'],
                                       t['runners']['torch']['samples'], t['timing'])
  if 'torch_plain' in runners:
    # The two PyTorch steps swap places every round: their ratio is taken per pair of
    # rounds (bu.paired_ratio), in which each sits once right after ctt-jax's step.
    row['reference_over_plain_medians'] = row['torch_s'] / row['torch_plain_s']
    row['reference_over_plain_paired'] = bu.paired_ratio(
        t['runners']['torch']['samples'], t['runners']['torch_plain']['samples'],
        t['timing'])
    row['reference_over_plain'] = row['reference_over_plain_paired']['ratio']
  results['supervised'].append(row)
  del jax_step, torch_run, runners


def ctt_rows(s, results):
  """Full CTT step vs the step without HC, LC and bank pushes (and optionally the middle)."""
  variants = {'full': {}, 'passes': {}}
  if ARGS.ctt_breakdown:
    variants['no_contrastive'] = dict(use_hc=False, use_lc=False)
    variants['base'] = dict(use_hc=False, use_lc=False, bank_push='none')
  steps = {}
  for name, overrides in variants.items():
    config = bu.make_config(s, 'ctt', num_pairs=2, conv_impl=ARGS.conv_impl, **overrides)
    make_step = (network_passes.make_passes_step if name == 'passes'
                 else train_step.make_train_step)
    steps[name] = bu.JaxStep(config, s['ctt_size'], fill_banks=True, make_step=make_step)
    bu.log(f'ctt {name}: compiled in {steps[name].compile_s:.1f}s, '
           f'{steps[name].flops / 1e9:.1f} GFLOP')
  t = alternate(steps, s['ctt_steps'])
  row = {'size': s['ctt_size'], 'steps': s['ctt_steps'], 'window': t['window']}
  for name, step in steps.items():
    r = t['runners'][name]
    row[name] = {'median_s': r['median_s'], 'times': r['times'], 'samples': r['samples'],
                 'median': {k: r[k] for k in ('median_over', 'undisturbed', 'steps')},
                 'compile_s': step.compile_s, 'flops': step.flops, 'memory': step.memory,
                 'rss_growth': step.rss_growth}
  row['overhead'] = row['full']['median_s'] / row['passes']['median_s'] - 1.0
  results['ctt'] = row


def eval_row(s, results):
  config = bu.make_config(s, 'supervised', num_pairs=1, conv_impl=ARGS.conv_impl)
  jax_eval = bu.JaxEval(config, s['eval_size'])
  torch_eval = torch_step.TorchEval(config, s['eval_size'])
  t = alternate({'jax': jax_eval, 'torch': torch_eval}, s['steps'])
  batch = jax_eval.batch_size
  results['eval'] = {
      'size': s['eval_size'], 'batch': batch, 'window': t['window'],
      'jax_images_per_s': batch / t['runners']['jax']['median_s'],
      'torch_images_per_s': batch / t['runners']['torch']['median_s'],
      **runner_fields('jax', t['runners']['jax']),
      **runner_fields('torch', t['runners']['torch']),
  }


def memory_rows(s, results):
  """Peak RSS growth of a supervised step, each framework in a fresh process
  (benchmarks/memory_probe.py), at every supervised size."""
  probe = os.path.join(ROOT, 'benchmarks', 'memory_probe.py')
  rows = []
  for size in s['sizes']:
    row = {'size': size}
    for framework in ('jax', 'torch'):
      out = subprocess.run(
          [sys.executable, probe, '--framework', framework, '--size', 'x'.join(map(str, size)),
           '--backbone', s['backbone'], '--width_multiplier', str(s['width_multiplier']),
           '--head', s['head'], '--conv_impl', ARGS.conv_impl],
          capture_output=True, text=True, check=True)
      row[framework] = json.loads(out.stdout.strip().split('\n')[-1])
      bu.log(f'memory {size} {framework}: RSS growth '
             f'{row[framework]["growth"] / 2**20:.0f} MiB')
    rows.append(row)
  results['memory_probe'] = rows


def section(name: str, results: dict, fn, *args, timed: bool = True):
  """Runs one section, recording when it ran, the share of the benchmark's CPUs other
  processes used meanwhile (LOADED above --others_threshold, if the section is `timed`),
  and the load averages."""
  start = (time.strftime('%H:%M:%S'), os.getloadavg(), GUARD.sample())
  fn(*args)
  shares = GUARD.shares(start[2], GUARD.sample())
  record = {'start': start[0], 'load_start': start[1], 'end': time.strftime('%H:%M:%S'),
            'load_end': os.getloadavg(), **shares, 'loaded': timed and shares['disturbed'],
            'priority': GUARD.priority, 'priority_ok': GUARD.priority_ok()}
  del record['disturbed']
  results.setdefault('sections', {})[name] = record
  bu.log(f'section {name}: others used {shares["others_share"]:.1%} of the CPUs, this '
         f'process {shares["own_share"]:.0%}' + (' - LOADED' if record['loaded'] else ''))


def supervised_rows(s, results):
  results['supervised'] = []
  for size in s['sizes']:
    supervised_row(s, size, results)


def new_results(s) -> dict:
  return {
      'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'quick': ARGS.quick,
      'machine': {'cpu': bu.cpu_name(), 'cpus_used': THREADS,
                  'cpu_count': os.cpu_count(), 'python': platform.python_version(),
                  'jax': jax.__version__, 'torch': torch.__version__,
                  'torch_threads': torch.get_num_threads(),
                  'xla_flags': os.environ.get('XLA_FLAGS', '')},
      'load_average_start': os.getloadavg(),
      'settings': dict(s), 'conv_impl': ARGS.conv_impl, 'supervised': [],
  }


def load_results(out: str, s) -> dict:
  """An earlier run's results, to redo some of its sections (e.g. rows a burst of load
  disturbed); each section keeps its own time and load record in results['sections']."""
  with open(out + '.json') as f:
    results = json.load(f)
  old_head = results['settings'].get('head', 'bottleneck')  # before --head: common.py's
  if old_head != s['head']:
    sys.exit(f'--update: {out}.json measured model.head={old_head}, this run '
             f'{s["head"]}; pass --head {old_head} or start a new file.')
  results['updated'] = time.strftime('%Y-%m-%d %H:%M:%S %Z')
  return results


def run_sections(s, skip: set, results: dict) -> list[str]:
  """The timed sections not skipped, in order; returns their names."""
  names = []
  if 'sup' not in skip or not ARGS.update:
    # The matmul peak is measured with the supervised rows it is compared with.
    section('matmul', results, lambda: results.update(
        matmul=bu.matmul_peak(1024 if ARGS.quick else 4096, timing=ARGS.timing)))
    bu.log(f'matmul GFLOP/s: {results["matmul"]}')
    names.append('matmul')
  for name, fn in (('sup', supervised_rows), ('ctt', ctt_rows), ('eval', eval_row)):
    if name not in skip:
      section(name, results, fn, s, results)
      names.append(name)
  return names


def strict_failure(results: dict, names: list[str]) -> str:
  """One sentence on why this run's numbers cannot be trusted ('' if they can)."""
  loaded = {n: results['sections'][n]['others_share'] for n in names
            if results['sections'][n]['loaded']}
  if loaded:
    shares = ', '.join(f'{n} ({v:.0%})' for n, v in loaded.items())
    return (f'--strict: other processes used more than {GUARD.threshold:.0%} of the CPUs '
            f'during section{"s" if len(loaded) > 1 else ""} {shares}; re-run on a quiet '
            'machine.')
  if not GUARD.priority_ok():
    return f'--strict: not every thread could be set to nice {GUARD.priority}.'
  return ''


def main():
  s = settings(ARGS)
  skip = set(filter(None, ARGS.skip.split(',')))
  out = ARGS.out or os.path.join(ROOT, 'benchmarks', 'results',
                                 'step_benchmark_quick' if ARGS.quick else 'step_benchmark')
  out = out.removesuffix('.json').removesuffix('.md')  # --out is the path without extension
  results = load_results(out, s) if ARGS.update else new_results(s)
  results['protocol'] = {**GUARD.summary(), 'timing': ARGS.timing}
  bu.log(f'load average {os.getloadavg()}, {THREADS} threads, {s}')
  names = run_sections(s, skip, results)
  if not ARGS.update:
    results['load_average_end'] = os.getloadavg()
    results['finished'] = time.strftime('%Y-%m-%d %H:%M:%S %Z')
  if 'memory' not in skip:  # after the timed rows: its processes would disturb them
    section('memory', results, memory_rows, s, results, timed=False)
  results['protocol'] = {**GUARD.summary(), 'timing': ARGS.timing}  # with every check
  write(results, out)
  failure = strict_failure(results, names)
  if failure and ARGS.strict:
    sys.exit(failure)
  if failure:
    bu.log(failure.removeprefix('--strict: ') + ' (not failing: no --strict)')


def write(results: dict, out: str):
  results['rows'] = bu.target_rows(results)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + '.json', 'w') as f:
    json.dump(results, f, indent=1, default=bu.json_default)
  table = bu.markdown(results)
  with open(out + '.md', 'w') as f:
    f.write(table)
  print(table)
  bu.log(f'wrote {out}.json and {out}.md')


if __name__ == '__main__':
  main()
