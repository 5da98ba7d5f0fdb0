"""ctt-jax side of benchmarks/step_benchmark.py: configs, random states, compiled steps,
timing, and the result table. (The PyTorch side is benchmarks/torch_step.py.)"""
from __future__ import annotations

import os
import statistics
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from ctt_jax import models, train_state, train_step
from ctt_jax.models.testing import random_variables

NUM_LABELED = 100  # Cityscapes 1_30: bank k = max(1, 100 // 128) = 1 per class and step
BATCH = 2


def log(message: str):
  print(f'[{time.strftime("%H:%M:%S")} load {os.getloadavg()[0]:.2f}] {message}',
        file=sys.stderr, flush=True)


def median(values):
  return float(statistics.median(values))


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return 'unknown'


def json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  return str(value)


# --- configs, states, batches -------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
  """'256x512' -> (256, 512)."""
  return tuple(int(v) for v in text.split('x'))


def add_network_args(parser) -> None:
  """--size, --backbone, --width_multiplier: the network of a single-step script."""
  parser.add_argument('--size', default='256x512')
  parser.add_argument('--backbone', default='resnet101')
  parser.add_argument('--width_multiplier', type=float, default=1.0)


def network_args(args) -> tuple[tuple[int, int], dict]:
  """(size, settings for make_config) from the arguments of `add_network_args`."""
  return parse_size(args.size), {'backbone': args.backbone,
                                 'width_multiplier': args.width_multiplier}


def make_config(s: dict, method: str, num_pairs: int, conv_impl: str, **overrides):
  """The paper's Cityscapes setting (DeepLabV2 caffe R101, output stride 8, frozen BN,
  19 classes, SGD) with the benchmark's backbone and method."""
  c = common.base_config()
  for key, value in common.CAFFE_INPUT.items():
    c[key] = value
  c.method, c.num_pairs = method, num_pairs
  c.model.backbone, c.model.width_multiplier = s['backbone'], s['width_multiplier']
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

  def __init__(self, config, size, fill_banks: bool = False, model_flops: bool = True):
    model = models.get_model(config.model, config.num_classes)
    self.state = random_state(config, model, size, fill_banks)
    self.batch = jax.device_put(make_batch(size, config.num_classes))
    step = train_step.make_train_step(config, model, num_labeled=NUM_LABELED)
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
      xla_step = train_step.make_train_step(xla_config, xla_model, num_labeled=NUM_LABELED)
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


def alternate(runners: dict, steps: int) -> dict[str, list[float]]:
  """One untimed step of each runner (its RSS growth recorded), then `steps` rounds in
  which every runner takes a step in turn. Returns the step times per runner."""
  for name, runner in runners.items():
    with PeakRss() as rss:
      runner.run()
    runner.rss_growth = rss.growth
    log(f'{name}: warm-up step done, RSS growth {rss.growth / 2**20:.0f} MiB')
  times = {name: [] for name in runners}
  for i in range(steps):
    for name, runner in runners.items():
      start = time.perf_counter()
      runner.run()
      times[name].append(time.perf_counter() - start)
    log(f'round {i + 1}/{steps}: ' + ', '.join(f'{k} {v[-1]:.3f}s' for k, v in
                                                times.items()))
  return times


# --- matmul peak --------------------------------------------------------------------------
def matmul_peak(n: int = 4096, repeats: int = 5) -> dict[str, float]:
  """GFLOP/s of an n x n float32 matmul: jnp (jitted), numpy and torch; median of runs."""
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
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
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


def target_rows(results: dict) -> list[dict]:
  """Every targeted ratio with its target and verdict."""
  rows = []
  for row in results['supervised']:
    size = 'x'.join(map(str, row['size']))
    rows.append({'row': f'supervised step {size}: ctt-jax / PyTorch time',
                 'value': row['ratio'], 'target': '<= 0.80',
                 'verdict': _verdict(row['ratio'], 0.8, False),
                 'context': f'ctt-jax {row["jax_s"]:.3f}s, PyTorch {row["torch_s"]:.3f}s'})
  if 'ctt' in results:
    c = results['ctt']
    size = 'x'.join(map(str, c['size']))
    rows.append({'row': f'CTT machinery {size}: full / (no HC, LC, bank) - 1',
                 'value': c['overhead'], 'target': '<= 0.05',
                 'verdict': _verdict(c['overhead'], 0.05, False),
                 'context': f'full {c["full"]["median_s"]:.3f}s, '
                            f'without {c["base"]["median_s"]:.3f}s'})
  big = max(results['supervised'], key=lambda r: r['size'][0] * r['size'][1], default=None)
  if big is not None:
    gflops = big['flops'] / big['jax_s'] / 1e9
    peak = results['matmul']['jnp']
    size = 'x'.join(map(str, big['size']))
    rows.append({'row': f'supervised step {size}: GFLOP/s / jnp matmul GFLOP/s',
                 'value': gflops / peak, 'target': '>= 0.60',
                 'verdict': _verdict(gflops / peak, 0.6, True),
                 'context': f'{gflops:.1f} of {peak:.1f} GFLOP/s '
                            f'({big["flops"] / 1e9:.0f} GFLOP/step); PyTorch '
                            f'{big["flops"] / big["torch_s"] / 1e9:.1f} GFLOP/s'})
  return rows


