"""The TPU compile table: HBM, FLOPs and roofline of the paper configs on Cloud TPU slices.

    bash tools/setup_tpu_compile_env.sh                 # once: the libtpu venv, .tpu-venv
    nice -n 19 .tpu-venv/bin/python tools/tpu_compile_table.py [--rows=main]
    python tools/tpu_compile_table.py --render          # docs/results/tpu.md from the rows

Compiles each row (config, method, dtype, remat, per-chip batch, topology) with
`ctt_jax.tpu_compile.compile_report`, each in its own process, and appends it to
`tools/results/tpu_compile.json` (`{"rows": [...]}`) as soon as it finishes. Rows
already in the file are skipped, so a killed run resumes where it stopped. A ResNet-101
step takes ~12 minutes to compile on a 2-core machine: order matters, the most useful rows
come first.

`--render` writes the one page the documentation links to, `docs/results/tpu.md`, from
the file's rows (no libtpu needed): the largest per-chip batch that fits per slice,
config and dtype, the `scaling` rows, and the `mesh` rows beside the data-parallel rows
they are compared with. The file keeps every row; `--markdown` prints them all as a
table (with the largest batches' compiled batches and linear estimates).

Row sets (`--rows`, comma-separated, run in the order given; all of them:
`--rows=main,slopes,scaling,search,v6e`):
- `main`: the paper configs on v5e-8, v4-8, v5p-8 and one multi-host slice (v5e 4x4),
  and the supervised step on v6e-8;
- `slopes`: a second batch on v5e-8 of each program compiled at one batch only, so that
  every slice's largest batch has a linear estimate;
- `scaling`: per-chip FLOPs and HBM against num_pairs, bank_size and crop size (a table of
  their own on the page);
- `search`: the largest per-chip batch that fits, for each config, dtype and slice (and
  the float32 supervised baseline on v5e-8 and v4-8 and bf16 with remat on v5e-8, first):
  from the linear estimate of two compiled batches (of this slice, else the slope of the
  same program on another slice), else by doubling, then bisecting; v5e-8 and v4-8 first;
- `v6e`: the CTT steps on v6e-8, last (they need the most host memory and time);
- `mesh`: the paper's Cityscapes config as written (2 + 2, float32) laid over each 8-chip
  slice by the mesh rule (ctt_jax/layout.py: data 2 x space 4 on 8 chips, 2 x 2 on 4),
  train and eval (`per_chip_batch` 0 = as written), then the data-parallel rows the page
  sets beside them (batch_size=16 for train, one image per chip for eval; like every row
  set, it skips those already compiled);
- `demo`: the demo config (seconds).

`--configs=cityscapes` and `--topologies=v5e:2x4,v4:2x2x1` keep only the rows (and search
bases) of those configs (a substring of the config path) and slices, to settle what
matters first, e.g. `--rows=search --configs=cityscapes --topologies=v5e:2x4,v4:2x2x1`.

The batch rule: `batch_size` is the global labeled batch (the unlabeled one is as large),
so a row's per-chip batch p on D chips compiles `batch_size = p * D`; p = 0 compiles the
config's own batch_size, split over batch and image rows (the `mesh` rows).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # configs/ and ctt_jax/, imported where needed (ctt_jax: jax)
  sys.path.insert(0, ROOT)
DEFAULT_OUTPUT = os.path.join(ROOT, 'tools', 'results', 'tpu_compile.json')
DEFAULT_PAGE = os.path.join(ROOT, 'docs', 'results', 'tpu.md')
CITYSCAPES = 'configs/cityscapes.py:1_30'
VOC_AUG = 'configs/voc_aug.py:1_50'
VOC_CLASSIC = 'configs/voc_classic.py:1_16'
SINGLE_HOST = ('v5e:2x4', 'v4:2x2x1', 'v5p:2x2x1', 'v6e:2x4')
MULTI_HOST = 'v5e:4x4'
# What identifies a row: rerunning a row with these values equal is a skip.
# Rows compiled before 2026-11-30 have no conv_impl: their model.conv_impl='auto' resolved on
# the compiling CPU to the CPU's convolution graph (tpu_compile.as_on_tpu), so they are not
# the TPU's step and compile again (every such row has been, with conv_impl 'xla').
KEY_FIELDS = ('step', 'topology', 'config', 'method', 'dtype', 'remat', 'per_chip_batch',
              'overrides', 'conv_impl')


def row(config: str, topology: str, *, method: str = 'ctt', dtype: str = 'float32',
        per_chip_batch: int = 1, remat: str = '', overrides: str = '',
        step: str = 'train', conv_impl: str = 'xla') -> dict[str, Any]:
  """A row to compile (its key fields only)."""
  return {'step': step, 'topology': topology, 'config': config, 'method': method,
          'dtype': dtype, 'remat': remat, 'per_chip_batch': per_chip_batch,
          'overrides': overrides, 'conv_impl': conv_impl}


def row_key(r: dict[str, Any]) -> tuple:
  return tuple(r.get(f, '') for f in KEY_FIELDS)


def base_key(r: dict[str, Any]) -> tuple:
  """A row's key without its batch: the rows a batch search compares."""
  return row_key({**r, 'per_chip_batch': 0})


def method_overrides(method: str) -> str:
  # The paper's supervised baseline is one network (README "Running the paper's protocols").
  return 'method=supervised,num_pairs=1' if method == 'supervised' else f'method={method}'


