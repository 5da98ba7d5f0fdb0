"""Orbax checkpoints of the train state you can trust: keep the last K and the best by val
mIoU, a SHA-256 digest written as part of every save, and restore only what is verified.

A checkpoint holds the state pytree and a small JSON record (step, the data position, the
metrics that ranked it). The data streams are a pure function of (seed, step), so the step
is the whole data position and a restart on the same workdir resumes exactly.

Orbax writes each checkpoint into a temporary directory and renames it when complete (on
object stores it writes `commit_success.txt` last), so a process killed while saving leaves
the previous checkpoints intact and the partial one is never restored.

**Digests.** Orbax calls each item handler's `finalize` once the item's files are complete
and before the step is committed (renamed). The handlers here write `<step>/<item>/
DIGEST_FILE` there: the size and SHA-256 of every file of the item. So a step this version
committed always has its digests, and a step without them was written by an older version
(which wrote `<step>/DIGEST_FILE` after the commit, and may have been killed before it did;
such a digest is still checked) or had them removed. Files rather than restored values,
because a file digest catches any changed byte in any file (array data, orbax's
`_METADATA`, the OCDBT manifests), is checked before orbax parses anything (so a corrupt
step costs one sentence, not tracebacks from tensorstore), and names the damaged file.
Cost: each item is read once more at the end of its (background) save and once before
restoring (SHA-256 runs at roughly 0.5-1 GB/s per core).

**Restore.** `restore(manager, abstract)` uses the newest verified step: a corrupt step, or
one without a digest (unverified), is skipped with one warning each, and training moves it
aside (never deletes it). `allow_unverified=True` restores an unverified step anyway.
`restore(manager, abstract, step)` reads that step only. A state of other shapes or
structure raises `IncompatibleCheckpointError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

BEST_METRIC = 'val_miou'
DIGEST_FILE = 'ctt_sha256.json'
ITEMS = ('state', 'meta')  # the items of a step, each a directory with its own digest
QUARANTINE_DIR = 'checkpoints_corrupt'  # beside `checkpoints/`, see `restore(quarantine=)`
UNVERIFIED_FLAG = '--allow_unverified'  # main.py's flag for `allow_unverified`
_CHUNK = 1 << 20


class CheckpointError(Exception):
  """A checkpoint cannot be used; the message is one sentence saying what to do."""


class IncompatibleCheckpointError(CheckpointError):
  """The checkpoint's tree or shapes differ from the state the config builds."""


class _DigestOnFinalize:
  """Writes the item's digest in `finalize`, which orbax calls (on the primary process)
  when the item's files are complete and before the step is committed."""

  def finalize(self, directory: epath.Path) -> None:
    super().finalize(directory)  # OCDBT merges its manifests here: digest after it
    write_digest(directory)


class _StateHandler(_DigestOnFinalize, ocp.StandardCheckpointHandler):
  pass


class _MetaHandler(_DigestOnFinalize, ocp.JsonCheckpointHandler):
  pass


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """The items' handlers, named up front (so `item_metadata` can read a step before
  restoring it) and registered per argument type (orbax matches subclasses by exact
  type otherwise)."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item, handler, save_args, restore_args in (
      ('state', _StateHandler(), ocp.args.StandardSave, ocp.args.StandardRestore),
      ('meta', _MetaHandler(), ocp.args.JsonSave, ocp.args.JsonRestore)):
    registry.add(item, save_args, handler)
    registry.add(item, restore_args, handler)
  return registry


def make_manager(workdir: str, keep: int, *, asynchronous: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of `<workdir>/checkpoints`. `read_only` for readers (evaluation,
  prediction): it creates, saves and cleans up nothing, so it leaves a running training's
  save in progress alone and a workdir without a run without a `checkpoints/` folder."""
  if read_only:
    # Not orbax's read_only option, which logs a warning for every reader.
    options = ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False,
                                           enable_async_checkpointing=False)
  else:
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=max(int(keep), 1)),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=True, create=True)
  directory = workdir if '://' in str(workdir) else os.path.abspath(workdir)
  return ocp.CheckpointManager(epath.Path(directory) / 'checkpoints', options=options,
                               handler_registry=_handler_registry())


# --------------------------------------------------------------------------- saving


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         metrics: Optional[dict[str, float]] = None) -> None:
  """Saves (asynchronously when the manager is) unless `step` is already saved; the
  digests are written as part of the save."""
  if step in manager.all_steps():
    return
  meta = {'step': int(step), 'data_step': int(step), 'metrics': metrics or {}}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)),
               metrics=metrics or None, force=True)


