"""Orbax checkpoints of the train state you can trust: keep the last K and the best by val
mIoU, a SHA-256 digest of every committed step, and restore with fallback.

A checkpoint holds the state pytree and a small JSON record (step, the data position, the
metrics that ranked it). The data streams are a pure function of (seed, step), so the step
is the whole data position and a restart on the same workdir resumes exactly.

Orbax writes each checkpoint into a temporary directory and renames it when complete (on
object stores it writes `commit_success.txt` last), so a process killed while saving leaves
the previous checkpoints intact and the partial one is never restored.

**Digests.** Once orbax has committed a step, process 0 writes `<step>/DIGEST_FILE`: the
size and SHA-256 of every other file of the step directory. Files rather than restored
values, because a file digest catches any changed byte in any file (array data, orbax's
`_METADATA`, the OCDBT manifests), is checked before orbax parses anything (so a corrupt
step costs one sentence, not tracebacks from tensorstore), and names the damaged file;
a digest of the restored leaves would miss damage outside the values and needs a full
restore first. Cost: the step is read once more after saving and once before restoring
(SHA-256 runs at roughly 0.5-1 GB/s per core). Orbax saves asynchronously, so the digest of
a step is written when its save is known to be finished: at the next `save` (orbax waits
for the previous save there anyway) or in `finalize`, which the training loop calls before
it exits. A step without a digest (a run killed between commit and digest, or written by an
older version) is restored unverified, with a log line saying so.

**Restore.** `restore(manager, abstract)` tries the newest step and falls back to the newest
good one, logging one warning per bad step; `restore(manager, abstract, step)` reads that
step only. A state of other shapes or structure raises `IncompatibleCheckpointError`.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import time
import weakref
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

BEST_METRIC = 'val_miou'
DIGEST_FILE = 'ctt_sha256.json'
QUARANTINE_DIR = 'checkpoints_corrupt'  # beside `checkpoints/`, see `restore(quarantine=)`
_CHUNK = 1 << 20


class CheckpointError(Exception):
  """A checkpoint cannot be used; the message is one sentence saying what to do."""


class IncompatibleCheckpointError(CheckpointError):
  """The checkpoint's tree or shapes differ from the state the config builds."""


# Steps saved by this process whose digest is not written yet, per manager.
_PENDING: 'weakref.WeakKeyDictionary[ocp.CheckpointManager, set[int]]' = (
    weakref.WeakKeyDictionary())


def make_manager(workdir: str, keep: int, *, asynchronous: bool = True
                 ) -> ocp.CheckpointManager:
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=max(int(keep), 1)),
      checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, enable_async_checkpointing=asynchronous,
      cleanup_tmp_directories=True, create=True)
  directory = workdir if '://' in str(workdir) else os.path.abspath(workdir)
  # Handlers named up front, so `item_metadata` can read a step before restoring it.
  return ocp.CheckpointManager(
      epath.Path(directory) / 'checkpoints', options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})


# --------------------------------------------------------------------------- saving


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         metrics: Optional[dict[str, float]] = None) -> None:
  """Saves (asynchronously when the manager is) unless `step` is already saved; first
  writes the digests of the earlier saves, which are finished by then."""
  _write_pending_digests(manager)
  if step in manager.all_steps():
    return
  meta = {'step': int(step), 'data_step': int(step), 'metrics': metrics or {}}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)),
               metrics=metrics or None, force=True)
  _PENDING.setdefault(manager, set()).add(int(step))


def finalize(manager: ocp.CheckpointManager) -> None:
  """Waits for the running save and writes the digests still due. Call it wherever the
  loop used `manager.wait_until_finished()`: at the end, after the preemption save, before
  raising on a NaN loss."""
  _write_pending_digests(manager)


def _write_pending_digests(manager: ocp.CheckpointManager) -> None:
  manager.wait_until_finished()  # every step saved so far is committed (or failed)
  pending = _PENDING.get(manager, set())
  for step in sorted(pending):
    pending.discard(step)
    step_dir = manager.directory / str(step)
    if jax.process_index() != 0 or not _is_committed(step_dir):
      continue  # deleted by the keep policy, or the save failed (orbax raised then)
    try:
      write_digest(step_dir)
    except OSError as e:
      logging.warning('Could not write the digest of checkpoint step %d in %s (%s); that '
                      'step will be restored unverified.', step, manager.directory, e)


def _is_committed(step_dir: epath.Path) -> bool:
  if not step_dir.is_dir():
    return False
  # Local disks: the directory only gets its final name when complete. Object stores:
  # orbax writes commit_success.txt last.
  return '://' not in str(step_dir) or (step_dir / 'commit_success.txt').exists()