def main_rows() -> list[dict[str, Any]]:
  """The paper configs, breadth first: every slice and config once before any variant.

  A CTT row takes 10-55 minutes to compile on a shared 2-core machine, so the table is
  filled over several runs; this order makes every partial table cover the most.
  """
  eight_chip = ('v5e:2x4', 'v4:2x2x1')
  # 1. The rows that answer first whether the paper's step fits: Cityscapes CTT on v5e-8
  #    and v4-8 at one image + one per chip (the baseline) and two + two in bfloat16.
  rows = [row(CITYSCAPES, 'v5e:2x4', dtype='float32', per_chip_batch=1),
          row(CITYSCAPES, 'v5e:2x4', dtype='bfloat16', per_chip_batch=2),
          row(CITYSCAPES, 'v4:2x2x1', dtype='bfloat16', per_chip_batch=2)]
  # 2. The same on the other slices (v6e's CTT compiles are `v6e_rows`).
  for topology in ('v5p:2x2x1', MULTI_HOST):
    rows.append(row(CITYSCAPES, topology, dtype='bfloat16', per_chip_batch=2))
  # 3. The supervised baseline, the other two paper configs, the paper's eval step.
  for topology in eight_chip:
    rows.append(row(CITYSCAPES, topology, method='supervised', dtype='float32',
                    per_chip_batch=2))
  for config in (VOC_AUG, VOC_CLASSIC):
    for topology in eight_chip:
      rows.append(row(config, topology, dtype='bfloat16', per_chip_batch=1))
  rows.append(row(CITYSCAPES, 'v5e:2x4', step='eval'))
  # 4. float32 and remat next to the bfloat16 rows.
  rows += [row(CITYSCAPES, 'v4:2x2x1', dtype='float32', per_chip_batch=2),
           row(CITYSCAPES, 'v5e:2x4', dtype='float32', per_chip_batch=2),
           row(CITYSCAPES, 'v5e:2x4', dtype='bfloat16', per_chip_batch=2, remat='blocks'),
           row(CITYSCAPES, 'v5e:2x4', dtype='float32', per_chip_batch=2, remat='blocks')]
  for config in (VOC_AUG, VOC_CLASSIC):
    for topology in eight_chip:
      rows.append(row(config, topology, dtype='float32', per_chip_batch=1))
  # 5. Everything else: the remaining slices, dtypes and eval steps.
  for topology in ('v5p:2x2x1', MULTI_HOST):
    rows.append(row(CITYSCAPES, topology, dtype='float32', per_chip_batch=2))
  for config in (VOC_AUG, VOC_CLASSIC):
    for topology in ('v5p:2x2x1', MULTI_HOST):
      for dtype in ('bfloat16', 'float32'):
        rows.append(row(config, topology, dtype=dtype, per_chip_batch=1))
  for topology in ('v5p:2x2x1', 'v6e:2x4'):
    rows.append(row(CITYSCAPES, topology, method='supervised', dtype='float32',
                    per_chip_batch=2))
  rows += [row(CITYSCAPES, 'v5e:2x4', dtype='bfloat16', per_chip_batch=1),
           row(CITYSCAPES, 'v4:2x2x1', dtype='float32', per_chip_batch=1),
           row(CITYSCAPES, 'v4:2x2x1', dtype='bfloat16', per_chip_batch=1),
           row(CITYSCAPES, 'v4:2x2x1', dtype='float32', per_chip_batch=2, remat='blocks')]
  for config in (CITYSCAPES, VOC_AUG, VOC_CLASSIC):
    rows.append(row(config, 'v5e:2x4', dtype='bfloat16', step='eval'))
  return rows


def v6e_rows() -> list[dict[str, Any]]:
  """The paper configs' CTT steps on v6e-8, a row set of their own (run it last).

  The Cityscapes one needs about 22 GB of host memory: alone it compiled in 1069 s with
  21.9 GB in use (2026-12-01); beside a 3 GB training run the OOM killer took it at
  22.5 GB on a 24 GB machine without swap (2026-11-30). Every config is the same
  ResNet-101 pair of students: run these alone on the machine.
  """
  rows = [row(CITYSCAPES, 'v6e:2x4', dtype='bfloat16', per_chip_batch=2)]
  rows.append(row(CITYSCAPES, 'v6e:2x4', dtype='float32', per_chip_batch=2))
  for config in (VOC_AUG, VOC_CLASSIC):
    for dtype in ('bfloat16', 'float32'):
      rows.append(row(config, 'v6e:2x4', dtype=dtype, per_chip_batch=1))
  return rows


def scaling_rows() -> list[dict[str, Any]]:
  """Per-chip cost against pairs, bank size and crop (v5e-8, bf16, 1 + 1 per chip).

  A value the config already has is its row without an override, so the config's own
  row (also in `main`) is compiled once, not once per axis.
  """
  return [scaling_row(overrides) for _, _, overrides in scaling_points()]


def scaling_row(overrides: str) -> dict[str, Any]:
  return row(CITYSCAPES, 'v5e:2x4', dtype='bfloat16', overrides=overrides)


def scaling_points() -> list[tuple[str, str, str]]:
  """(axis, value, overrides) of each scaling row; the config's own value has none."""
  from configs import common  # pylint: disable=g-import-not-at-top
  config = common.from_file(CITYSCAPES, ROOT)
  axes = (('num_pairs', config.num_pairs, (1, 2, 3)),
          ('bank_size', config.bank_size, (128, 256, 512, 1024)),
          ('data.crop_size', tuple(config.data.crop_size),
           ((256, 512), (384, 768), (512, 1024))))
  points = []
  for key, default, values in axes:
    for value in values:
      text = 'x'.join(map(str, value)) if isinstance(value, tuple) else str(value)
      points.append((key, text, '' if value == default else f'{key}={text}'))
  return points


