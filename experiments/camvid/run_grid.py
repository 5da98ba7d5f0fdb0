"""The CamVid grid: labeled subsets x methods (+ training seeds), resumable.

    python experiments/camvid/run_grid.py --workdir=workdirs/camvid_grid --max_minutes=170

Every run trains configs/camvid.py:1_8 plus its method's overrides (METHODS below) in its
own process and workdir, `<workdir>/p{partition_seed}_s{seed}/{method}`, and is scored on
teacher_0 (the same network for every method, fixed in advance). The grid is the labeled
subsets (`data.partition_seed`, --partition_seeds) x the methods with the base training
seed, plus the other training seeds (--seeds) on one subset (--seed_study_partition) for
--seed_study_methods, so the seed-to-seed spread of a paired difference can be told apart
from the subset-to-subset one.

Order (RUN_ORDER_NOTE): supervised and ctt of every subset first, because the main claim
(mean(ctt - supervised) over subsets, no subset below 0) needs exactly those 2 x 3 runs;
then mean_teacher on every subset (the second claim, ctt - mean_teacher); then supervised
and ctt with the first other training seed (the noise floor a subset difference must
exceed); then ct_only (the ablation: what the contrastive terms add); then the remaining
training seeds. Within a subset the cheap supervised run goes before ctt.

Rerunning the same command resumes: a run whose eval JSON at total_steps exists is
skipped, a started one resumes from its checkpoints (main.py does that itself), a killed
grid loses at most the steps since the run's last checkpoint. `--max_minutes` stops the
grid cleanly (SIGTERM to the run: main.py checkpoints and stops); SIGTERM/SIGINT to this
script do the same; if this script is SIGKILLed its run gets SIGTERM from the kernel.

After every finished run (and when stopping) it writes, from every run of the grid
directory, finished or not (by default into experiments/camvid/results/; --grid_json,
--grid_md and --grid_plot put them elsewhere):
- grid.json: {"runs": [{"method", "partition_seed", "seed", "steps",
  "miou", ...}]} (miou of teacher_0 in 0..1 at the run's last evaluation; `finished` says
  whether that was total_steps);
- grid.md: every run, the paired differences per subset with their
  mean, std, min, max and n, the training-seed spread, and the final pseudo-label mIoU of
  each teacher when the runs logged `train/pseudo_iou/...` scalars;
- grid_curves.png: teacher_0 val mIoU against step, a panel per subset.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import fcntl
import functools
import glob
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time
from typing import Any, Iterable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(ROOT, 'configs', 'camvid.py')
MAIN = os.path.join(ROOT, 'main.py')
SCRIPT = os.path.relpath(os.path.abspath(__file__), ROOT)  # as the reports quote it
RESULTS = os.path.join(HERE, 'results')  # where the reports go by default


@dataclasses.dataclass(frozen=True)
class Method:
  overrides: str  # config overrides on configs/camvid.py:<split>
  phase: int  # run order on the base training seed (lower first; see RUN_ORDER_NOTE)
  minutes: float  # wall time of one run at 2500 steps on 2 quiet cores (estimates: ~)


# The methods of the grid, in report order. Supervised and mean teacher are single
# networks (the paper's baselines); "mean teacher + ClassMix" of the paper has no
# contrastive terms; ct_only is CTT without HC and LC (Table 4, L_sup + L_ct).
# Minutes: 2500 steps at the speeds of 2026-11-29 when the machine was quiet (supervised
# 4.0 steps/s, ctt 0.79 steps/s, aspp_se head, two passes); the other two are guesses.
METHODS = {
    'supervised': Method('method=supervised,num_pairs=1', 0, 10.4),
    'mean_teacher': Method('method=mean_teacher,num_pairs=1,use_hc=false,use_lc=false', 3,
                           25.0),  # ~, not measured
    # What the authors' released scripts train (README, "How we read the paper"): it runs
    # right after the main claim.
    'ct_only': Method('method=ctt,use_hc=false,use_lc=false', 1, 45.0),  # ~, not measured
    'ctt': Method('method=ctt', 0, 52.7),
}
SEED_STUDY_PHASE = 2  # the first extra training seed; later ones follow mean_teacher
RUN_ORDER_NOTE = ('supervised + ctt on every subset (the main claim), ct_only on every subset '
                  '(the ablation, and what the authors\' released code trains), supervised + '
                  'ctt with the first other training seed (the noise floor), mean_teacher on '
                  'every subset, the other training seeds')
# Every method is scored by the same network, fixed in advance (no pick of the best of
# several networks, which would favour methods with more of them).
REPORTED_NETWORK = 'teacher_0'
# Keys the grid sets itself: --overrides may not set them.
GRID_KEYS = ('method', 'seed', 'data.partition_seed', 'recipe')
META_FILE = 'grid_run.json'  # per run: its config argument, wall-time segments, failures
LOG_FILE = 'main.log'
MAX_FAILURES = 2  # a run that failed this often is skipped unless --retry_failed


# The reading of the method a run trains (configs/common.py RECIPES): CamVid's default is
# 'paper'; runs of another recipe live in a subdirectory of that name and are never pooled
# with the others in a table.
DEFAULT_RECIPE = 'paper'


@dataclasses.dataclass(frozen=True)
class Run:
  method: str
  partition_seed: int
  seed: int
  recipe: str = DEFAULT_RECIPE

  @property
  def name(self) -> str:
    prefix = '' if self.recipe == DEFAULT_RECIPE else f'{self.recipe}/'
    return f'{prefix}p{self.partition_seed}_s{self.seed}/{self.method}'

  def workdir(self, grid_dir: str) -> str:
    return os.path.join(grid_dir, *self.name.split('/'))

  def config_arg(self, split: str, overrides: str = '') -> str:
    recipe = '' if self.recipe == DEFAULT_RECIPE else f'recipe={self.recipe}'
    fields = [split, recipe, METHODS[self.method].overrides,
              f'data.partition_seed={self.partition_seed}', f'seed={self.seed}', overrides]
    return ','.join(f for f in fields if f)


def recipe_of(record: dict) -> str:
  """A grid.json record's recipe (records written before runs had one: from its config)."""
  if record.get('recipe'):
    return record['recipe']
  match = re.search(r'(?:^|,)recipe=([a-z_]+)', record.get('config') or '')
  return match.group(1) if match else DEFAULT_RECIPE