@atexit.register
def _digest_at_exit():
  """Safety net for a loop that forgot `finalize` (orbax's threads are joined by now)."""
  for manager in list(_PENDING.keys()):
    try:
      _write_pending_digests(manager)
    except Exception:  # pylint: disable=broad-except
      pass


# --------------------------------------------------------------------------- digests


def _files(step_dir: epath.Path) -> list[str]:
  """Relative POSIX paths of every file under `step_dir` but the digest, sorted."""
  out, stack = [], [(step_dir, '')]
  while stack:
    directory, prefix = stack.pop()
    for child in directory.iterdir():
      rel = prefix + child.name
      if child.is_dir():
        stack.append((child, rel + '/'))
      elif rel != DIGEST_FILE:
        out.append(rel)
  return sorted(out)


def _sha256(path: epath.Path) -> tuple[str, int]:
  h, size = hashlib.sha256(), 0
  with path.open('rb') as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
      size += len(chunk)
  return h.hexdigest(), size


def write_digest(step_dir: epath.PathLike) -> None:
  """Writes `step_dir/DIGEST_FILE` (size and SHA-256 of every file), atomically on local
  disks (temporary file, then rename). Only for a committed step."""
  step_dir = epath.Path(step_dir)
  files = {}
  for rel in _files(step_dir):
    digest, size = _sha256(step_dir / rel)
    files[rel] = {'size': size, 'sha256': digest}
  record = {'algorithm': 'sha256', 'written': time.time(), 'files': files}
  tmp = step_dir / (DIGEST_FILE + '.tmp')
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
  tmp.rename(step_dir / DIGEST_FILE)


def verify_digest(step_dir: epath.PathLike) -> Optional[str]:
  """None if every file matches the digest; else the problem as a phrase.
  Raises FileNotFoundError if the step has no digest."""
  step_dir = epath.Path(step_dir)
  digest_path = step_dir / DIGEST_FILE
  if not digest_path.exists():
    raise FileNotFoundError(str(digest_path))
  try:
    files = json.loads(digest_path.read_text())['files']
  except (ValueError, KeyError, TypeError) as e:
    return f'its digest file {DIGEST_FILE} is unreadable ({e})'
  for rel, want in sorted(files.items()):
    path = step_dir / rel
    if not path.exists():
      return f'file {rel} is missing'
    got, size = _sha256(path)
    if size != want['size']:
      return f'file {rel} has {size} bytes instead of {want["size"]}'
    if got != want['sha256']:
      return f'file {rel} does not match its SHA-256 digest'
  return None


# --------------------------------------------------------------------------- restoring


def _key_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'params/student/Conv_0/kernel' -> shape, for every array-like leaf of `tree`."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in leaves if hasattr(leaf, 'shape')}


def check_compatible(stored_tree: Any, abstract_state: Any, where: str) -> None:
  """Raises IncompatibleCheckpointError naming the first leaf whose presence or shape
  differs between the checkpoint's metadata tree and `abstract_state`."""
  stored, wanted = _leaf_shapes(stored_tree), _leaf_shapes(abstract_state)
  advice = ('the config changes the state (model size, num_pairs, bank_size, ...), so '
            'resume with the config.json stored in the workdir or start a new workdir')
  for name, shape in wanted.items():
    if name not in stored:
      raise IncompatibleCheckpointError(
          f'{where} has no leaf {name!r} (shape {shape} in the current state); {advice}.')
    if stored[name] != shape:
      raise IncompatibleCheckpointError(
          f'{where} stores leaf {name!r} with shape {stored[name]} but the current state '
          f'needs {shape}; {advice}.')
  extra = sorted(set(stored) - set(wanted))
  if extra:
    raise IncompatibleCheckpointError(
        f'{where} has leaf {extra[0]!r} (shape {stored[extra[0]]}) that the current state '
        f'lacks ({len(extra)} such leaves); {advice}.')