def slope_rows() -> list[dict[str, Any]]:
  """A second batch on v5e-8 for each program the table has at one batch only.

  Two batches of a program give its line (HBM against the per-chip batch), and with it a
  linear estimate of the largest batch on every slice that compiled the program once
  (`search_estimate`): six compiles put an estimate in the largest-batch table's lines
  (all but float32 with remat) before `search` spends two or more compiles on each base.
  """
  rows = [row(config, 'v5e:2x4', dtype=dtype, per_chip_batch=2)
          for config in (VOC_AUG, VOC_CLASSIC) for dtype in ('bfloat16', 'float32')]
  rows += [row(CITYSCAPES, 'v5e:2x4', method='supervised', dtype='float32', per_chip_batch=4),
           row(CITYSCAPES, 'v5e:2x4', dtype='bfloat16', remat='blocks', per_chip_batch=4)]
  return rows


def mesh_rows() -> list[dict[str, Any]]:
  """The paper's Cityscapes 1_30 config as written (batch 2 + 2, float32) on each 8-chip
  slice, laid out by the mesh rule, each followed later by the data-parallel row it is
  compared with (`data_parallel_row`); the v6e rows last (they need the most host memory).
  """
  as_written = [row(CITYSCAPES, topology, per_chip_batch=0)
                for topology in ('v5e:2x4', 'v4:2x2x1', 'v5p:2x2x1')]
  as_written.append(row(CITYSCAPES, 'v5e:2x4', per_chip_batch=0, step='eval'))
  v6e = row(CITYSCAPES, 'v6e:2x4', per_chip_batch=0)
  return as_written + [data_parallel_row(r) for r in as_written] + [v6e, data_parallel_row(v6e)]


# The global labeled batch of the data-parallel rows the `mesh` rows are compared with: 2 + 2
# per chip on an 8-chip slice, the per-chip batch of the paper's step.
DATA_PARALLEL_BATCH = 16


def data_parallel_row(as_written: dict[str, Any]) -> dict[str, Any]:
  """The row a `mesh` row (the config's own batch over data x space) is compared with: the
  same program, data parallel, at batch_size=`DATA_PARALLEL_BATCH` for train (2 + 2 per
  chip on 8 chips, 4 + 4 on 4) and one image per chip for eval."""
  from ctt_jax import tpu_compile  # pylint: disable=g-import-not-at-top
  num_chips = tpu_compile.parse_topology(as_written['topology']).num_chips
  if as_written['step'] == 'eval':
    # The eval step reads its batch from data.eval_batch_size, not batch_size.
    return {**as_written, 'per_chip_batch': 1,
            'overrides': f'data.eval_batch_size={num_chips}'}
  return {**as_written, 'per_chip_batch': DATA_PARALLEL_BATCH // num_chips}


def demo_rows() -> list[dict[str, Any]]:
  return [row('configs/demo.py', 'v5e:2x2', per_chip_batch=2),
          row('configs/demo.py', 'v5e:2x2', step='eval')]


# ----------------------------------------------------------------------------------------
# The results file
# ----------------------------------------------------------------------------------------


def load_rows(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)['rows']


def append_row(path: str, result: dict[str, Any]):
  """Adds one row, rewriting the file atomically (a kill never leaves half a file)."""
  rows = load_rows(path) + [result]
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump({'rows': rows}, f, indent=1)
  os.replace(tmp, path)


def pending(rows: Iterable[dict[str, Any]], done: list[dict[str, Any]]):
  """The rows whose key is not in `done`, in order, without duplicates."""
  seen = {row_key(r) for r in done}
  for r in rows:
    if row_key(r) not in seen:
      seen.add(row_key(r))
      yield r


def find(done: list[dict[str, Any]], wanted: dict[str, Any]) -> Optional[dict[str, Any]]:
  for r in done:
    if row_key(r) == row_key(wanted):
      return r
  return None


# ----------------------------------------------------------------------------------------
# One row (run in a child process: a fresh heap per compile)
# ----------------------------------------------------------------------------------------


def config_arg(r: dict[str, Any], num_chips: int) -> tuple[str, str]:
  """(config file, argument string) of a row: partition, method, dtype, remat, batch,
  extras."""
  path, _, arg = r['config'].partition(':')
  parts = [arg] if arg else []
  parts += [method_overrides(r['method']), f"model.dtype={r['dtype']}",
            f"model.remat={r['remat']}", f"model.conv_impl={r['conv_impl']}"]
  if r['per_chip_batch']:  # 0: the config's own batch_size, laid out by the mesh rule
    parts.append(f"batch_size={r['per_chip_batch'] * num_chips}")
  if r['overrides']:
    parts.append(r['overrides'])
  return path, ','.join(parts)


def code_version() -> str:
  """The commit the row was compiled from ('+dirty' if ctt_jax/ or configs/ differ)."""
  def git(*args):
    return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True).stdout
  commit = git('rev-parse', '--short', 'HEAD').strip() or 'unknown'
  return commit + ('+dirty' if git('status', '--porcelain', 'ctt_jax', 'configs').strip()
                   else '')


