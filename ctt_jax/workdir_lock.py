"""One writer per workdir, and workdir problems as one sentence.

    lock = workdir_lock.acquire(workdir)   # after check_workdir; process 0 takes it
    try: ...train...
    finally: lock.release()                # also released at exit (atexit)

The lock is the file `<workdir>/LOCK_NAME`, a JSON record of its holder: host, pid, the
pid's start time (Linux /proc), start time, command and a random token. Creation is
create-if-absent:

- Local and network POSIX file systems (ext4, xfs, NFS, Lustre, ...): the record is written
  to a private temporary file and hard-linked to the lock name, which fails if the name
  exists (atomic, NFS-safe); where hard links are not supported, O_CREAT|O_EXCL.
- gs:// with `google-cloud-storage` installed: an upload with `if_generation_match=0`, which
  GCS performs only if the object does not exist (atomic).
- Any other path etils.epath opens (gs:// through tf.io.gfile, s3://, ...): there is no
  create-if-absent there, so the lock is checked, written, then read back to confirm the
  token. Two runs starting within the same second can both pass; anything slower is caught.

A lock whose holder ran on this host and whose pid is gone (or now belongs to another
process) is stale: it is reported with its holder and taken over. A lock held by a live
process, or by another host (whose processes cannot be checked), makes the second run fail
with one sentence naming the holder and what to do. Only training takes the lock;
evaluation and prediction read a workdir while it trains.
"""
from __future__ import annotations

import atexit
import datetime
import errno
import json
import os
import socket
import sys
import time
import uuid
from typing import Any, Optional

from absl import logging

LOCK_NAME = 'ctt.lock'


class WorkdirError(Exception):
  """The workdir cannot be used; the message is one sentence saying what to do."""


class WorkdirLockedError(WorkdirError):
  """Another run holds the workdir's lock."""


def _is_remote(path: str) -> bool:
  return '://' in str(path)


def _on_read_only_file_system(directory: str) -> bool:
  try:
    return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
  except (OSError, AttributeError):  # no statvfs on this platform
    return False


def _probe_writable(directory: str) -> Optional[str]:
  """None if a file can be created in `directory`, else the reason. A read-only mount is
  named as such (os.access reports it as missing permission); root ignores permission
  bits, so an actual write is the only sure test."""
  if _on_read_only_file_system(directory):
    return 'read-only file system'
  if not os.access(directory, os.W_OK | os.X_OK):
    return 'no write permission'
  probe = os.path.join(directory, f'.ctt_write_probe-{os.getpid()}-{uuid.uuid4().hex[:8]}')
  try:
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.remove(probe)
  except OSError as e:
    return e.strerror or str(e)
  return None


def _check_creatable(path: str, flag: str) -> None:
  """Raises WorkdirError unless the missing directory `path` (the value of `flag`) can be
  created: its nearest existing ancestor is a directory we can write to."""
  ancestor = os.path.dirname(path)
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise WorkdirError(f'Cannot create {flag}: {ancestor} is a file, not a directory; '
                       'choose another path.')
  problem = _probe_writable(ancestor)
  if problem:
    raise WorkdirError(f'Cannot create {flag}: {ancestor} is not writable ({problem}); '
                       'choose a location you can write to or fix its permissions.')


def check_workdir(workdir: str, *, for_writing: bool = True) -> None:
  """Creates `workdir` if needed (for writing) and raises WorkdirError for a workdir that
  is a file, a missing one (for reading), or one that cannot be written to."""
  if _is_remote(workdir):
    from etils import epath  # pylint: disable=g-import-not-at-top
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
      raise WorkdirError(f'--workdir={workdir} is a file, not a directory; pass a '
                         'directory path.')
    return  # object stores have no directories or permission bits to check up front
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f'--workdir={workdir} is a file, not a directory; pass a directory '
                       'path or move the file away.')
  if not os.path.isdir(path):
    if not for_writing:
      raise WorkdirError(f'--workdir={workdir} does not exist; pass the workdir of a '
                         'training run.')
    _check_creatable(path, f'--workdir={workdir}')
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise WorkdirError(f'Cannot create --workdir={workdir} ({e.strerror or e}); choose '
                         'another location.') from None
    return
  if for_writing:
    problem = _probe_writable(path)
    if problem:
      raise WorkdirError(f'--workdir={workdir} is not writable ({problem}); make it '
                         'writable or pass another directory (evaluation only reads it).')