class _BadStep(Exception):
  """One step is corrupt or unreadable; the message is the problem as a phrase."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  if not text:
    return type(e).__name__
  line = text[0].split(' [tensorstore_spec=')[0]  # tensorstore appends kilobytes of spec
  return f'{type(e).__name__}: {line[:300]}'


def _restore_step(manager: ocp.CheckpointManager, abstract_state: Any, step: int
                  ) -> tuple[Any, int]:
  step_dir = manager.directory / str(step)
  where = f'Checkpoint step {step} in {manager.directory}'
  if not step_dir.is_dir():
    raise _BadStep('its directory does not exist')
  try:
    problem = verify_digest(step_dir)
  except FileNotFoundError:
    logging.info('%s has no digest (saved by an older version, or the run stopped before '
                 'writing it); restoring it unverified.', where)
  except OSError as e:
    raise _BadStep(f'its files cannot be read ({_first_line(e)})') from None
  else:
    if problem:
      raise _BadStep(problem)
  try:
    stored = manager.item_metadata(step)['state']
  except Exception as e:  # pylint: disable=broad-except
    raise _BadStep(f'its metadata cannot be read ({_first_line(e)})') from None
  if stored is None:
    raise _BadStep('its state metadata is missing')
  check_compatible(getattr(stored, 'tree', stored), abstract_state, where)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  except ValueError as e:
    if 'not compatible with the stored shape' in str(e):
      raise IncompatibleCheckpointError(f'{where}: {_first_line(e)}.') from None
    raise _BadStep(f'orbax cannot read it ({_first_line(e)})') from None
  except Exception as e:  # pylint: disable=broad-except
    raise _BadStep(f'orbax cannot read it ({_first_line(e)})') from None
  return restored['state'], int(restored['meta']['data_step'])


def _agree(ok: bool) -> bool:
  """With several processes: True only if every process succeeded (no divergent steps)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: Optional[int] = None, *, quarantine: bool = False) -> tuple[Any, int]:
  """Restores into the shapes and shardings of `abstract_state` (a pytree of
  jax.ShapeDtypeStruct with `.sharding`); returns (state, data_step).

  step None: the newest good step; each newer bad one is logged as one warning and, with
  `quarantine=True` (training mode, holding the workdir lock), moved to
  `<workdir>/QUARANTINE_DIR/<step>` so the run can save that step again. An explicit
  `step`: that step only. Raises FileNotFoundError when there is no checkpoint at all,
  CheckpointError when no step (or the requested one) is usable, and
  IncompatibleCheckpointError when the stored tree or shapes differ from `abstract_state`.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f'No checkpoint in {manager.directory}.')
  if step is not None:
    if step not in steps:
      raise CheckpointError(
          f'No checkpoint for step {step} in {manager.directory}; available steps: '
          f'{sorted(steps)}: pass one of them as --checkpoint_step or omit it.')
    try:
      result = _restore_step(manager, abstract_state, step)
    except _BadStep as e:
      _agree(False)
      raise CheckpointError(
          f'Checkpoint step {step} in {manager.directory} is unusable: {e}; pass another '
          f'step of {sorted(steps)} or omit --checkpoint_step to use the newest good '
          'one.') from None
    if not _agree(True):
      raise CheckpointError(f'Checkpoint step {step} in {manager.directory} is unusable on '
                            'another process (see its log); pass another step.')
    return result
  problems, bad = [], []
  for candidate in steps:
    try:
      result = _restore_step(manager, abstract_state, candidate)
      ok = True
    except _BadStep as e:
      problem, ok = str(e), False
    if _agree(ok):
      if bad and quarantine:
        _quarantine(manager, bad)
      return result
    if ok:
      problem = 'another process could not read it (see its log)'
    following = [s for s in steps if s < candidate]
    logging.warning('Checkpoint step %d in %s is unusable (%s); %s', candidate,
                    manager.directory, problem,
                    f'falling back to step {following[0]}.' if following
                    else 'no older step is left.')
    problems.append(f'step {candidate} ({problem})')
    bad.append(candidate)
  raise CheckpointError(
      f'No usable checkpoint in {manager.directory}: {"; ".join(problems)}; move that '
      'directory aside to start afresh.')


def _quarantine(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves bad steps out of the manager's directory (process 0), so they are saved anew."""
  if jax.process_index() == 0:
    target_root = manager.directory.parent / QUARANTINE_DIR
    target_root.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target = target_root / f'{step}-{int(time.time())}'
      try:
        (manager.directory / str(step)).rename(target)
        logging.warning('Moved the unusable checkpoint step %d to %s.', step, target)
      except OSError as e:
        logging.warning('Could not move the unusable checkpoint step %d aside (%s); '
                        'delete %s by hand.', step, e, manager.directory / str(step))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('ctt_checkpoint_quarantine')
  manager.reload()


def read_raw(manager: ocp.CheckpointManager, step: Optional[int] = None) -> tuple[Any, int]:
  """The saved state as a plain tree of arrays (for inspection and tests; no target)."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  return restored['state'], step


def abstract_with_sharding(abstract_state: Any, sharding) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      abstract_state)