def compile_row(r: dict[str, Any]) -> dict[str, Any]:
  """Compiles one row in this process and returns the table row (JSON-able)."""
  from configs import common  # pylint: disable=g-import-not-at-top
  from ctt_jax import tpu_compile  # pylint: disable=g-import-not-at-top
  topo = tpu_compile.parse_topology(r['topology'])
  path, arg = config_arg(r, topo.num_chips)
  config = common.from_file(f'{path}:{arg}', ROOT)
  start = time.time()
  report = tpu_compile.compile_report(config, r['topology'], steps=(r['step'],))
  step = report[r['step']]
  flops, moved = step.get('flops'), step.get('bytes_accessed')
  return {
      **r, 'hbm_gib': round(step['total_gib'], 3),
      'hbm_capacity_gib': report['hbm_capacity_gib'], 'fits': step['fits'],
      'tflop_per_chip_step': None if flops is None else round(flops / 1e12, 4),
      'roofline_s': None if 'roofline_s' not in step else round(step['roofline_s'], 5),
      'bound': step.get('bound'),
      'gib_accessed_per_chip_step': None if moved is None else round(moved / 2**30, 2),
      'hbm_argument_gib': step.get('argument_gib'), 'hbm_temp_gib': step.get('temp_gib'),
      'hbm_output_gib': step.get('output_gib'), 'hbm_alias_gib': step.get('alias_gib'),
      'collectives': step.get('collectives'),
      'collective_instructions': step.get('collective_instructions'),
      'compile_error': step.get('compile_error'), 'compile_s': round(step['compile_s'], 1),
      'wall_s': round(time.time() - start, 1), 'num_chips': report['num_chips'],
      'num_hosts': report['num_hosts'],
      # An eval row's images per step are the eval batch, not the config's batch_size.
      'global_batch': step.get('global_batch', report['global_batch']),
      'num_pairs': report['num_pairs'], 'bank_size': report['bank_size'],
      'crop_size': report['crop_size'], 'config_arg': arg, 'mesh': report['mesh'],
      'recipe': str(config.recipe), 'measured': time.strftime('%Y-%m-%d'), 'code': code_version(),
  }


def run_in_child(r: dict[str, Any], timeout_s: float) -> dict[str, Any]:
  # Compile-only libtpu touches no chip: let it load beside another libtpu process (its
  # lockfile otherwise allows one per machine, e.g. no CI check while the table runs).
  # (libtpu's own flags: the child's import of ctt_jax.tpu_compile sets them.)
  env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD='1')
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--one', json.dumps(r)],
                        capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode or not lines:
    raise RuntimeError(f'row {row_key(r)} failed: the compile process '
                       f'{how_it_ended(proc.returncode)}. Its last output:\n'
                       f'{proc.stderr[-2000:]}')
  return json.loads(lines[-1])


def how_it_ended(returncode: int) -> str:
  """What a child's return code says, as the end of a sentence."""
  if returncode == -signal.SIGKILL:
    # A CTT ResNet-101 compile for v6e:2x4 reached 22.5 GB resident before the kernel's
    # OOM killer took it (2026-11-30, 24 GB machine): its stderr shows only libtpu's
    # start-up warnings, so say where to look.
    return ('was killed by SIGKILL, most likely by the kernel\'s OOM killer (see `dmesg`): '
            'the compile needed more host memory than was free; run this row alone or on '
            'a machine with more RAM')
  if returncode < 0:
    return f'was killed by {signal.Signals(-returncode).name}'
  if returncode:
    return f'exited with status {returncode}'
  return 'printed no result line'


# ----------------------------------------------------------------------------------------
# The largest per-chip batch that fits
# ----------------------------------------------------------------------------------------


def linear_estimate(hbm_by_batch: dict[int, float], capacity_gib: float) -> Optional[int]:
  """The largest per-chip batch whose HBM, extrapolated along the line through the two
  smallest compiled batches that fit, is within `capacity_gib`; None with fewer than two.

  Arguments and the bank are the same at every batch; activations and their gradients
  grow with it, so HBM is close to affine in the batch while it is far from the chip's
  capacity. Near capacity the TPU compiler trades FLOPs for memory by itself (Cityscapes
  CTT bf16 on v4-8, 2026-11-30: 27.89 GiB at 15 + 15, 26.18 at 16 + 16, 29.08-29.57 from
  17 to 24 at up to 5% more FLOPs per image), so the line comes from the two smallest
  batches, and callers pass only batches that fit. A guess to compile, not a result.
  """
  if len(hbm_by_batch) < 2:
    return None
  (p0, h0), (p1, h1) = sorted(hbm_by_batch.items())[:2]
  slope = (h1 - h0) / (p1 - p0)
  if not slope > 0:
    return None
  return max(0, math.floor(p1 + (capacity_gib - h1) / slope))


# The largest per-chip batch the search compiles: past it a slice's batch is no longer what
# bounds a run (v5p-8 holds the supervised step at 64 per chip in 40.29 of its 95 GiB).
SEARCH_LIMIT = 64


def next_batch_to_try(fits_by_batch: dict[int, bool], limit: int = SEARCH_LIMIT,
                      estimate: Optional[int] = None) -> Optional[int]:
  """The next per-chip batch to compile, at most `limit`; None when the largest that fits
  is known (or is `limit`).

  With a linear `estimate` not below the largest batch known to fit, try it (kept
  strictly between that batch and the smallest known not to fit); one below it, try the
  next batch (a line that missed by one puts the edge there: Cityscapes CTT float32 on
  v5p-8, 2026-12-01, estimate 29, 30 + 30 at 85.18 of the 85.5 GiB "fits" allows);
  otherwise (no estimate, or the line proved too low) double from the largest that fits
  until a batch does not, then bisect.
  """
  fitting = [p for p, ok in fits_by_batch.items() if ok]
  failing = [p for p, ok in fits_by_batch.items() if not ok]
  low = max(fitting, default=0)
  high = min([p for p in failing if p > low], default=None)
  if (high is not None and high - low <= 1) or low >= limit:
    return None
  if estimate is not None and estimate >= low - 1:
    candidate = max(estimate, low + 1)
    if high is not None:
      candidate = min(candidate, high - 1)
  elif high is None:
    candidate = 1 if low == 0 else 2 * low
  else:
    candidate = (low + high) // 2
  return min(candidate, limit)