def _mib(n):
  return f'{n / 2**20:,.0f}' if n is not None else '-'


def _section_lines(results: dict) -> list[str]:
  sections = results.get('sections')
  if not sections:
    return []
  lines = ['Sections (1-minute load average at start and end; with `--update` a section can '
           'be re-measured later):', '']
  for name, v in sections.items():
    lines.append(f'- {name}: {v["start"]}-{v["end"]}, load {v["load_start"][0]:.2f} -> '
                 f'{v["load_end"][0]:.2f}')
  return lines + ['']


def markdown(results: dict) -> str:
  m = results['machine']
  lines = [
      f'# Train-step benchmark{" (--quick)" if results["quick"] else ""}', '',
      f'{results["started"]} to {results["finished"]}; {m["cpu"]}, {m["cpus_used"]} of '
      f'{m["cpu_count"]} CPUs for both frameworks (torch threads {m["torch_threads"]}); '
      f'jax {m["jax"]}, torch {m["torch"]}, Python {m["python"]}; ctt-jax '
      f'model.conv_impl={results["conv_impl"]}; XLA_FLAGS="{m["xla_flags"]}".',
      f'Load average (1, 5, 15 min) at start {tuple(round(v, 2) for v in results["load_average_start"])}, '
      f'at end {tuple(round(v, 2) for v in results["load_average_end"])}.', '',
      *([f'Sections re-measured with --update at {results["updated"]}.', '']
        if 'updated' in results else []),
      *_section_lines(results),
      '| row | ratio | target | verdict | measured side by side |',
      '|---|---|---|---|---|']
  for r in results['rows']:
    lines.append(f'| {r["row"]} | {r["value"]:.3f} | {r["target"]} | {r["verdict"]} | '
                 f'{r["context"]} |')
  mm = results['matmul']
  lines += ['', f'float32 {mm["n"]}x{mm["n"]} matmul, GFLOP/s: jnp {mm["jnp"]:.1f}, '
            f'numpy {mm["numpy"]:.1f}, torch {mm["torch"]:.1f}.', '',
            '## Step times (median; every step time in the JSON)', '',
            '| step | size | ctt-jax s | PyTorch s | ctt-jax / PyTorch | GFLOP/step | '
            'ctt-jax GFLOP/s | XLA compile s |', '|---|---|---|---|---|---|---|---|']
  for r in results['supervised']:
    lines.append(f'| supervised, batch 2 | {"x".join(map(str, r["size"]))} | '
                 f'{r["jax_s"]:.3f} | {r["torch_s"]:.3f} | {r["ratio"]:.2f} | '
                 f'{r["flops"] / 1e9:.0f} | {r["flops"] / r["jax_s"] / 1e9:.1f} | '
                 f'{r["jax_compile_s"]:.0f} |')
  if 'ctt' in results:
    c = results['ctt']
    for name in ('full', 'no_contrastive', 'base'):
      if name in c:
        label = {'full': 'CTT, 2 pairs, all on', 'base': 'CTT without HC, LC, bank push',
                 'no_contrastive': 'CTT without HC, LC (bank push on)'}[name]
        v = c[name]
        lines.append(f'| {label} | {"x".join(map(str, c["size"]))} | {v["median_s"]:.3f} '
                     f'| - | - | {v["flops"] / 1e9:.0f} | '
                     f'{v["flops"] / v["median_s"] / 1e9:.1f} | {v["compile_s"]:.0f} |')
  probes = {tuple(p['size']): p for p in results.get('memory_probe', [])}
  lines += ['', '## Memory (MiB)', '',
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
    lines.append(f'| supervised | {"x".join(map(str, r["size"]))} | {_mib(mem["total"])} | '
                 f'{_mib(mem["temp_size"])} | {growth("jax")} | {growth("torch")} |')
  if 'ctt' in results:
    c = results['ctt']
    for name in ('full', 'no_contrastive', 'base'):
      if name in c:
        mem = c[name]['memory']
        lines.append(f'| CTT {name} | {"x".join(map(str, c["size"]))} | '
                     f'{_mib(mem["total"])} | {_mib(mem["temp_size"])} | - | - |')
  if 'eval' in results:
    e = results['eval']
    lines += ['', '## Evaluation (forward, eval mode)', '',
              '| size | batch | ctt-jax images/s | PyTorch images/s | ratio |',
              '|---|---|---|---|---|',
              f'| {"x".join(map(str, e["size"]))} | {e["batch"]} | '
              f'{e["jax_images_per_s"]:.2f} | {e["torch_images_per_s"]:.2f} | '
              f'{e["jax_images_per_s"] / e["torch_images_per_s"]:.2f} |']
  return '\n'.join(lines) + '\n'