def check_output_dir(directory: str, flag: str) -> None:
  """Raises WorkdirError naming `flag` unless `directory` is a writable folder or can be
  created as one; creates nothing (local paths only)."""
  path = os.path.abspath(directory)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f'{flag}={directory} is a file, not a folder; pass a folder path or '
                       'move the file away.')
  if not os.path.isdir(path):
    _check_creatable(path, f'{flag}={directory}')
    return
  problem = _probe_writable(path)
  if problem:
    raise WorkdirError(f'{flag}={directory} is not writable ({problem}); pass a folder you '
                       'can write to.')


# --------------------------------------------------------------------------- the lock


def _proc_start_ticks(pid: int) -> Optional[int]:
  """Start time of `pid` in clock ticks since boot (Linux), to detect a reused pid."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      stat = f.read()
    return int(stat.rsplit(')', 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, another user's
  except OSError:
    return True
  return True


def _describe(holder: dict[str, Any]) -> str:
  started = holder.get('started', '?')
  return (f'pid {holder.get("pid", "?")} on {holder.get("host", "?")} since {started} '
          f'({holder.get("command", "?")})')


def _holder_is_dead(holder: dict[str, Any]) -> bool:
  """True only when the holder provably ran on this host and has exited."""
  if holder.get('host') != socket.gethostname():
    return False
  pid = holder.get('pid')
  if not isinstance(pid, int):
    return False
  if not _pid_alive(pid):
    return True
  ticks = holder.get('pid_start_ticks')
  now = _proc_start_ticks(pid)
  return ticks is not None and now is not None and ticks != now  # pid reused


class WorkdirLock:
  """The lock of one workdir; a context manager. `acquire` raises WorkdirLockedError."""

  def __init__(self, workdir: str, *, command: Optional[str] = None):
    self.workdir = str(workdir)
    self.path = (self.workdir.rstrip('/') + '/' + LOCK_NAME if _is_remote(self.workdir)
                 else os.path.join(os.path.abspath(self.workdir), LOCK_NAME))
    self.command = command if command is not None else ' '.join(sys.argv)
    self.record: Optional[dict[str, Any]] = None
    self._atexit = False

  # -- storage backends: create-if-absent, read, remove-if-ours

  def _create(self, text: str) -> bool:
    """Creates the lock file with `text` unless it exists; True if created."""
    if not _is_remote(self.path):
      tmp = f'{self.path}.{uuid.uuid4().hex}.tmp'
      with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      try:
        os.link(tmp, self.path)
        return True
      except FileExistsError:
        return False
      except OSError as e:  # no hard links on this file system
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
          raise
        try:
          fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
          return False
        with os.fdopen(fd, 'w') as f:
          f.write(text)
        return True
      finally:
        os.remove(tmp)
    if self.path.startswith('gs://'):
      try:
        from google.cloud import storage  # pylint: disable=g-import-not-at-top
        from google.api_core import exceptions as gexc  # pylint: disable=g-import-not-at-top
      except ImportError:
        storage = None
      if storage is not None:
        bucket, _, name = self.path[len('gs://'):].partition('/')
        blob = storage.Client().bucket(bucket).blob(name)
        try:
          blob.upload_from_string(text, if_generation_match=0)
          return True
        except gexc.PreconditionFailed:
          return False
    return self._create_best_effort(text)

  def _create_best_effort(self, text: str) -> bool:
    """Check, write, read back: for stores without create-if-absent (see module doc)."""
    from etils import epath  # pylint: disable=g-import-not-at-top
    path = epath.Path(self.path)
    if path.exists():
      return False
    path.write_text(text)
    time.sleep(1.0)  # let a concurrent writer's object land before reading back
    return path.exists() and json.loads(path.read_text()).get('token') == json.loads(
        text)['token']

  def _read(self) -> Optional[dict[str, Any]]:
    """The holder's record; None if there is no lock; {} if it cannot be parsed."""
    try:
      if _is_remote(self.path):
        from etils import epath  # pylint: disable=g-import-not-at-top
        text = epath.Path(self.path).read_text()
      else:
        with open(self.path) as f:
          text = f.read()
    except FileNotFoundError:
      return None
    try:
      record = json.loads(text)
      return record if isinstance(record, dict) else {}
    except ValueError:
      return {}

  def _remove_if(self, token: Optional[str]) -> bool:
    """Removes the lock if it still holds `token`; True if removed. Locally the file is
    first renamed to a private name, so a concurrent takeover is never deleted."""
    if _is_remote(self.path):
      from etils import epath  # pylint: disable=g-import-not-at-top
      current = self._read()
      if current is None or current.get('token') != token:
        return False
      epath.Path(self.path).unlink(missing_ok=True)
      return True
    private = f'{self.path}.{uuid.uuid4().hex}.old'
    try:
      os.rename(self.path, private)
    except FileNotFoundError:
      return False
    try:
      with open(private) as f:
        moved = json.loads(f.read() or '{}')
    except (OSError, ValueError):
      moved = {}
    if moved.get('token') == token:
      os.remove(private)
      return True
    try:  # someone else's lock: put it back
      os.link(private, self.path)
    except OSError:
      pass
    os.remove(private)
    return False

  # -- public

  def acquire(self) -> 'WorkdirLock':
    record = {
        'host': socket.gethostname(), 'pid': os.getpid(),
        'pid_start_ticks': _proc_start_ticks(os.getpid()),
        'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'command': self.command, 'token': uuid.uuid4().hex,
    }
    text = json.dumps(record, indent=1)
    for _ in range(3):
      try:
        created = self._create(text)
      except OSError as e:
        raise WorkdirError(f'Cannot write the lock file {self.path} ({e.strerror or e}); '
                           'check that --workdir exists and is writable.') from None
      if created:
        self.record = record
        if not self._atexit:
          atexit.register(self.release)
          self._atexit = True
        return self
      holder = self._read()
      if holder is None:
        continue  # released meanwhile: try again
      if holder and _holder_is_dead(holder):
        logging.warning('Taking over the stale lock %s of %s, which is no longer '
                        'running.', self.path, _describe(holder))
        self._remove_if(holder.get('token'))
        continue
      if not holder:
        raise WorkdirLockedError(
            f'The lock file {self.path} is unreadable; if no other run uses '
            f'{self.workdir}, delete that file and rerun.')
      where = ('this host' if holder.get('host') == socket.gethostname()
               else f'host {holder.get("host")}')
      raise WorkdirLockedError(
          f'Another run is using --workdir={self.workdir}: {_describe(holder)}; wait for '
          f'it to finish, stop it, or pass another workdir (if it is no longer running on '
          f'{where}, delete {self.path}).')
    raise WorkdirLockedError(f'Could not take the lock {self.path} after three attempts '
                             '(another run keeps taking it); check who uses '
                             f'{self.workdir}.')

  def release(self) -> None:
    if self.record is None:
      return
    token, self.record = self.record['token'], None
    try:
      self._remove_if(token)
    except OSError as e:
      logging.warning('Could not remove the lock %s (%s); delete it by hand.', self.path, e)

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str, *, command: Optional[str] = None) -> WorkdirLock:
  """Process 0 takes the lock of `workdir`; with several processes every process raises
  WorkdirLockedError if process 0 could not (they must not train alone). Returns the lock
  (a no-op object on the other processes); release it, or let atexit do it."""
  import jax  # pylint: disable=g-import-not-at-top
  lock = WorkdirLock(workdir, command=command)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if int(failed) and error is None:
      raise WorkdirLockedError(f'--workdir={workdir} is locked by another run (process 0 '
                               'logged its holder); stop that run or pass another workdir.')
  if error is not None:
    raise error
  return lock