def largest_batches(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per base (every key field but the batch) of the train rows of the configs as shipped:
  the largest per-chip batch compiled that fits, its status and the linear estimate.
  Rows with overrides are the `scaling` rows, one batch each by design
  (`scaling_markdown`).

  The status: 'settled' (the next batch was compiled and does not fit), 'search limit'
  (`SEARCH_LIMIT` fits), 'not settled' (a base of `search_rows` the search has not
  finished) or 'not searched' (a base compiled for the table at one or two batches only).
  """
  searched = {base_key(b) for b in search_rows()}
  bases: dict[tuple, list[dict[str, Any]]] = {}
  for r in rows:
    if r['step'] == 'train' and r.get('hbm_gib') is not None and not r['overrides']:
      bases.setdefault(base_key(r), []).append(r)
  out = []
  for group in bases.values():
    fits = {r['per_chip_batch']: bool(r['fits']) for r in group}
    largest = max([p for p, ok in fits.items() if ok], default=0)
    estimate = search_estimate(group[0], rows)
    if fits.get(largest + 1) is False:
      status = 'settled'
    elif largest >= SEARCH_LIMIT:
      status = 'search limit'
    elif base_key(group[0]) in searched:
      status = 'not settled'
    else:
      status = 'not searched'
    out.append({**{f: group[0][f] for f in KEY_FIELDS if f != 'per_chip_batch'},
                'largest_fitting': largest, 'status': status,
                'compiled': sorted(fits), 'linear_estimate': estimate})
  return out


def search_rows() -> list[dict[str, Any]]:
  """The bases whose largest fitting per-chip batch `--rows=search` finds."""
  # The supervised baseline first: one of its compiles takes ~3 minutes, a CTT one 10-20.
  bases = [row(CITYSCAPES, topology, method='supervised', dtype='float32')
           for topology in ('v5e:2x4', 'v4:2x2x1', 'v5p:2x2x1', 'v6e:2x4')]
  # Then what remat buys on the smallest chip (bf16 4 + 4 on v5e-8: 7.39 GiB with it,
  # 11.17 without).
  bases.append(row(CITYSCAPES, 'v5e:2x4', dtype='bfloat16', remat='blocks'))
  # The multi-host slice (4 hosts of 4 chips) in the dtype the paper config needs on v5e
  # for 2 + 2 and more: the same per-chip program as v5e-8 but for the collectives.
  bases.append(row(CITYSCAPES, 'v5e:4x4', dtype='bfloat16'))
  # The config `main.py` is run with on every chip before the VOC ones; within each, v6e
  # last: its ResNet-101 compiles take the most host memory and time (`v6e_rows`).
  for configs in ((CITYSCAPES,), (VOC_AUG, VOC_CLASSIC)):
    for topologies in (('v5e:2x4', 'v4:2x2x1'), ('v5p:2x2x1',), ('v6e:2x4',)):
      for dtype in ('bfloat16', 'float32'):
        for config in configs:
          for topology in topologies:
            bases.append(row(config, topology, dtype=dtype))
  return bases


def program_key(r: dict[str, Any]) -> tuple:
  """A row's key without its slice and batch: the same program on any TPU."""
  return base_key({**r, 'topology': ''})


def search_estimate(base: dict[str, Any], rows: list[dict[str, Any]]) -> Optional[int]:
  """The linear estimate of `base`'s largest batch: the line through its own two smallest
  batches that fit, else, with one, the line through it with the slope of the same
  program on another slice (that slice's two smallest that fit).

  One program's HBM per chip differs by 0.1-7.0% between v4, v5e, v5p, v6e and a
  multi-host v5e slice (the table's programs compiled on several slices, 2026-12-01)
  away from the chip's capacity (near it v4's compiler recomputes: the supervised step at
  64 per chip needs 28.74 GiB on v4-8, 40.29 on v5p-8), so another slice's line is a good
  first guess; the search still compiles the batches that settle it.
  """
  def points(rs):  # the batches that fit (a refused compile reports only temporaries)
    return {r['per_chip_batch']: r['hbm_gib'] for r in rs
            if r.get('hbm_gib') is not None and r['fits']}
  from ctt_jax import tpu_compile  # pylint: disable=g-import-not-at-top
  same_base = [r for r in rows if base_key(r) == base_key(base)]
  if not same_base:
    return None
  # What a row may use and still "fit" (tpu_compile.fits keeps a margin of the capacity).
  capacity = same_base[0]['hbm_capacity_gib'] * (1 - tpu_compile.HBM_MARGIN)
  own = points(same_base)
  if len(own) >= 2:
    return linear_estimate(own, capacity)
  rows_by_slice: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    if program_key(r) == program_key(base) and r['topology'] != base['topology']:
      rows_by_slice.setdefault(r['topology'], []).append(r)
  lines = {t: points(rs) for t, rs in rows_by_slice.items()}
  # A slice of the same chip first (v5e 4x4 borrows from v5e 2x4: the compiler of each
  # chip lays out the program its own way), then the one with the most batches.
  def same_chip_then_most_batches(topology):
    same_chip = (tpu_compile.parse_topology(topology).generation ==
                 tpu_compile.parse_topology(base['topology']).generation)
    return same_chip, len(lines[topology])
  others = [lines[t] for t in sorted(lines, key=same_chip_then_most_batches, reverse=True)
            if len(lines[t]) >= 2]
  if not own or not others:
    return None
  # The other slice's slope (its two smallest batches) through this slice's own batch.
  (p0, h0), (p1, h1) = sorted(others[0].items())[:2]
  (batch, hbm), = own.items()
  return linear_estimate({batch: hbm, batch + 1: hbm + (h1 - h0) / (p1 - p0)}, capacity)


def search(base: dict[str, Any], path: str, timeout_s: float):
  """Compiles per-chip batches of `base` until the largest that fits is known: the
  linear estimate first (`search_estimate`), else doubling."""
  while True:
    rows = load_rows(path)
    done = [r for r in rows if base_key(r) == base_key(base)]
    fits_by_batch = {r['per_chip_batch']: r['fits'] for r in done}
    batch = next_batch_to_try(fits_by_batch, estimate=search_estimate(base, rows))
    if batch is None:
      return max([p for p, ok in fits_by_batch.items() if ok], default=0)
    append_row(path, run_and_log({**base, 'per_chip_batch': batch}, timeout_s))


def run_and_log(r: dict[str, Any], timeout_s: float) -> dict[str, Any]:
  print(f'compiling {row_key(r)} ...', flush=True)
  result = run_in_child(r, timeout_s)
  print(f"  {result['hbm_gib']:.2f} GiB of {result['hbm_capacity_gib']} "
        f"({'fits' if result['fits'] else 'does NOT fit'}), "
        f"{result['tflop_per_chip_step']} TFLOP, roofline {result['roofline_s']} s "
        f"({result['bound']}), {result['compile_s']} s to compile", flush=True)
  return result


COLLECTIVE_ABBREVIATIONS = (('all-gather', 'ag'), ('all-reduce', 'ar'),
                            ('reduce-scatter', 'rs'), ('all-to-all', 'a2a'),
                            ('collective-permute', 'cp'))


def collectives_cell(collectives: Optional[dict[str, int]]) -> str:
  """'2 ag, 13 ar, 3 a2a, 37 cp': the step's collective operations by kind, zeros left out."""
  if not collectives:
    return '-'
  cells = [f'{collectives[kind]} {short}' for kind, short in COLLECTIVE_ABBREVIATIONS
           if collectives.get(kind)]
  return ', '.join(cells) or 'none'


def per_chip_cell(r: dict[str, Any]) -> str:
  """The images per chip: '2 + 2' (labeled + unlabeled) for a semi-supervised train row."""
  p = r['per_chip_batch']
  if p == 0:  # the config's batch over data x space: '2/8 + 2/8 (2x4)'
    mesh = f"{r['mesh']['data']}x{r['mesh']['space']}"
    if r['step'] == 'eval':
      return f"1/{r['num_chips']} image ({mesh})"
    share = f"{r['global_batch']}/{r['num_chips']}"
    return f'{share} ({mesh})' if r['method'] == 'supervised' else f'{share} + {share} ({mesh})'
  if r['step'] == 'eval':
    return f'{p} image' if p == 1 else f'{p} images'
  return str(p) if r['method'] == 'supervised' else f'{p} + {p}'


def markdown(rows: list[dict[str, Any]]) -> str:
  """Every row as one markdown table, one line per compiled row, in file order."""
  head = ('| slice | config | method | dtype | remat | per chip | extra | step '
          '| HBM GiB / chip (args + temps) | fits | TFLOP / chip-step '
          '| GiB moved / chip-step | roofline s | bound | collectives |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for r in rows:
    cells = [r['topology'], r['config'].replace('configs/', ''), r['method'], r['dtype'],
             r['remat'] or '-', per_chip_cell(r), r['overrides'] or '-', r['step'],
             f"{hbm_cell(r)} of {r['hbm_capacity_gib']:g}",
             'yes' if r['fits'] else 'NO',
             '-' if r['tflop_per_chip_step'] is None else f"{r['tflop_per_chip_step']:.2f}",
             '-' if r.get('gib_accessed_per_chip_step') is None
             else f"{r['gib_accessed_per_chip_step']:.1f}",
             '-' if r['roofline_s'] is None else f"{r['roofline_s']:.3f}",
             r['bound'] or '-', collectives_cell(r.get('collectives'))]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def hbm_cell(r: dict[str, Any]) -> str:
  """'6.86 (1.46 + 4.93)': HBM per chip, with arguments + temporaries where reported."""
  hbm = f"{r['hbm_gib']:.2f}"
  if r.get('hbm_argument_gib') is not None and r.get('hbm_temp_gib') is not None:
    hbm += f" ({r['hbm_argument_gib']:.2f} + {r['hbm_temp_gib']:.2f})"
  return hbm


# The field in which a compiled row records each scaling axis's value.
RECORDED_AXES = {'num_pairs': 'num_pairs', 'bank_size': 'bank_size',
                 'data.crop_size': 'crop_size'}


def _axis_text(value) -> str:
  return 'x'.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def scaling_base(rows: list[dict[str, Any]]) -> Optional[dict[str, str]]:
  """{axis: value} recorded by the scaling program compiled without overrides (the config
  as it was then), None if it was not compiled or recorded no values."""
  base = find(rows, scaling_row(''))
  if base is None or not all(base.get(f) is not None for f in RECORDED_AXES.values()):
    return None
  return {axis: _axis_text(base[f]) for axis, f in RECORDED_AXES.items()}


def find_scaling(rows: list[dict[str, Any]], axis: str, value: str,
                 overrides: str) -> Optional[dict[str, Any]]:
  """The compiled scaling row at `value` of `axis`, the other axes at `scaling_base`.

  Rows are matched by the values they recorded, not by their overrides: the config's own
  values may have changed since they were compiled (the no-override row of then is not the
  one of now). Without a recorded base, by the overrides of `scaling_points`.
  """
  base = scaling_base(rows)
  if base is None:
    return find(rows, scaling_row(overrides))
  wanted = {**base, axis: value}
  program = row_key(scaling_row(''))
  for r in rows:
    if row_key({**r, 'overrides': ''}) == program and all(
        _axis_text(r.get(RECORDED_AXES[a])) == v for a, v in wanted.items()):
      return r
  return None


def scaling_markdown(rows: list[dict[str, Any]]) -> str:
  """The `scaling` rows as their own table: one axis varied at a time from the config."""
  head = ('| varied | value | HBM GiB / chip (args + temps) | TFLOP / chip-step '
          '| GiB moved / chip-step | roofline s | collectives |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for axis, value, overrides in scaling_points():
    r = find_scaling(rows, axis, value, overrides)
    if r is None or r.get('hbm_gib') is None:
      cells = [axis, value, 'not compiled yet', '-', '-', '-', '-']
    else:
      cells = [axis, value, hbm_cell(r), f"{r['tflop_per_chip_step']:.2f}",
               f"{r['gib_accessed_per_chip_step']:.1f}", f"{r['roofline_s']:.3f}",
               collectives_cell(r.get('collectives'))]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def largest_batch_markdown(rows: list[dict[str, Any]]) -> str:
  """The largest per-chip batch that fits, per slice, config, method, dtype and remat."""
  head = ('| slice | config | method | dtype | remat | largest per-chip batch that '
          'fits | batches compiled | linear estimate |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for b in largest_batches(rows):
    largest = (f"{b['largest_fitting']}" if b['status'] == 'settled'
               else f">= {b['largest_fitting']} ({b['status']})")
    cells = [b['topology'], b['config'].replace('configs/', ''), b['method'], b['dtype'],
             b['remat'] or '-', largest,
             ', '.join(map(str, b['compiled'])),
             '-' if b['linear_estimate'] is None else str(b['linear_estimate'])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------------------
# The page: docs/results/tpu.md
# ----------------------------------------------------------------------------------------

RENDER_COMMAND = 'python tools/tpu_compile_table.py --render'
SLICE_ORDER = SINGLE_HOST + (MULTI_HOST,)
PROGRAM_ORDER = {'config': (CITYSCAPES, VOC_AUG, VOC_CLASSIC), 'method': ('ctt', 'supervised'),
                 'dtype': ('bfloat16', 'float32'), 'remat': ('', 'blocks')}


def _ranked(value, known) -> tuple:
  """Sort key: the values of `known` in its order, any other after them, by name."""
  return (known.index(value), '') if value in known else (len(known), str(value))


def _table(head: list[str], lines: list[list[str]]) -> list[str]:
  return (['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)] +
          ['| ' + ' | '.join(cells) + ' |' for cells in lines])


def largest_batch_cell(b: Optional[dict[str, Any]]) -> str:
  """'5' where the next batch was compiled and does not fit, '>= 2 (not searched)' where
  the largest that fits is not settled, '-' where nothing was compiled."""
  if b is None:
    return '-'
  if b['status'] == 'settled':
    return str(b['largest_fitting'])
  return f">= {b['largest_fitting']} ({'limit' if b['status'] == 'search limit' else b['status']})"


def largest_batch_grid(rows: list[dict[str, Any]]) -> list[str]:
  """`largest_batches` as one line per config, method, dtype and remat, one column per
  slice."""
  found = largest_batches(rows)
  slices = sorted({b['topology'] for b in found}, key=lambda t: _ranked(t, SLICE_ORDER))
  programs: dict[tuple, dict[str, dict[str, Any]]] = {}
  for b in found:
    key = tuple(b[f] for f in PROGRAM_ORDER)
    programs.setdefault(key, {})[b['topology']] = b
  keys = sorted(programs, key=lambda k: tuple(
      _ranked(v, known) for v, known in zip(k, PROGRAM_ORDER.values())))
  lines = [[config.replace('configs/', ''), method, dtype, remat or '-'] +
           [largest_batch_cell(programs[(config, method, dtype, remat)].get(t))
            for t in slices] for config, method, dtype, remat in keys]
  return _table(['config', 'method', 'dtype', 'remat', *slices], lines)


def layout_cell(r: dict[str, Any]) -> str:
  """'as written: data 2 x space 4' (a `mesh` row) or 'data parallel: data 8'."""
  if r['per_chip_batch'] == 0:
    return f"as written: data {r['mesh']['data']} x space {r['mesh']['space']}"
  return f"data parallel: data {r['num_chips']}"


def images_cell(r: dict[str, Any]) -> str:
  """The images of one step on the whole slice: '2 + 2' (labeled + unlabeled) or '8'."""
  g = r['global_batch']
  if r['step'] == 'eval' or r['method'] == 'supervised':
    return str(g)
  return f'{g} + {g}'


def mesh_comparison(rows: list[dict[str, Any]]) -> list[str]:
  """Each `mesh` row (the paper's batch over data x space) above the data-parallel row of
  the same program and slice it is compared with (`data_parallel_row`)."""
  head = ['slice', 'step', 'layout', 'recipe', 'images / step', 'per chip',
          'HBM GiB / chip (args + temps)', 'TFLOP / chip-step', 'GiB moved / chip-step',
          'collectives', 'roofline s', 'bound']
  lines = []
  for as_written in (r for r in mesh_rows() if r['per_chip_batch'] == 0):
    for wanted in (as_written, data_parallel_row(as_written)):
      r = find(rows, wanted)
      if r is None or r.get('hbm_gib') is None:
        what = ('as written' if wanted['per_chip_batch'] == 0 else
                f"data parallel, {per_chip_cell(wanted)} per chip")
        lines.append([wanted['topology'], wanted['step'], what, '-', '-', '-',
                      'not compiled yet', '-', '-', '-', '-', '-'])
        continue
      hbm = f"{hbm_cell(r)} of {r['hbm_capacity_gib']:g}" + ('' if r['fits'] else ', NO fit')
      lines.append([
          r['topology'], r['step'], layout_cell(r), r.get('recipe', 'paper'), images_cell(r),
          per_chip_cell(r), hbm,
          '-' if r['tflop_per_chip_step'] is None else f"{r['tflop_per_chip_step']:.2f}",
          '-' if r.get('gib_accessed_per_chip_step') is None
          else f"{r['gib_accessed_per_chip_step']:.1f}",
          collectives_cell(r.get('collectives')),
          '-' if r['roofline_s'] is None else f"{r['roofline_s']:.3f}", r['bound'] or '-'])
  return _table(head, lines)


def render_page(rows: list[dict[str, Any]], source: str, command: str = RENDER_COMMAND) -> str:
  """docs/results/tpu.md: the header, the largest batches, the scaling rows and the mesh
  rows beside their data-parallel rows, from `rows` (read from `source`)."""
  from ctt_jax import tpu_compile  # pylint: disable=g-import-not-at-top
  dates = sorted(r['measured'] for r in rows if r.get('measured'))
  when = f', compiled {dates[0]} to {dates[-1]}' if dates else ''
  fits = f'{100 * (1 - tpu_compile.HBM_MARGIN):g}%'
  lines = [
      '# TPU compile table', '',
      f'Generated by `{command}` from `{source}` ({len(rows)} rows{when}); do not edit it '
      'by hand.', '',
      'Every row is a train or eval step compiled for a Cloud TPU slice by its own compiler '
      'on a machine without a TPU; the JSON keeps every row, with the commit it was '
      'compiled from (`code`). A per-chip batch p is p labeled + p unlabeled images per '
      f'chip (p for the supervised step). "Fits": at most {fits} of the chip\'s HBM. '
      'Collectives: ag all-gather, ar all-reduce, rs reduce-scatter, a2a all-to-all, '
      'cp collective-permute.', '',
      '## Largest per-chip batch that fits', '',
      'A number: that batch fits and the next one, compiled too, does not. ">= p": p fits '
      'and the edge is not settled: "limit" where the search stops (64 per chip), "not '
      'settled" where it has not finished, "not searched" for the programs it does not '
      'take up.', '']
  lines += largest_batch_grid(rows)
  base = scaling_base(rows)
  compiled_from = ('' if base is None else ' as compiled (' + ', '.join(
      f'{axis} {value}' for axis, value in base.items()) + ')')
  lines += ['', '## How the step\'s cost grows', '',
            'Cityscapes CTT on v5e-8, bfloat16, 1 + 1 per chip: one of num_pairs, bank_size '
            f'and the crop varied at a time from the config{compiled_from}.', '']
  lines += scaling_markdown(rows).split('\n')
  lines += ['', '## The paper\'s batch over data x space, against data parallelism', '',
            f'`{CITYSCAPES}` as written (2 + 2 images per step, float32) laid out over the '
            'slice by the mesh rule (`--rows=mesh`), each above the same config data '
            f'parallel at batch_size={DATA_PARALLEL_BATCH} (eval: one image per chip). '
            '`recipe` is the reading the row was compiled with: the config defaults to '
            '`authors` (batch-norm trained, teachers in train mode, banks of 256), rows '
            'compiled before that default are `paper`; compare rows of one recipe.', '']
  lines += mesh_comparison(rows)
  return '\n'.join(lines) + '\n'


def write_page(path: str, text: str):
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


def selection(configs: str, topologies: str):
  """The predicate of `--configs` and `--topologies` (an empty flag keeps every row)."""
  config_parts = [c for c in configs.split(',') if c]
  topology_names = [t for t in topologies.split(',') if t]
  def wanted(r: dict[str, Any]) -> bool:
    return ((not config_parts or any(c in r['config'] for c in config_parts)) and
            (not topology_names or r['topology'] in topology_names))
  return wanted


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rows', default='main',
                      help='main, slopes, scaling, search, v6e, mesh, demo; comma-separated, '
                      'run in that order')
  parser.add_argument('--output', default=DEFAULT_OUTPUT)
  parser.add_argument('--configs', default='',
                      help='comma-separated substrings of the config path; only their rows')
  parser.add_argument('--topologies', default='',
                      help='comma-separated slices, e.g. v5e:2x4,v4:2x2x1; only their rows')
  parser.add_argument('--timeout_s', type=float, default=3 * 3600,
                      help='per row (a loaded 2-core machine took over an hour)')
  parser.add_argument('--render', action='store_true',
                      help='write the page of --page from the rows of --output and exit')
  parser.add_argument('--page', default=DEFAULT_PAGE, help='where --render writes')
  parser.add_argument('--markdown', action='store_true',
                      help='print the rows of --output as three tables (every row, the '
                      'largest batches, the scaling rows) and exit')
  parser.add_argument('--one', help=argparse.SUPPRESS)  # child: compile one JSON row
  args = parser.parse_args(argv)
  if args.render:
    source = os.path.relpath(os.path.abspath(args.output), ROOT)
    command = RENDER_COMMAND + ('' if os.path.abspath(args.output) == DEFAULT_OUTPUT
                                else f' --output={source}')
    write_page(args.page, render_page(load_rows(args.output), source, command))
    print(f'wrote {os.path.relpath(os.path.abspath(args.page), ROOT)}')
    return
  if args.markdown:
    print(markdown(load_rows(args.output)))
    print()
    print(largest_batch_markdown(load_rows(args.output)))
    print()
    print(scaling_markdown(load_rows(args.output)))
    return
  if args.one:
    print(json.dumps(compile_row(json.loads(args.one))))
    return
  builders = {'main': main_rows, 'slopes': slope_rows, 'scaling': scaling_rows,
              'v6e': v6e_rows, 'mesh': mesh_rows, 'demo': demo_rows}
  wanted = selection(args.configs, args.topologies)
  for name in args.rows.split(','):
    if name == 'search':
      for base in filter(wanted, search_rows()):
        largest = search(base, args.output, args.timeout_s)
        print(f'largest per-chip batch that fits: {largest} for {row_key(base)}', flush=True)
      continue
    if name not in builders:
      raise SystemExit(f'Unknown row set {name!r}; use one of: '
                       f"{', '.join(['search', *builders])}.")
    for r in pending(filter(wanted, builders[name]()), load_rows(args.output)):
      try:
        append_row(args.output, run_and_log(r, args.timeout_s))
      except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f'  failed, left for the next run: {e}', flush=True)


if __name__ == '__main__':
  main()