def record_key(record: dict) -> tuple:
  return (recipe_of(record), record['method'], record['partition_seed'], record['seed'])


# ----------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------


def plan_grid(methods: Iterable[str], partition_seeds: Iterable[int], seeds: Iterable[int],
              base_seed: int = 0, seed_study_partition: int = 0,
              seed_study_methods: Iterable[str] = ('supervised', 'ctt'),
              recipe: str = DEFAULT_RECIPE) -> list[Run]:
  """The runs of the grid, most informative first (see RUN_ORDER_NOTE).

  Base seed: every method on every subset. Other seeds: `seed_study_methods` on
  `seed_study_partition` (only if that subset and the method are selected), or on every
  subset with seed_study_partition=-1, where the runs go seed by seed and subset by subset
  so that each (subset, seed) pair of methods finishes before the next starts.
  """
  if seed_study_partition == -1:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
      raise ValueError(f'Unknown method(s) {unknown}; valid: {", ".join(METHODS)}.')
    cheap_first = sorted(methods, key=lambda m: METHODS[m].minutes)
    return [Run(m, p, s, recipe) for s in seeds for p in partition_seeds
            for m in cheap_first]
  methods, partition_seeds, seeds = list(methods), list(partition_seeds), list(seeds)
  unknown = [m for m in list(methods) + list(seed_study_methods) if m not in METHODS]
  if unknown:
    raise ValueError(f'Unknown method(s) {unknown}; valid: {", ".join(METHODS)}.')
  extra_seeds = [s for s in seeds if s != base_seed]
  runs = []
  for p in partition_seeds:
    for m in methods:
      if base_seed in seeds:
        runs.append(Run(m, p, base_seed))
      if p == seed_study_partition and m in seed_study_methods:
        runs += [Run(m, p, s) for s in extra_seeds]
  method_rank = {m: i for i, m in enumerate(('supervised', 'ctt', 'mean_teacher', 'ct_only'))}

  def key(run: Run):
    if run.seed == base_seed:
      phase = METHODS[run.method].phase
    else:
      k = extra_seeds.index(run.seed)
      # The first other seed comes at the seed-study phase, but never before the method's
      # own base-seed run.
      phase = (max(SEED_STUDY_PHASE, METHODS[run.method].phase) if k == 0
               else max(m.phase for m in METHODS.values()) + k)
    return (phase, run.seed, partition_seeds.index(run.partition_seed),
            method_rank.get(run.method, len(method_rank)))

  return sorted(dict.fromkeys(runs), key=key)


def check_overrides(overrides: str) -> None:
  for field in overrides.split(','):
    key = field.partition('=')[0].strip()
    if key in GRID_KEYS:
      raise ValueError(f'--overrides sets {key!r}, which the grid sets per run: use '
                       '--methods, --partition_seeds or --seeds instead.')


@functools.lru_cache(maxsize=None)
def _load_config(config_arg: str):
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  from configs import camvid  # pylint: disable=g-import-not-at-top
  return camvid.get_config(config_arg)


def total_steps_of(config_arg: str) -> int:
  """total_steps of configs/camvid.py:<config_arg> (an unknown key fails here, early)."""
  return int(_load_config(config_arg).total_steps)


def estimate_minutes(run: Run, total_steps: int) -> float:
  return METHODS[run.method].minutes * total_steps / 2500


# ----------------------------------------------------------------------------------------
# The state of a run, read from its workdir
# ----------------------------------------------------------------------------------------


def read_curve(workdir: str) -> list[tuple[int, dict]]:
  """[(step, eval results)] from the run's eval/step_*.json files (unreadable ones, e.g.
  a file being replaced, are left out)."""
  curve = []
  for path in sorted(glob.glob(os.path.join(workdir, 'eval', 'step_*.json'))):
    try:
      step = int(os.path.basename(path)[len('step_'):-len('.json')])
      with open(path) as f:
        curve.append((step, json.load(f)))
    except (ValueError, OSError):
      continue
  return curve


def final_eval(workdir: str, total_steps: int) -> Optional[dict]:
  """The eval JSON at total_steps if it exists and names the reported network: the run
  is finished (the process's exit code does not matter)."""
  path = os.path.join(workdir, 'eval', f'step_{total_steps:08d}.json')
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  return results if REPORTED_NETWORK in results else None


def latest_checkpoint(workdir: str) -> Optional[int]:
  steps = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
           if d.isdigit()] if os.path.isdir(os.path.join(workdir, 'checkpoints')) else []
  return max(steps) if steps else None


