"""ctt-jax side of benchmarks/step_benchmark.py: configs, random states, compiled steps,
timing, and the result table. (The PyTorch side is benchmarks/torch_step.py; the load
protocol, priority and others' CPU share, is benchmarks/load_guard.py.)"""
from __future__ import annotations

import math
import os
import re
import statistics
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import load_guard as lg
from configs import cityscapes
from ctt_jax import models, optim, train_state, train_step
from tests.random_variables import random_variables

NUM_LABELED = 100  # Cityscapes 1_30: bank k = max(1, 100 // 128) = 1 per class and step
BATCH = 2


def log(message: str):
  print(f'[{time.strftime("%H:%M:%S")} load {os.getloadavg()[0]:.2f}] {message}',
        file=sys.stderr, flush=True)


def median(values):
  return float(statistics.median(values))


def _cpuinfo(field: str) -> str:
  """The first value of `field` in /proc/cpuinfo, '' where it cannot be read."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(field):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return ''


def cpu_name() -> str:
  return _cpuinfo('model name') or 'unknown'


# The instruction-set extensions XLA:CPU (LLVM) may vectorise with. Two hosts can report the
# same model name ("AMD EPYC" in a VM) with different ones, and then sum in another order.
_VECTOR_FLAG = re.compile(r'^(sse4|avx|fma|f16c|amx)')


def cpu_vector_features() -> list[str]:
  """Sorted vector-ISA flags of this CPU, [] where /proc/cpuinfo cannot be read."""
  return sorted(v for v in _cpuinfo('flags').split() if _VECTOR_FLAG.match(v))


def json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  return str(value)


# --- configs, states, batches -------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
  """'256x512' -> (256, 512)."""
  return tuple(int(v) for v in text.split('x'))


def add_network_args(parser) -> None:
  """--size, --backbone, --width_multiplier, --head: the network of a single-step script."""
  parser.add_argument('--size', default='256x512')
  parser.add_argument('--backbone', default='resnet101')
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  add_head_arg(parser)


def add_head_arg(parser) -> None:
  parser.add_argument('--head', default=default_head(), choices=('aspp_se', 'bottleneck'),
                      help="DeepLabV2 head, both frameworks (default: configs/cityscapes.py's, "
                           f'{default_head()})')


def default_head() -> str:
  """The head of the Cityscapes config (the CTT authors' 'aspp_se'), not common.py's."""
  return cityscapes.get_config().model.head


def network_args(args) -> tuple[tuple[int, int], dict]:
  """(size, settings for make_config) from the arguments of `add_network_args`."""
  return parse_size(args.size), {'backbone': args.backbone,
                                 'width_multiplier': args.width_multiplier,
                                 'head': args.head}


def make_config(s: dict, method: str, num_pairs: int, conv_impl: str, **overrides):
  """The paper's Cityscapes setting (configs/cityscapes.py with `recipe=paper`: DeepLabV2
  caffe R101 with the authors' head, output stride 8, frozen BN, half-pixel resizing, 19
  classes, SGD) with the benchmark's backbone, head (`s['head']`, default the config's)
  and method; the PyTorch reference step is written for that setting."""
  c = cityscapes.get_config('recipe=paper')
  c.method, c.num_pairs = method, num_pairs
  c.model.backbone, c.model.width_multiplier = s['backbone'], s['width_multiplier']
  c.model.head = s.get('head') or c.model.head
  c.model.conv_impl = conv_impl
  c.contrastive_start_step = 0  # HC and LC from the first step (the banks are pre-filled)
  for key, value in overrides.items():
    c[key] = value
  return c


def random_state(config, model, size, fill_banks: bool, seed: int = 0):
  """A train state of `num_pairs` random students; with `fill_banks`, every queue full of
  unit-norm features (so HC and LC run on whole banks from the first step)."""
  n = int(config.num_pairs)
  images = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  students = [random_variables(shapes, seed + k) for k in range(n)]
  variables = jax.tree.map(lambda *xs: np.stack(xs), *students)
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  state = train_state.create_train_state(config, variables,
                                         train_state.feature_dim(model, size))
  if fill_banks:
    feats = np.random.default_rng(seed).normal(size=state.banks.feats.shape)
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    state = state.replace(banks=state.banks.replace(
        feats=jnp.asarray(feats, jnp.float32),
        count=jnp.full_like(state.banks.count, config.bank_size)))
  return state


def trainable_parameter_count(config, size=(33, 33)) -> int:
  """Parameters the optimiser trains in one ctt-jax student (BN scale/bias excluded when
  `model.freeze_bn`), from shapes only (no init, no compile)."""
  model = models.get_model(config.model, config.num_classes)
  images = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          images)['params']
  groups = optim.param_groups(params, bool(config.model.freeze_bn))
  return sum(math.prod(leaf.shape) for leaf, group in
             zip(jax.tree.leaves(params), jax.tree.leaves(groups)) if group != 'frozen')


def make_batch(size, num_classes: int, seed: int = 0) -> dict:
  """Random uint8 images, labels in [0, C) with 5% ignored pixels, all pixels valid."""
  rng = np.random.default_rng(seed)
  shape = (BATCH, *size)
  label = rng.integers(0, num_classes, shape).astype(np.int32)
  label[rng.random(shape) < 0.05] = 255
  return {'labeled': {'image': rng.integers(0, 256, (*shape, 3)).astype(np.uint8),
                      'label': label},
          'unlabeled': {'image': rng.integers(0, 256, (*shape, 3)).astype(np.uint8),
                        'valid': np.ones(shape, bool)}}


# --- memory -------------------------------------------------------------------------------
def rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


class PeakRss:
  """Context manager: the largest RSS growth over the RSS at entry, sampled every 5 ms."""

  def __enter__(self):
    self.start = rss_bytes()
    self.peak = self.start
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)
    self._thread.start()
    return self

  def _poll(self):
    while not self._stop.wait(0.005):
      self.peak = max(self.peak, rss_bytes())

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_bytes())
    self.growth = self.peak - self.start


def memory_stats(compiled) -> dict:
  m = compiled.memory_analysis()
  stats = {k: int(getattr(m, k + '_in_bytes')) for k in
           ('argument_size', 'output_size', 'alias_size', 'temp_size')}
  stats['total'] = (stats['argument_size'] + stats['output_size'] - stats['alias_size']
                    + stats['temp_size'])
  return stats


def flops_of(stage) -> float:
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


# --- runners: .run() does one blocking step -------------------------------------------------
class JaxStep:
  """The jitted, state-donating ctt-jax train step on a random state and batch."""

  def __init__(self, config, size, fill_banks: bool = False, model_flops: bool = True,
               make_step=train_step.make_train_step):
    model = models.get_model(config.model, config.num_classes)
    self.state = random_state(config, model, size, fill_banks)
    self.batch = jax.device_put(make_batch(size, config.num_classes))
    step = make_step(config, model, num_labeled=NUM_LABELED)
    rng = jax.random.key(0)
    start = time.perf_counter()
    self.compiled = jax.jit(step, donate_argnums=0).lower(self.state, self.batch,
                                                          rng).compile()
    self.compile_s = time.perf_counter() - start
    self.memory = memory_stats(self.compiled)
    self.compiled_flops = flops_of(self.compiled)
    self.flops = self.compiled_flops
    if model_flops and config.model.conv_impl != 'xla':
      # The model's FLOPs, impl-neutral: XLA's cost analysis of the standard-convolution
      # step (the matmul backward also counts the zero-padding taps, a few % more).
      xla_config = config.copy_and_resolve_references()
      xla_config.model.conv_impl = 'xla'
      xla_model = models.get_model(xla_config.model, config.num_classes)
      xla_step = make_step(xla_config, xla_model, num_labeled=NUM_LABELED)
      self.flops = flops_of(jax.jit(xla_step).lower(self.state, self.batch, rng))
    self.count = 0
    self.rss_growth = None

  def run(self):
    self.count += 1
    self.state, metrics = self.compiled(self.state, self.batch, jax.random.key(self.count))
    jax.block_until_ready((self.state, metrics))


class JaxEval:
  """Forward pass of one student in eval mode, batch 2."""

  def __init__(self, config, size):
    model = models.get_model(config.model, config.num_classes)
    state = random_state(config, model, size, fill_banks=False)
    self.variables = jax.tree.map(lambda x: x[0], {'params': state.params,
                                                   'batch_stats': state.batch_stats})
    self.batch_size = BATCH
    self.images = jnp.asarray(np.random.default_rng(0).normal(size=(BATCH, *size, 3)),
                              jnp.float32)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    self.compiled = forward.lower(self.variables, self.images).compile()
    self.rss_growth = None

  def run(self):
    jax.block_until_ready(self.compiled(self.variables, self.images))


def _warm_up(runners: dict, guard: lg.LoadGuard):
  """One untimed step of each runner, its RSS growth recorded; then every thread's
  priority is checked, now that XLA's and torch's pools exist."""
  for name, runner in runners.items():
    with PeakRss() as rss:
      runner.run()
    runner.rss_growth = rss.growth
    log(f'{name}: warm-up step done, RSS growth {rss.growth / 2**20:.0f} MiB')
  _check_priority(guard, 'after the warm-up of ' + ', '.join(runners))


def _check_priority(guard: lg.LoadGuard, where: str):
  record = guard.enforce_priority(where)
  if record is not None:
    log(f'priority {where}: {record["threads"]} threads, {record["reapplied"]} re-set to '
        f'nice {record["requested"]}' + ('' if record['ok'] else ', FAILED'))


def timed_step(runner, guard: lg.LoadGuard) -> dict:
  """One step timed by wall clock and by process CPU time, with the shares of the
  benchmark's CPUs that this process and the others used meanwhile."""
  before = guard.sample()
  cpu, wall = time.process_time(), time.perf_counter()
  runner.run()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return {'wall_s': wall, 'cpu_s': cpu, **guard.shares(before, guard.sample())}