def finalize(manager: ocp.CheckpointManager) -> None:
  """Waits until the running save is committed, digests included. Call it before the
  process exits: at the end, after the preemption save, before raising on a NaN loss."""
  manager.wait_until_finished()


# --------------------------------------------------------------------------- digests


def _files(directory: epath.Path) -> list[str]:
  """Relative POSIX paths of every file under `directory` but the digest, sorted."""
  out, stack = [], [(directory, '')]
  while stack:
    folder, prefix = stack.pop()
    for child in folder.iterdir():
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


def write_digest(directory: epath.PathLike) -> None:
  """Writes `directory/DIGEST_FILE` (size and SHA-256 of every file), atomically on local
  disks (temporary file, then rename)."""
  directory = epath.Path(directory)
  files = {}
  for rel in _files(directory):
    digest, size = _sha256(directory / rel)
    files[rel] = {'size': size, 'sha256': digest}
  record = {'algorithm': 'sha256', 'written': time.time(), 'files': files}
  tmp = directory / (DIGEST_FILE + '.tmp')
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
  tmp.rename(directory / DIGEST_FILE)


def verify_digest(directory: epath.PathLike, prefix: str = '') -> Optional[str]:
  """None if every file matches the digest of `directory`; else the problem as a phrase
  (files named `prefix` + their relative path). Raises FileNotFoundError without one."""
  directory = epath.Path(directory)
  digest_path = directory / DIGEST_FILE
  if not digest_path.exists():
    raise FileNotFoundError(str(digest_path))
  try:
    files = json.loads(digest_path.read_text())['files']
  except (ValueError, KeyError, TypeError) as e:
    return f'its digest file {prefix}{DIGEST_FILE} is unreadable ({e})'
  for rel, want in sorted(files.items()):
    path = directory / rel
    if not path.exists():
      return f'file {prefix}{rel} is missing'
    got, size = _sha256(path)
    if size != want['size']:
      return f'file {prefix}{rel} has {size} bytes instead of {want["size"]}'
    if got != want['sha256']:
      return f'file {prefix}{rel} does not match its SHA-256 digest'
  return None


def verify_step(step_dir: epath.PathLike) -> Optional[str]:
  """None if the step's files match its digests; else the problem as a phrase. Raises
  FileNotFoundError if the step has no digest at all (unverified)."""
  step_dir = epath.Path(step_dir)
  digested = [item for item in ITEMS if (step_dir / item / DIGEST_FILE).exists()]
  if not digested:
    return verify_digest(step_dir)  # an older version's digest, or FileNotFoundError
  for item in ITEMS:  # this version digests every item: a missing one was removed
    if item not in digested:
      return f'file {item}/{DIGEST_FILE} is missing'
    problem = verify_digest(step_dir / item, prefix=f'{item}/')
    if problem:
      return problem
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


class _UnverifiedStep(_BadStep):
  """One step has no digest, so its files cannot be checked."""

  def __init__(self):
    super().__init__('it has no digest, so its files cannot be verified (an older version '
                     'of ctt-jax stopped before writing it, or it was removed)')


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  if not text:
    return type(e).__name__
  line = text[0].split(' [tensorstore_spec=')[0]  # tensorstore appends kilobytes of spec
  return f'{type(e).__name__}: {line[:300]}'


def _check_files(step_dir: epath.Path, where: str, allow_unverified: bool) -> None:
  """Raises _BadStep unless the step's files match its digests (or it has none and
  `allow_unverified`)."""
  if not step_dir.is_dir():
    raise _BadStep('its directory does not exist')
  try:
    problem = verify_step(step_dir)
  except FileNotFoundError:
    if not allow_unverified:
      raise _UnverifiedStep() from None
    logging.warning('%s has no digest, so its files cannot be verified; restoring it '
                    'anyway, as %s asks.', where, UNVERIFIED_FLAG)
    return
  except OSError as e:
    raise _BadStep(f'its files cannot be read ({_first_line(e)})') from None
  if problem:
    raise _BadStep(problem)