def read_meta(workdir: str) -> dict:
  try:
    with open(os.path.join(workdir, META_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def write_json_atomic(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def run_status(workdir: str, total_steps: int) -> str:
  """finished | failed (>= MAX_FAILURES failed attempts) | partial | pending."""
  if final_eval(workdir, total_steps) is not None:
    return 'finished'
  if read_meta(workdir).get('failures', 0) >= MAX_FAILURES:
    return 'failed'
  if latest_checkpoint(workdir) is not None or read_curve(workdir):
    return 'partial'
  return 'pending'


def _last_activity(workdir: str) -> float:
  latest = 0.0
  for dirpath, _, files in os.walk(workdir):
    for f in files:
      if f in (META_FILE, '.grid_run.lock'):
        continue
      try:
        latest = max(latest, os.path.getmtime(os.path.join(dirpath, f)))
      except OSError:
        pass
  return latest


def wall_minutes(workdir: str, meta: Optional[dict] = None) -> Optional[float]:
  """Summed wall time of the run's segments (processes). A segment without an end (the
  grid was SIGKILLed) ends at the last file the run wrote."""
  meta = read_meta(workdir) if meta is None else meta
  segments = meta.get('segments', [])
  if not segments:
    return None
  total = 0.0
  for seg in segments:
    end = seg.get('end') or max(seg['start'], _last_activity(workdir))
    total += max(0.0, end - seg['start'])
  return total / 60


# ----------------------------------------------------------------------------------------
# Pseudo-label diagnostic: TensorBoard scalars train/pseudo_iou/<teacher>/<class>
# ----------------------------------------------------------------------------------------

PSEUDO_PREFIX = 'train/pseudo_iou/'


def _records(path: str):
  """The records of a TFRecord (event) file; stops quietly at a truncated tail."""
  with open(path, 'rb') as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack('<Q', header[:8])
      data = f.read(length)
      if len(f.read(4)) < 4 or len(data) < length:
        return
      yield data


def _scalar(value) -> Optional[float]:
  if value.HasField('simple_value'):
    return float(value.simple_value)
  if value.HasField('tensor'):
    from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
    array = tensor_util.make_ndarray(value.tensor)
    return float(array) if array.size == 1 else None
  return None


def read_scalars(workdir: str, prefix: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of the scalars under `prefix` in the workdir's event files
  (without TensorFlow). Later writes of a step (after a resume) replace earlier ones."""
  try:
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  values = collections.defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(workdir, '**', 'events.out.tfevents.*'),
                               recursive=True)):
    for record in _records(path):
      event = event_pb2.Event()
      try:
        event.ParseFromString(record)
      except Exception:  # pylint: disable=broad-except
        continue
      for value in event.summary.value:
        if value.tag.startswith(prefix):
          v = _scalar(value)
          if v is not None:
            values[value.tag][int(event.step)] = v
  return {tag: sorted(steps.items()) for tag, steps in values.items()}


def read_pseudo_iou(workdir: str) -> dict[str, dict]:
  """{teacher: {'step', 'miou', 'per_class'}} at the last logged step, from tags
  `train/pseudo_iou/<teacher>/<class>` (a `miou` tag is used as is, otherwise the mean of
  the finite per-class values); {} when the run logged none."""
  groups = collections.defaultdict(dict)
  for tag, series in read_scalars(workdir, PSEUDO_PREFIX).items():
    rest = tag[len(PSEUDO_PREFIX):]
    network, _, key = rest.rpartition('/')
    if not network:
      match = re.match(r'((?:teacher|student)_\d+)_(.+)$', rest)
      network, key = (match.group(1), match.group(2)) if match else ('all', rest)
    groups[network][key] = series[-1]
  out = {}
  for network, entries in sorted(groups.items()):
    step = max(s for s, _ in entries.values())
    per_class = {k: v for k, (s, v) in entries.items() if s == step and k not in
                 ('miou', 'mean')}
    if 'miou' in entries and entries['miou'][0] == step:
      miou = entries['miou'][1]
    else:
      finite = [v for v in per_class.values() if math.isfinite(v)]
      miou = sum(finite) / len(finite) if finite else None
    out[network] = {'step': step, 'miou': miou, 'per_class': per_class}
  return out


# ----------------------------------------------------------------------------------------
# Running one run (the one code path for a method)
# ----------------------------------------------------------------------------------------


class _Stop:
  """SIGTERM/SIGINT/SIGHUP to the grid: stop the current run cleanly, start no other."""
  reason: Optional[str] = None
  child: Optional[subprocess.Popen] = None

  SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

  @classmethod
  def install(cls) -> dict:
    cls.reason, cls.child = None, None
    return {sig: signal.signal(sig, cls._handle) for sig in cls.SIGNALS}

  @classmethod
  def restore(cls, previous: dict) -> None:
    for sig, handler in previous.items():
      signal.signal(sig, handler)

  @classmethod
  def _handle(cls, signum, frame):  # pylint: disable=unused-argument
    cls.reason = signal.Signals(signum).name
    print(f'\n{cls.reason} received: stopping the current run with a checkpoint.',
          flush=True)
    if cls.child is not None and cls.child.poll() is None:
      cls.child.send_signal(signal.SIGTERM)


def _die_with_parent():
  """In the child: SIGTERM when the grid process dies (even by SIGKILL), so an orphaned
  run checkpoints and stops instead of racing the next grid on its workdir."""
  try:
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except OSError:
    pass


def _lock(path: str, wait_seconds: float) -> Optional[int]:
  """An exclusive flock on `path` (an fd), waiting up to wait_seconds; None if held."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  deadline = time.time() + wait_seconds
  while True:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return fd
    except BlockingIOError:
      if time.time() >= deadline:
        os.close(fd)
        return None
      time.sleep(5)


def run_one(run: Run, grid_dir: str, config_arg: str, total_steps: int, *,
            deadline: Optional[float], term_grace: float = 300,
            lock_wait: float = 900) -> str:
  """Trains `run` until total_steps (resuming from its checkpoints) or until the grid
  stops. Returns finished | stopped | failed | busy (another process holds its workdir)."""
  workdir = run.workdir(grid_dir)
  os.makedirs(workdir, exist_ok=True)
  # The lock is passed to main.py, so it is held as long as the training process lives
  # (e.g. an orphan of a killed grid still writing its last checkpoint).
  lock_fd = _lock(os.path.join(workdir, '.grid_run.lock'), lock_wait)
  if lock_fd is None:
    print(f'{run.name}: another process holds {workdir}/.grid_run.lock; skipped.', flush=True)
    return 'busy'
  try:
    meta = read_meta(workdir)
    meta['config_arg'] = config_arg
    for seg in meta.get('segments', []):
      if seg.get('end') is None:  # the grid was SIGKILLed during that segment
        seg.update(end=max(seg['start'], _last_activity(workdir)), outcome='killed')
    segment = {'start': time.time(), 'end': None, 'from_checkpoint': latest_checkpoint(workdir)}
    meta.setdefault('segments', []).append(segment)
    write_json_atomic(os.path.join(workdir, META_FILE), meta)
    cmd = [sys.executable, MAIN, f'--config={CONFIG}:{config_arg}',
           f'--workdir={workdir}']
    print(f'{run.name}: ' + ('resuming from step '
                             f'{segment["from_checkpoint"]}' if segment['from_checkpoint']
                             else 'starting') + f'; log {os.path.join(workdir, LOG_FILE)}',
          flush=True)
    print('$ ' + ' '.join(cmd), flush=True)
    with open(os.path.join(workdir, LOG_FILE), 'a') as log:
      log.write(f'\n===== {time.strftime("%Y-%m-%d %H:%M:%S")} $ {" ".join(cmd)}\n')
      log.flush()
      proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, preexec_fn=_die_with_parent,
                              pass_fds=(lock_fd,))
      _Stop.child = proc
      termed_at = None
      while True:
        try:
          proc.wait(timeout=2)
          break
        except subprocess.TimeoutExpired:
          pass
        if termed_at is None and (_Stop.reason or (deadline and time.time() >= deadline)):
          if not _Stop.reason:
            _Stop.reason = 'max_minutes'
            print(f'{run.name}: time limit reached, stopping it with a checkpoint.',
                  flush=True)
          proc.send_signal(signal.SIGTERM)  # (again, if the handler did: harmless)
          termed_at = time.time()
        if termed_at is not None and time.time() - termed_at > term_grace:
          print(f'{run.name}: no exit {term_grace:.0f} s after SIGTERM; killing it.',
                flush=True)
          proc.kill()
          termed_at = math.inf
      _Stop.child = None
    segment['end'] = time.time()
    segment['returncode'] = proc.returncode
    if final_eval(workdir, total_steps) is not None:
      outcome = 'finished'
    elif _Stop.reason:
      outcome = 'stopped'
    else:
      outcome = 'failed'
      meta['failures'] = meta.get('failures', 0) + 1
    segment['outcome'] = outcome
    write_json_atomic(os.path.join(workdir, META_FILE), meta)
  finally:
    os.close(lock_fd)
  if outcome == 'failed':
    print(f'{run.name}: main.py exited with {proc.returncode} before step {total_steps} '
          f'(failure {meta["failures"]} of {MAX_FAILURES}); the log ends with:', flush=True)
    with open(os.path.join(workdir, LOG_FILE), errors='replace') as f:
      print(''.join(f.readlines()[-15:]), flush=True)
  return outcome


# ----------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------

_RUN_DIR = re.compile(r'p(\d+)_s(\d+)$')


def discover_runs(grid_dir: str) -> list[Run]:
  """Runs with a workdir in the grid directory (also those of other selections)."""
  runs = []
  for path in sorted(glob.glob(os.path.join(grid_dir, 'p*_s*', '*'))):
    match = _RUN_DIR.match(os.path.basename(os.path.dirname(path)))
    method = os.path.basename(path)
    if match and method in METHODS and os.path.isdir(path):
      runs.append(Run(method, int(match.group(1)), int(match.group(2))))
  for path in sorted(glob.glob(os.path.join(grid_dir, '*', 'p*_s*', '*'))):
    match = _RUN_DIR.match(os.path.basename(os.path.dirname(path)))
    method, recipe = os.path.basename(path), path.split(os.sep)[-3]
    if match and method in METHODS and os.path.isdir(path):
      runs.append(Run(method, int(match.group(1)), int(match.group(2)), recipe))
  return runs


def collect(grid_dir: str, planned: list[Run], config_arg_of, total_steps_of_arg=None
            ) -> list[dict]:
  """One record per run of `planned` and of the grid directory: the grid.json entries.

  config_arg_of(run) -> the config argument the grid would use; a run's own recorded one
  (grid_run.json) wins. total_steps_of_arg(config_arg) -> total_steps.
  """
  total_steps_of_arg = total_steps_of_arg or total_steps_of
  records = []
  for run in list(dict.fromkeys(planned + discover_runs(grid_dir))):
    workdir = run.workdir(grid_dir)
    meta = read_meta(workdir)
    config_arg = meta.get('config_arg') or config_arg_of(run)
    total = total_steps_of_arg(config_arg)
    curve = read_curve(workdir)
    record = {'method': run.method, 'partition_seed': run.partition_seed, 'seed': run.seed,
              'recipe': run.recipe, 'steps': None, 'miou': None, 'finished': False,
              'status': run_status(workdir, total), 'total_steps': total,
              'network': REPORTED_NETWORK, 'workdir': os.path.relpath(workdir, grid_dir),
              'config': config_arg, 'wall_minutes': wall_minutes(workdir, meta)}
    if curve:
      step, last = curve[-1]
      entry = last[REPORTED_NETWORK]
      record.update(
          steps=step, miou=entry['miou'], finished=record['status'] == 'finished',
          per_class_iou=entry['per_class_iou'],
          best_network=last.get('best'),
          best_miou=last[last['best']]['miou'] if last.get('best') in last else None,
          # Every network's mIoU at that evaluation (students and teachers), so a gap
          # between a method's networks is in the record, not only in the run's log.
          network_miou={name: v['miou'] for name, v in last.items()
                        if isinstance(v, dict) and 'miou' in v},
          curve=[[s, r[REPORTED_NETWORK]['miou']] for s, r in curve])
    pseudo = read_pseudo_iou(workdir) if os.path.isdir(workdir) else {}
    if pseudo:
      record['pseudo_iou'] = pseudo
    records.append(record)
  return records


def _pct(x: Optional[float], signed: bool = False) -> str:
  if x is None:
    return '-'
  return f'{100 * x:+.2f}' if signed else f'{100 * x:.2f}'


def _stats(values: list[float]) -> dict:
  n = len(values)
  if not n:
    return {'n': 0, 'mean': None, 'std': None, 'min': None, 'max': None}
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
  return {'n': n, 'mean': mean, 'std': std, 'min': min(values), 'max': max(values)}


COMPARISONS = ('supervised', 'mean_teacher', 'ct_only')


def _field(record: dict, key: str):
  return recipe_of(record) if key == 'recipe' else record[key]


def paired_differences(records: list[dict], by='partition_seed',
                       fixed: Optional[dict] = None) -> tuple[list[dict], dict]:
  """ctt - other (in 0..1 units) per group of finished runs sharing recipe, subset and
  training seed. by='partition_seed' with fixed={'seed': base}: across subsets; by='seed'
  with fixed={'partition_seed': p}: across training seeds; by=('partition_seed', 'seed'):
  every pair. Returns (rows, {other: stats}); a row's `by` entry is the group's key."""
  fixed = fixed or {}
  finished = [r for r in records if r['finished']
              and all(_field(r, k) == v for k, v in fixed.items())]
  groups = collections.defaultdict(dict)
  for r in finished:
    key = tuple(r[k] for k in by) if isinstance(by, tuple) else r[by]
    groups[key][r['method']] = r['miou']
  rows = []
  for key in sorted(groups):
    mious = groups[key]
    row = {by: key, 'miou': dict(mious), 'diff': {}}
    for other in COMPARISONS:
      if 'ctt' in mious and other in mious:
        row['diff'][other] = mious['ctt'] - mious[other]
    rows.append(row)
  stats = {other: _stats([row['diff'][other] for row in rows if other in row['diff']])
           for other in COMPARISONS}
  return rows, stats


def _difference_table(rows: list[dict], stats: dict, by: str, label: str) -> list[str]:
  methods = [m for m in METHODS if any(m in row['miou'] for row in rows)]
  comps = [c for c in COMPARISONS if stats[c]['n']]

  def line(cells):
    return '| ' + ' | '.join(str(c) for c in cells) + ' |'

  lines = [line([label] + methods + [f'ctt - {c}' for c in comps]),
           '|---|' + '---|' * (len(methods) + len(comps))]
  for row in rows:
    label_cell = ', '.join(map(str, row[by])) if isinstance(by, tuple) else row[by]
    lines.append(line([label_cell] + [_pct(row['miou'].get(m)) for m in methods]
                      + [_pct(row['diff'].get(c), True) for c in comps]))
  if not comps:
    return lines + ['', '(no paired difference yet: ctt and another method have not both '
                    'finished on the same subset and seed)']
  for stat in ('mean', 'std', 'min', 'max', 'n'):
    lines.append(line([f'**{stat}**'] + [''] * len(methods)
                      + [stats[c]['n'] if stat == 'n' else _pct(stats[c][stat], stat != 'std')
                         for c in comps]))
  return lines


def _network_table(title: str, intro: str, records: list[dict], values_of, step_of
                   ) -> list[str]:
  """A markdown section: one row per record, one column per network; values_of(record)
  -> {network: mIoU in 0..1}, step_of(record) -> the step the values are from."""
  networks = sorted({n for r in records for n in values_of(r)})
  lines = ['', f'## {title}', '', intro, '',
           '| recipe | method | subset | seed | step | ' + ' | '.join(networks) + ' |',
           '|---|---|---|---|---|' + '---|' * len(networks)]
  for r in records:
    values = values_of(r)
    lines.append(f'| {recipe_of(r)} | {r["method"]} | {r["partition_seed"]} | {r["seed"]} | '
                 f'{step_of(r)} | ' + ' | '.join(_pct(values.get(n)) for n in networks) + ' |')
  return lines


def _recipe_differences(records: list[dict], recipe: str, base_seed: int,
                        seed_study_partition: int) -> list[str]:
  """The paired-difference sections of one recipe's runs (never pooled across recipes)."""
  name = f'recipe `{recipe}`'
  rows, stats = paired_differences(records, 'partition_seed',
                                   {'seed': base_seed, 'recipe': recipe})
  lines = ['', f'## {name}: paired differences across labeled subsets (training seed '
           f'{base_seed})', '',
           'Finished runs only; differences in mIoU points, paired by subset; std is the '
           'sample standard deviation (n - 1), n the number of subsets with both runs.', '']
  lines += (_difference_table(rows, stats, 'partition_seed', 'subset') if rows
            else ['(no subset has finished runs yet)'])
  rows, stats = paired_differences(records, 'seed',
                                   {'partition_seed': seed_study_partition, 'recipe': recipe})
  if len(rows) > 1:
    lines += ['', f'## {name}: training seed varied on subset {seed_study_partition}', '',
              'Same labeled subset, another initialisation and data order: the spread here '
              'is the noise a difference between subsets has to exceed.', '']
    lines += _difference_table(rows, stats, 'seed', 'seed')
  by_pair = ('partition_seed', 'seed')
  rows, stats = paired_differences(records, by_pair, {'recipe': recipe})
  if len({row[by_pair][1] for row in rows}) > 1:
    lines += ['', f'## {name}: every (subset, seed) pair', '',
              'Paired by labeled subset and training seed together: n is the number of '
              'pairs where both methods finished.', '']
    lines += _difference_table(rows, stats, by_pair, 'subset, seed')
  return lines


def write_markdown(records: list[dict], path: str, *, base_seed: int,
                   seed_study_partition: int, plot_path: Optional[str] = None,
                   command: str = '') -> str:
  """The runs table, the paired differences and the pseudo-label table."""
  done = sum(r['finished'] for r in records)
  lines = [f'# CamVid grid: {done} of {len(records)} runs finished',
           '',
           f'mIoU (%) of {REPORTED_NETWORK} on the 101 val images at each run\'s last '
           'evaluation (`finished` = at total_steps). Generated by '
           f'`{SCRIPT}`' + (f': `{command}`' if command else '') + '.',
           f'Run order: {RUN_ORDER_NOTE}.', '',
           '## Runs', '']
  classes = []
  for r in records:
    for c in r.get('per_class_iou') or {}:
      if c not in classes:
        classes.append(c)
  lines += [f'| recipe | method | subset (partition_seed) | seed | status | steps | mIoU '
            f'({REPORTED_NETWORK}) | best '
            'network (mIoU) | wall time | ' + ' | '.join(classes) + ' |',
            '|---|---|---|---|---|---|---|---|---|' + '---|' * len(classes)]
  for r in records:
    per_class = r.get('per_class_iou') or {}
    cells = ' | '.join('-' if per_class.get(c) is None else f'{100 * per_class[c]:.1f}'
                       for c in classes)
    best = (f'{r["best_network"]} ({_pct(r["best_miou"])})' if r.get('best_network')
            else '-')
    wall = '-' if r['wall_minutes'] is None else f'{r["wall_minutes"]:.1f} min'
    steps = '-' if r['steps'] is None else f'{r["steps"]} / {r["total_steps"]}'
    lines.append(f'| {recipe_of(r)} | {r["method"]} | {r["partition_seed"]} | {r["seed"]} | '
                 f'{r["status"]} | {steps} | {_pct(r["miou"])} | {best} | {wall} | {cells} |')

  for recipe in dict.fromkeys(recipe_of(r) for r in records):
    lines += _recipe_differences(records, recipe, base_seed, seed_study_partition)

  several = [r for r in records if len(r.get('network_miou') or {}) > 1]
  if several:
    lines += _network_table(
        'Every network at the last evaluation',
        f'mIoU (%) on the val images; the grid reports {REPORTED_NETWORK}, fixed in advance.',
        several, lambda r: r['network_miou'], lambda r: r['steps'])
  pseudo = [r for r in records if r.get('pseudo_iou')]
  if pseudo:
    lines += _network_table(
        'Pseudo-label mIoU on the unlabeled images',
        'Last logged value of `train/pseudo_iou/...` (each teacher\'s pseudo-labels against '
        'the unlabeled images\' ground truth), mIoU (%).',
        pseudo, lambda r: {n: v['miou'] for n, v in r['pseudo_iou'].items()},
        lambda r: max(v['step'] for v in r['pseudo_iou'].values()))
  if plot_path:
    rel = os.path.relpath(plot_path, os.path.dirname(os.path.abspath(path)))
    lines += ['', f'![{REPORTED_NETWORK} val mIoU against step, a panel per subset]({rel})']
  text = '\n'.join(lines) + '\n'
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)
  return text


def plot_curves(records: list[dict], path: str, base_seed: int = 0) -> None:
  """teacher_0 val mIoU against step, one panel per subset; colour = method, line style =
  training seed (solid = base seed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  with_curves = [r for r in records if r.get('curve')]
  subsets = sorted({r['partition_seed'] for r in with_curves}) or [0]
  recipes = list(dict.fromkeys(recipe_of(r) for r in with_curves)) or [DEFAULT_RECIPE]
  fig, axes = plt.subplots(len(recipes), len(subsets),
                           figsize=(5 * len(subsets), 4 * len(recipes)), squeeze=False,
                           sharey=True)
  colours = dict(zip(METHODS, ('tab:gray', 'tab:blue', 'tab:orange', 'tab:red')))
  styles = ('-', '--', ':', '-.')
  panels = [(ax, recipe, subset) for row, recipe in zip(axes, recipes)
            for ax, subset in zip(row, subsets)]
  for ax, recipe, subset in panels:
    for r in with_curves:
      if r['partition_seed'] != subset or recipe_of(r) != recipe:
        continue
      steps, mious = zip(*r['curve'])
      seed_rank = 0 if r['seed'] == base_seed else 1 + r['seed'] % (len(styles) - 1)
      ax.plot(steps, [100 * m for m in mious], styles[seed_rank], marker='o', markersize=3,
              color=colours.get(r['method']),
              label=f'{r["method"]} s{r["seed"]}' + ('' if r['finished'] else ' (unfinished)'))
    ax.set_title(f'recipe {recipe}, subset (partition_seed) {subset}')
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  for row in axes:
    row[0].set_ylabel(f'val mIoU (%), {REPORTED_NETWORK}')
  fig.suptitle('CamVid val (101 images), 1/8 labeled')
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def keep_earlier_records(records: list[dict], grid_json: str) -> list[dict]:
  """`records` plus the runs of grid.json that this grid directory does not hold (e.g. a
  recipe run in another directory, or on another machine): a report never drops a run."""
  try:
    with open(grid_json) as f:
      earlier = json.load(f).get('runs', [])
  except (OSError, ValueError):
    return records
  current = {record_key(r) for r in records}
  kept = [dict(r, recipe=recipe_of(r)) for r in earlier if record_key(r) not in current]
  return kept + records


def write_reports(records: list[dict], args) -> None:
  # runs: every run with an evaluation (`finished` false: stopped before total_steps);
  # pending: the runs of the plan not evaluated yet.
  records = keep_earlier_records(records, args.grid_json)
  write_json_atomic(args.grid_json, {
      'network': REPORTED_NETWORK, 'config': f'configs/camvid.py:{args.split}',
      'overrides': args.overrides,
      'runs': [r for r in records if r['steps'] is not None],
      'pending': [Run(r['method'], r['partition_seed'], r['seed'], recipe_of(r)).name
                  for r in records if r['steps'] is None]})
  write_markdown(records, args.grid_md, base_seed=args.base_seed,
                 seed_study_partition=args.seed_study_partition, plot_path=args.grid_plot,
                 command=args.command)
  try:
    plot_curves(records, args.grid_plot, args.base_seed)
  except Exception as e:  # pylint: disable=broad-except
    print(f'Could not plot the curves ({e!r}); the JSON and the table are written.',
          flush=True)


# ----------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(',') if x.strip()]


def _names(text: str) -> list[str]:
  return [x.strip() for x in text.split(',') if x.strip()]


# The flags whose value is a path, and the ones the reports leave out of the command.
PATH_FLAGS = ('--workdir', '--grid_json', '--grid_md', '--grid_plot')
UNQUOTED_FLAGS = ('--dry_run', '--report_only')


def portable_path(value: str, workdir: str) -> str:
  """`value` as a report may quote it: the grid directory `workdir` is DIR, a path under
  it DIR/..., an absolute path in the repository relative to its root, any other absolute
  path PATH/<its file name>; a relative path as given."""
  if not os.path.isabs(value):
    return value
  path = os.path.normpath(value)
  workdir = os.path.abspath(workdir) if workdir else None
  if path == workdir:
    return 'DIR'
  if workdir and path.startswith(workdir + os.sep):
    return os.path.join('DIR', os.path.relpath(path, workdir))
  if path.startswith(ROOT + os.sep):
    return os.path.relpath(path, ROOT)
  return os.path.join('PATH', os.path.basename(path))


def quoted_command(argv: list[str]) -> str:
  """The command line the reports quote: the script's path in the repository and its
  flags, without the machine's paths (`portable_path`, also in --overrides' values)."""
  args = [a for a in argv if a not in UNQUOTED_FLAGS]
  joined = []  # `--flag value` as `--flag=value`
  while args:
    a = args.pop(0)
    joined.append(f'{a}={args.pop(0)}' if a in PATH_FLAGS + ('--overrides',) and args else a)
  workdir = next((a.partition('=')[2] for a in joined if a.startswith('--workdir=')), '')
  quoted = []
  for a in joined:
    flag, _, value = a.partition('=')
    if flag == '--workdir':
      a = '--workdir=DIR'
    elif flag in PATH_FLAGS:
      a = f'{flag}={portable_path(value, workdir)}'
    elif flag == '--overrides':
      fields = [field.partition('=') for field in value.split(',')]
      a = flag + '=' + ','.join(k + eq + portable_path(v, workdir) for k, eq, v in fields)
    quoted.append(a)
  return ' '.join(['python', SCRIPT] + quoted)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', required=True, help='the grid directory (one subdir per run)')
  p.add_argument('--split', default='1_8')
  p.add_argument('--overrides', default='', help='extra key=value,... for every run')
  p.add_argument('--methods', default=','.join(METHODS))
  p.add_argument('--partition_seeds', default='0,1,2')
  p.add_argument('--seeds', default='0,1,2', help='training seeds (see --base_seed)')
  p.add_argument('--base_seed', type=int, default=0,
                 help='the training seed of every method on every subset')
  p.add_argument('--seed_study_partition', type=int, default=0,
                 help='the subset on which the other training seeds run; -1: every subset')
  p.add_argument('--recipe', default=DEFAULT_RECIPE,
                 help='the reading every run trains (configs/common.py RECIPES); runs of a '
                      'recipe other than the default live in <workdir>/<recipe>/')
  p.add_argument('--seed_study_methods', default='supervised,ctt')
  p.add_argument('--max_minutes', type=float, default=0,
                 help='stop cleanly (checkpoint) after this much wall time; 0 = no limit')
  p.add_argument('--retry_failed', action='store_true',
                 help=f'also rerun runs that failed {MAX_FAILURES} times')
  p.add_argument('--dry_run', action='store_true', help='print the plan and status only')
  p.add_argument('--report_only', action='store_true', help='write the reports only')
  p.add_argument('--grid_json', default=os.path.join(RESULTS, 'grid.json'))
  p.add_argument('--grid_md', default=os.path.join(RESULTS, 'grid.md'))
  p.add_argument('--grid_plot', default=os.path.join(RESULTS, 'grid_curves.png'))
  args = p.parse_args(argv)
  args.command = quoted_command(sys.argv[1:] if argv is None else list(argv))
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  check_overrides(args.overrides)
  runs = plan_grid(_names(args.methods), _ints(args.partition_seeds), _ints(args.seeds),
                   args.base_seed, args.seed_study_partition,
                   _names(args.seed_study_methods), args.recipe)
  grid_dir = os.path.abspath(args.workdir)
  config_arg = {run: run.config_arg(args.split, args.overrides) for run in runs}
  totals = {run: total_steps_of(config_arg[run]) for run in runs}  # validates overrides
  changed = [f'{run.name}: was {m["config_arg"]!r}, now {config_arg[run]!r}' for run in runs
             if (m := read_meta(run.workdir(grid_dir))).get('config_arg')
             and m['config_arg'] != config_arg[run]]
  if changed:
    raise SystemExit('These runs were started with another configuration, so resuming them '
                     'would mix two; pass another --workdir or delete their directories:\n  '
                     + '\n  '.join(changed))

  def records():
    return collect(grid_dir, runs, lambda r: r.config_arg(args.split, args.overrides))

  print(f'Grid {grid_dir}: {len(runs)} runs, in order:')
  for i, run in enumerate(runs):
    status = run_status(run.workdir(grid_dir), totals[run])
    print(f'  {i + 1:2d}. {run.name:<22} {status:<9} {totals[run]} steps, '
          f'~{estimate_minutes(run, totals[run]):.0f} min')
  left = [r for r in runs if run_status(r.workdir(grid_dir), totals[r]) != 'finished']
  print(f'Left: {len(left)} runs, ~{sum(estimate_minutes(r, totals[r]) for r in left):.0f} '
        'min on 2 quiet cores (partial runs counted whole).', flush=True)
  if args.dry_run:
    return 0
  os.makedirs(grid_dir, exist_ok=True)
  if args.report_only:
    write_reports(records(), args)
    return 0
  grid_lock = _lock(os.path.join(grid_dir, '.grid.lock'), 0)
  if grid_lock is None:
    raise SystemExit(f'Another grid runs on {grid_dir}; wait for it or stop it first.')
  previous = _Stop.install()
  try:
    return _run_grid(args, runs, grid_dir, config_arg, totals, records)
  finally:
    _Stop.restore(previous)
    os.close(grid_lock)


def _run_grid(args, runs, grid_dir, config_arg, totals, records) -> int:
  """Runs what is left of `runs` in order; 0 = all finished, 3 = stopped, 1 = failures."""
  start = time.time()
  deadline = start + 60 * args.max_minutes if args.max_minutes > 0 else None
  write_reports(records(), args)
  for run in runs:
    status = run_status(run.workdir(grid_dir), totals[run])
    if status == 'finished' or (status == 'failed' and not args.retry_failed):
      print(f'{run.name}: {status}, skipped.', flush=True)
      continue
    if _Stop.reason or (deadline and time.time() >= deadline):
      _Stop.reason = _Stop.reason or 'max_minutes'
      break
    outcome = run_one(run, grid_dir, config_arg[run], totals[run], deadline=deadline)
    current = records()
    write_reports(current, args)
    if outcome == 'finished':
      r = next(r for r in current if (r['method'], r['partition_seed'], r['seed']) ==
               (run.method, run.partition_seed, run.seed))
      print(f'{run.name}: finished, mIoU {_pct(r["miou"])} ({REPORTED_NETWORK}), '
            f'{r["wall_minutes"] or 0:.1f} min in all.', flush=True)
    if outcome == 'stopped':
      break
  unfinished = [r for r in runs if run_status(r.workdir(grid_dir), totals[r]) != 'finished']
  print(f'\n{len(runs) - len(unfinished)} of {len(runs)} runs finished '
        f'({(time.time() - start) / 60:.1f} min this time). Reports: {args.grid_md}')
  if not unfinished:
    return 0
  if _Stop.reason:
    print(f'Stopped ({_Stop.reason}); rerun the same command to continue.')
    return 3
  print('Unfinished: ' + ', '.join(r.name for r in unfinished))
  return 1

if __name__ == '__main__':
  sys.exit(main())