def summarise(steps: list[dict], timing: str) -> dict:
  """Median (over the undisturbed steps, see load_guard.robust_median), the step times
  and every step's sample."""
  times = [s[f'{timing}_s'] for s in steps]
  return {**lg.robust_median(times, [s['disturbed'] for s in steps]), 'times': times,
          'samples': steps}


def paired_ratio(a: list[dict], b: list[dict], timing: str = 'wall') -> dict:
  """a's time over b's, two runners of the same `alternate` call, per pair of rounds
  (2k, 2k + 1): in such a pair each runner after the first sits once in each place
  (`round_order`), so the place a step runs in cancels out, and so does a drift of the
  machine's speed slower than two rounds. Pairs with a disturbed step are left out
  unless fewer than half are left. Returns the median of the pairs' ratios, their
  range, and how many pairs it is over; an odd last round is not used."""
  pairs = []
  for k in range(min(len(a), len(b)) // 2):
    steps_a, steps_b = a[2 * k:2 * k + 2], b[2 * k:2 * k + 2]
    ratio = (sum(s[f'{timing}_s'] for s in steps_a) /
             sum(s[f'{timing}_s'] for s in steps_b))
    pairs.append((ratio, any(s['disturbed'] for s in steps_a + steps_b)))
  if not pairs:
    raise ValueError('paired_ratio needs at least two rounds of both runners.')
  every = [r for r, _ in pairs]
  quiet = [r for r, disturbed in pairs if not disturbed]
  loaded = 2 * len(quiet) < len(pairs)
  used = every if loaded else quiet
  return {'ratio': float(statistics.median(used)), 'low': min(used), 'high': max(used),
          'pairs': len(used), 'of_pairs': len(pairs), 'loaded': loaded, 'ratios': every}


def round_order(names: list[str], i: int) -> list[str]:
  """Round i's order: `names`, or the first name and the rest reversed when i is odd. In
  one process a step runs after whichever step came before it (the memory that step just
  freed, its pool's threads): at 256x512 the PyTorch step placed right after ctt-jax's
  took ~7% more CPU time than the same network's step placed after it."""
  return names if i % 2 == 0 else names[:1] + names[:0:-1]


def alternate(runners: dict, steps: int, guard: lg.LoadGuard | None = None,
              timing: str = 'wall') -> dict:
  """A warm-up step of each runner, then `steps` rounds in which every runner takes a
  step in turn, so a change of load hits all of them. The first runner leads every round
  and the others run in reverse order every other round (`round_order`), so with three
  runners each of the other two follows the first in half the rounds. Returns {'runners':
  {name: summarise(...)}, 'window': others' share over all rounds, 'timing': 'wall' |
  'cpu'}."""
  guard = guard or lg.LoadGuard()
  _warm_up(runners, guard)
  records = {name: [] for name in runners}
  start = guard.sample()
  for i in range(steps):
    for name in round_order(list(runners), i):
      records[name].append(timed_step(runners[name], guard))
    log(f'round {i + 1}/{steps}: ' + ', '.join(
        f'{k} {v[-1][timing + "_s"]:.3f}s (others {v[-1]["others_share"]:.0%}'
        f'{", disturbed" if v[-1]["disturbed"] else ""})' for k, v in records.items()))
  window = guard.shares(start, guard.sample())
  _check_priority(guard, 'after the timed steps of ' + ', '.join(runners))
  return {'timing': timing, 'window': window,
          'runners': {name: summarise(r, timing) for name, r in records.items()}}


# --- matmul peak --------------------------------------------------------------------------
def matmul_peak(n: int = 4096, repeats: int = 5, timing: str = 'wall') -> dict[str, float]:
  """GFLOP/s of an n x n float32 matmul: jnp (jitted), numpy and torch; median of runs
  timed like the steps it is compared with (wall clock or process CPU time)."""
  clock = time.process_time if timing == 'cpu' else time.perf_counter
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = rng.random((n, n), np.float32)
  b = rng.random((n, n), np.float32)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  matmul = jax.jit(jnp.matmul)
  runs = {'jnp': lambda: matmul(ja, jb).block_until_ready(), 'numpy': lambda: a @ b,
          'torch': lambda: ta @ tb}
  flop = 2.0 * n**3
  out = {}
  for name, fn in runs.items():
    fn()
    times = []
    for _ in range(repeats):
      start = clock()
      fn()
      times.append(clock() - start)
    out[name] = flop / median(times) / 1e9
  out['n'] = n
  return out


# --- targets and the table ----------------------------------------------------------------
def _verdict(value: float, target: float, higher_is_better: bool) -> str:
  met = value >= target if higher_is_better else value <= target
  if met:
    return 'met'
  if higher_is_better:
    return f'missed: {value / target:.2f}x of target ({(1 - value / target) * 100:.0f}% short)'
  return f'missed: {value / target:.2f}x the target ({(value / target - 1) * 100:.0f}% over)'


def loaded_reason(results: dict, sections, medians=()) -> str:
  """Why a row's numbers were taken under load ('' if they were not): a loaded section
  (others' share over the threshold) or a median over mostly disturbed steps."""
  for name in sections:
    v = results.get('sections', {}).get(name, {})
    if v.get('loaded'):
      return f'others used {v["others_share"]:.0%} of the CPUs'
  for m in medians:
    if m and m['median_over'] == 'all, LOADED':
      return f'only {m["undisturbed"]} of {m["steps"]} steps undisturbed'
  return ''


def _row(results, name, value, target, higher, context, sections, medians=()) -> dict:
  verdict = _verdict(value, target, higher)
  reason = loaded_reason(results, sections, medians)
  if reason:
    verdict = f'LOADED: {reason}; re-run (as measured: {verdict})'
  sign = '>=' if higher else '<='
  return {'row': name, 'value': value, 'target': f'{sign} {target:.2f}', 'verdict': verdict,
          'context': context, 'loaded': bool(reason)}


def _size(size) -> str:
  return 'x'.join(map(str, size))


def pairs_note(p: dict) -> str:
  """"per pair of rounds R (median of N of M pairs, range lo-hi)" for a paired_ratio."""
  loaded = ', LOADED' if p['loaded'] else ''
  return (f'per pair of rounds {p["ratio"]:.3f} (median of {p["pairs"]} of {p["of_pairs"]} '
          f'pairs{loaded}, range {p["low"]:.3f}-{p["high"]:.3f})')


def target_rows(results: dict) -> list[dict]:
  """Every targeted ratio with its target and verdict (LOADED if measured under load)."""
  rows = []
  for r in results['supervised']:
    rows.append(_row(results, f'supervised step {_size(r["size"])}: ctt-jax / PyTorch time',
                     r['ratio'], 1.0, False,
                     f'ctt-jax {r["jax_s"]:.3f}s, PyTorch {r["torch_s"]:.3f}s'
                     + (f'; {pairs_note(r["ratio_paired"])}' if 'ratio_paired' in r else ''),
                     ['sup'], [r.get('jax_median'), r.get('torch_median')]))
    if 'reference_over_plain' in r:
      paired = r.get('reference_over_plain_paired')
      context = f'reference {r["torch_s"]:.3f}s, plain {r["torch_plain_s"]:.3f}s'
      if paired:  # the value is the paired ratio; the medians' ratio beside it
        context = (f'{pairs_note(paired)}; medians: {context} '
                   f'({r["reference_over_plain_medians"]:.3f})')
      rows.append(_row(results, f'PyTorch step {_size(r["size"])}: benchmark reference / '
                       'plain step', r['reference_over_plain'], 1.03, False, context,
                       ['sup'], [r.get('torch_median'), r.get('torch_plain_median')]))
  if 'ctt' in results:
    c = results['ctt']
    rows.append(_row(results, f'CTT machinery {_size(c["size"])}: full / network passes - 1',
                     c['overhead'], 0.05, False, f'full {c["full"]["median_s"]:.3f}s, '
                     f'passes only {c["passes"]["median_s"]:.3f}s', ['ctt'],
                     [c['full'].get('median'), c['passes'].get('median')]))
  big = max(results['supervised'], key=lambda r: r['size'][0] * r['size'][1], default=None)
  if big is not None:
    gflops = big['flops'] / big['jax_s'] / 1e9
    peak = results['matmul']['jnp']
    rows.append(_row(results, f'supervised step {_size(big["size"])}: GFLOP/s / jnp matmul '
                     'GFLOP/s', gflops / peak, 0.6, True,
                     f'{gflops:.1f} of {peak:.1f} GFLOP/s ({big["flops"] / 1e9:.0f} '
                     f'GFLOP/step); PyTorch {big["flops"] / big["torch_s"] / 1e9:.1f} GFLOP/s',
                     ['sup', 'matmul'], [big.get('jax_median')]))
  return rows


def _mib(n):
  return f'{n / 2**20:,.0f}' if n is not None else '-'


def _share(v: dict | None) -> str:
  return f'{v["others_share"]:.1%}' if v else '-'


def _section_lines(results: dict) -> list[str]:
  sections = results.get('sections')
  if not sections:
    return []
  lines = ["Sections: others' share of the benchmark's CPUs (busy time of all processes in "
           "/proc/stat minus this process's CPU time, over wall x CPUs), this process's "
           'share, and the 1-minute load average at start and end; with `--update` a '
           'section can be re-measured later:', '']
  for name, v in sections.items():
    line = f'- {name}: {v["start"]}-{v["end"]}'
    if 'others_share' in v:
      line += (f', others {v["others_share"]:.1%} of the CPUs (own {v["own_share"]:.0%}), '
               f'nice {v.get("priority")}{"" if v.get("priority_ok", True) else " NOT set"}')
    line += f', load {v["load_start"][0]:.2f} -> {v["load_end"][0]:.2f}'
    if v.get('loaded'):
      line += ' - **LOADED: re-run**'
    lines.append(line)
  return lines + ['']


def _protocol_lines(results: dict) -> list[str]:
  p = results.get('protocol')
  if not p:
    return []
  if p['priority'] is None:
    priority = 'priority left as started'
  elif p['priority_ok']:
    priority = f'every thread at nice {p["priority"]} (checked after each warm-up)'
  else:
    priority = f'PRIORITY NOT RAISED: nice {p["priority"]} could not be set on every thread'
  clock = 'process CPU time' if p['timing'] == 'cpu' else 'wall clock'
  cpus = f'{len(p["cpus"])} CPU{"s" if len(p["cpus"]) > 1 else ""}'
  return [f'Protocol: {priority}; step times by {clock}; a step or section is disturbed '
          f'when other processes used more than {p["threshold"]:.0%} of the {cpus} (beyond '
          "the counters' resolution); medians are over the undisturbed steps when at least "
          'half are.', '']


def _header_lines(results: dict) -> list[str]:
  m = results['machine']
  load = lambda key: tuple(round(v, 2) for v in results[key])
  return [
      f'# Train-step benchmark{" (--quick)" if results["quick"] else ""}', '',
      f'{results["started"]} to {results["finished"]}; {m["cpu"]}, {m["cpus_used"]} of '
      f'{m["cpu_count"]} CPUs for both frameworks (torch threads {m["torch_threads"]}); '
      f'jax {m["jax"]}, torch {m["torch"]}, Python {m["python"]}; ctt-jax '
      f'model.conv_impl={results["conv_impl"]}, model.head='
      f'{results.get("settings", {}).get("head", "bottleneck")}; '
      f'XLA_FLAGS="{m["xla_flags"]}".',
      f'Load average (1, 5, 15 min) at start {load("load_average_start")}, at end '
      f'{load("load_average_end")}.', '',
      *_protocol_lines(results),
      *([f'Sections re-measured with --update at {results["updated"]}.', '']
        if 'updated' in results else []),
      *_section_lines(results)]


def _median_cell(m: dict | None) -> str:
  return lg.median_note(m) if m else '-'


def _step_lines(results: dict) -> list[str]:
  lines = ['## Step times (median; every step time and load sample in the JSON)', '',
           '| step | size | ctt-jax s | PyTorch s | plain PyTorch s | ctt-jax / PyTorch | '
           'ctt-jax / plain | GFLOP/step | ctt-jax GFLOP/s | XLA compile s | steps in the '
           'median (ctt-jax; PyTorch; plain) | others, timed steps |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in results['supervised']:
    plain = f'{r["torch_plain_s"]:.3f}' if 'torch_plain_s' in r else '-'
    over_plain = f'{r["jax_s"] / r["torch_plain_s"]:.3f}' if 'torch_plain_s' in r else '-'
    lines.append(f'| supervised, batch 2 | {_size(r["size"])} | {r["jax_s"]:.3f} | '
                 f'{r["torch_s"]:.3f} | {plain} | {r["ratio"]:.3f} | {over_plain} | '
                 f'{r["flops"] / 1e9:.0f} | '
                 f'{r["flops"] / r["jax_s"] / 1e9:.1f} | {r["jax_compile_s"]:.0f} | '
                 f'{_median_cell(r.get("jax_median"))}; '
                 f'{_median_cell(r.get("torch_median"))}; '
                 f'{_median_cell(r.get("torch_plain_median"))} | '
                 f'{_share(r.get("window"))} |')
  labels = {'full': 'CTT, 2 pairs, all on', 'no_contrastive': 'CTT without HC, LC (bank '
            'push on)', 'base': 'CTT without HC, LC, bank push',
            'passes': 'CTT network passes only (benchmarks/network_passes.py)'}
  c = results.get('ctt')
  for name in ('full', 'no_contrastive', 'base', 'passes') if c else ():
    if name in c:
      v = c[name]
      lines.append(f'| {labels[name]} | {_size(c["size"])} | {v["median_s"]:.3f} | - | - | - | - | '
                   f'{v["flops"] / 1e9:.0f} | {v["flops"] / v["median_s"] / 1e9:.1f} | '
                   f'{v["compile_s"]:.0f} | {_median_cell(v.get("median"))} | '
                   f'{_share(c.get("window"))} |')
  return lines


def _memory_lines(results: dict) -> list[str]:
  probes = {tuple(p['size']): p for p in results.get('memory_probe', [])}
  lines = ['## Memory (MiB)', '',
           'XLA: memory analysis of the compiled step (arguments + outputs - aliased + '
           'temporaries). Peak RSS growth: during two steps, each framework in a fresh '
           'process (benchmarks/memory_probe.py); the in-process number of the timed run '
           '(first step of each framework, ctt-jax first) is in the JSON.', '',
           '| step | size | XLA total | of which temps | ctt-jax peak RSS growth | '
           'PyTorch peak RSS growth |', '|---|---|---|---|---|---|']
  for r in results['supervised']:
    mem = r['jax_memory']
    probe = probes.get(tuple(r['size']), {})
    growth = lambda fw: _mib(probe[fw]['growth']) if fw in probe else '-'
    lines.append(f'| supervised | {_size(r["size"])} | {_mib(mem["total"])} | '
                 f'{_mib(mem["temp_size"])} | {growth("jax")} | {growth("torch")} |')
  c = results.get('ctt')
  for name in ('full', 'no_contrastive', 'base', 'passes') if c else ():
    if name in c:
      mem = c[name]['memory']
      lines.append(f'| CTT {name} | {_size(c["size"])} | {_mib(mem["total"])} | '
                   f'{_mib(mem["temp_size"])} | - | - |')
  return lines


def _eval_lines(results: dict) -> list[str]:
  if 'eval' not in results:
    return []
  e = results['eval']
  reason = loaded_reason(results, ['eval'], [e.get('jax_median'), e.get('torch_median')])
  return ['## Evaluation (forward, eval mode)', '',
          '| size | batch | ctt-jax images/s | PyTorch images/s | ratio | load |',
          '|---|---|---|---|---|---|',
          f'| {_size(e["size"])} | {e["batch"]} | {e["jax_images_per_s"]:.2f} | '
          f'{e["torch_images_per_s"]:.2f} | '
          f'{e["jax_images_per_s"] / e["torch_images_per_s"]:.2f} | '
          f'{"LOADED: " + reason + "; re-run" if reason else "quiet"} |', '']


def markdown(results: dict) -> str:
  lines = [*_header_lines(results),
           '| row | ratio | target | verdict | measured side by side |',
           '|---|---|---|---|---|']
  for r in results['rows']:
    lines.append(f'| {r["row"]} | {r["value"]:.3f} | {r["target"]} | {r["verdict"]} | '
                 f'{r["context"]} |')
  mm = results['matmul']
  lines += ['', f'float32 {mm["n"]}x{mm["n"]} matmul, GFLOP/s: jnp {mm["jnp"]:.1f}, '
            f'numpy {mm["numpy"]:.1f}, torch {mm["torch"]:.1f}.', '',
            *_step_lines(results), '', *_memory_lines(results), '', *_eval_lines(results)]
  return '\n'.join(lines).rstrip('\n') + '\n'