def _restore_step(manager: ocp.CheckpointManager, abstract_state: Any, step: int,
                  allow_unverified: bool) -> tuple[Any, int]:
  where = f'Checkpoint step {step} in {manager.directory}'
  _check_files(manager.directory / str(step), where, allow_unverified)
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
            step: Optional[int] = None, *, quarantine: bool = False,
            allow_unverified: bool = False) -> tuple[Any, int]:
  """Restores into the shapes and shardings of `abstract_state` (a pytree of
  jax.ShapeDtypeStruct with `.sharding`); returns (state, data_step).

  step None: the newest verified step; each newer corrupt or unverified one is logged as
  one warning and, with `quarantine=True` (training mode, holding the workdir lock), moved
  to `<workdir>/QUARANTINE_DIR/<step>-<time>` so the run can save that step again. An
  explicit `step`: that step only. `allow_unverified`: a step without a digest is restored
  (with a warning) instead of skipped. Raises FileNotFoundError when there is no checkpoint
  at all, CheckpointError when no step (or the requested one) is usable, and
  IncompatibleCheckpointError when the stored tree or shapes differ from `abstract_state`.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f'No checkpoint in {manager.directory}.')
  if step is not None:
    return _restore_requested(manager, abstract_state, step, steps, allow_unverified)
  problems, bad, unverified = [], [], False
  for candidate in steps:
    try:
      result = _restore_step(manager, abstract_state, candidate, allow_unverified)
      problem = None
    except _BadStep as e:
      problem = e
    if _agree(problem is None):
      if bad and quarantine:
        _quarantine(manager, bad)
      return result
    problem = problem or _BadStep('another process could not read it (see its log)')
    following = [s for s in steps if s < candidate]
    logging.warning('%s', _fallback_sentence(manager, candidate, problem, following))
    problems.append(f'step {candidate} ({problem})')
    bad.append(candidate)
    unverified = unverified or isinstance(problem, _UnverifiedStep)
  advice = (f'pass {UNVERIFIED_FLAG} to restore the newest unverified step, or move'
            if unverified else 'move')
  raise CheckpointError(
      f'No usable checkpoint in {manager.directory}: {"; ".join(problems)}; {advice} that '
      'directory aside to start afresh.')


def _fallback_sentence(manager, step: int, problem: _BadStep, following: list[int]) -> str:
  """One sentence: why `step` is skipped and which step is tried next."""
  where = f'Checkpoint step {step} in {manager.directory}'
  then = f'falling back to step {following[0]}' if following else 'no older step is left'
  if isinstance(problem, _UnverifiedStep):
    return (f'{where} is not used: {problem}; {then} (pass {UNVERIFIED_FLAG} to restore '
            f'step {step} anyway).')
  return f'{where} is unusable ({problem}); {then}.'


def _restore_requested(manager, abstract_state, step: int, steps: list[int],
                       allow_unverified: bool) -> tuple[Any, int]:
  """`restore` of an explicit step (--checkpoint_step): that step or a CheckpointError."""
  where = f'Checkpoint step {step} in {manager.directory}'
  if step not in steps:
    raise CheckpointError(
        f'No checkpoint for step {step} in {manager.directory}; available steps: '
        f'{sorted(steps)}: pass one of them as --checkpoint_step or omit it.')
  try:
    result = _restore_step(manager, abstract_state, step, allow_unverified)
  except _BadStep as e:
    _agree(False)
    if isinstance(e, _UnverifiedStep):
      raise CheckpointError(
          f'{where} is not used: {e}; pass {UNVERIFIED_FLAG} to restore it anyway, or '
          f'another step of {sorted(steps)} as --checkpoint_step.') from None
    raise CheckpointError(
        f'{where} is unusable: {e}; pass another step of {sorted(steps)} or omit '
        '--checkpoint_step to use the newest good one.') from None
  if not _agree(True):
    raise CheckpointError(f'{where} is unusable on another process (see its log); pass '
                          'another step.')
  return result


def _quarantine(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves skipped steps out of the manager's directory (process 0), so they are saved
  anew; nothing is deleted."""
  if jax.process_index() == 0:
    target_root = manager.directory.parent / QUARANTINE_DIR
    target_root.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target = target_root / f'{step}-{int(time.time())}'
      try:
        (manager.directory / str(step)).rename(target)
        logging.warning('Moved the skipped checkpoint step %d to %s, so this run can save '
                        'that step again.', step, target)
      except OSError as e:
        logging.warning('Could not move the skipped checkpoint step %d aside (%s); move %s '
                        'by hand.', step, e, manager.directory / str(step))
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
