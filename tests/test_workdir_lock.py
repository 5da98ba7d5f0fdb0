"""One writer per workdir: two processes, a stale lock, a reused pid, a foreign host; and
workdir and output-folder problems (a file, a read-only directory or mount, an unwritable
parent) as one sentence.

Tests run as root, which ignores permission bits, so "read-only" is made real with the
immutable attribute (`chattr +i`, which stops root too; skipped where unsupported) and, for
portability, by making `os.access` report no permission (the check that comes first)."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ctt_jax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {root!r})
    from ctt_jax import workdir_lock
    lock = workdir_lock.WorkdirLock({workdir!r}, command='holder-run').acquire()
    print('locked', flush=True)
    sys.stdin.readline()  # hold until the test closes stdin (or kills us)
''')

RACER = textwrap.dedent('''
    import os, sys, time
    sys.path.insert(0, {root!r})
    from ctt_jax import workdir_lock
    while not os.path.exists({go!r}):
      time.sleep(0.001)
    try:
      workdir_lock.WorkdirLock({workdir!r}).acquire()
      print('won', flush=True)
      time.sleep(1.0)
    except workdir_lock.WorkdirLockedError as e:
      print('lost:', e, flush=True)
''')


def _start_holder(workdir):
  proc = subprocess.Popen([sys.executable, '-c', HOLDER.format(root=ROOT, workdir=workdir)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'locked'
  return proc


def _lock_path(workdir):
  return os.path.join(workdir, workdir_lock.LOCK_NAME)


def test_second_process_is_refused_while_the_first_holds_the_lock(tmp_path):
  workdir = str(tmp_path)
  holder = _start_holder(workdir)
  try:
    with open(_lock_path(workdir)) as f:
      record = json.load(f)
    assert record['pid'] == holder.pid and record['host'] == socket.gethostname()
    assert record['command'] == 'holder-run' and record['started']
    with pytest.raises(workdir_lock.WorkdirLockedError) as info:
      workdir_lock.WorkdirLock(workdir).acquire()
    message = str(info.value)
    assert f'pid {holder.pid} on {socket.gethostname()}' in message
    assert 'holder-run' in message and 'pass another workdir' in message
    assert '\n' not in message
  finally:
    holder.stdin.close()  # normal exit: atexit releases the lock
    holder.wait(timeout=30)
  assert not os.path.exists(_lock_path(workdir))
  with workdir_lock.WorkdirLock(workdir):
    assert os.path.exists(_lock_path(workdir))
  assert not os.path.exists(_lock_path(workdir))


def test_two_processes_starting_together_exactly_one_wins(tmp_path):
  workdir, go = str(tmp_path / 'w'), str(tmp_path / 'go')
  os.makedirs(workdir)
  racers = [subprocess.Popen(
      [sys.executable, '-c', RACER.format(root=ROOT, workdir=workdir, go=go)],
      stdout=subprocess.PIPE, text=True) for _ in range(2)]
  time.sleep(1.0)  # both imported and spinning
  open(go, 'w').close()
  outputs = [p.communicate(timeout=60)[0].strip() for p in racers]
  assert sorted(o.split(':')[0] for o in outputs) == ['lost', 'won'], outputs


def test_stale_lock_of_a_killed_run_is_reported_and_taken_over(tmp_path, caplog):
  workdir = str(tmp_path)
  holder = _start_holder(workdir)
  holder.send_signal(signal.SIGKILL)  # no atexit: the lock file stays
  holder.wait(timeout=30)
  holder.stdin.close()
  assert os.path.exists(_lock_path(workdir))
  lock = workdir_lock.WorkdirLock(workdir).acquire()
  with open(_lock_path(workdir)) as f:
    assert json.load(f)['pid'] == os.getpid()
  stale = [r.getMessage() for r in caplog.records if 'stale lock' in r.getMessage()]
  assert len(stale) == 1 and f'pid {holder.pid}' in stale[0] and 'holder-run' in stale[0]
  lock.release()
  assert not os.path.exists(_lock_path(workdir))


def _write_lock(workdir, **fields):
  record = {'host': socket.gethostname(), 'pid': os.getpid(), 'pid_start_ticks': None,
            'started': '2026-01-01T00:00:00+00:00', 'command': 'other', 'token': 'abc'}
  record.update(fields)
  with open(_lock_path(workdir), 'w') as f:
    json.dump(record, f)


def test_a_reused_pid_makes_the_lock_stale(tmp_path, caplog):
  ticks = workdir_lock._proc_start_ticks(os.getpid())
  if ticks is None:
    pytest.skip('no /proc start times here: a reused pid cannot be told apart')
  # The record names our own pid, which is alive, but with another start time: the
  # process that wrote it is gone and the pid was reused.
  _write_lock(str(tmp_path), pid_start_ticks=ticks - 1, command='the old run')
  lock = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  with open(_lock_path(str(tmp_path))) as f:
    record = json.load(f)
  assert record['token'] == lock.record['token'] and record['token'] != 'abc'
  assert record['pid_start_ticks'] == ticks
  stale = [r.getMessage() for r in caplog.records if 'stale lock' in r.getMessage()]
  assert len(stale) == 1 and 'the old run' in stale[0], stale
  lock.release()
  assert not os.path.exists(_lock_path(str(tmp_path)))


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
  _write_lock(str(tmp_path), host='tpu-vm-7', pid=1234)
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=r'pid 1234 on tpu-vm-7 .*no longer running on host tpu-vm-7, '
                           r'delete .*ctt.lock'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()


def test_unreadable_lock_file_is_one_sentence(tmp_path):
  with open(_lock_path(str(tmp_path)), 'w') as f:
    f.write('{not json')
  with pytest.raises(workdir_lock.WorkdirLockedError, match='unreadable; if no other run'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()


def test_release_leaves_someone_elses_lock_alone(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  os.remove(_lock_path(str(tmp_path)))
  _write_lock(str(tmp_path), token='someone-else')
  lock.release()
  with open(_lock_path(str(tmp_path))) as f:
    assert json.load(f)['token'] == 'someone-else'


def test_lock_in_a_missing_workdir_is_one_sentence(tmp_path):
  with pytest.raises(workdir_lock.WorkdirError, match='Cannot write the lock file'):
    workdir_lock.WorkdirLock(str(tmp_path / 'missing')).acquire()


def test_best_effort_create_for_stores_without_create_if_absent(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock.time, 'sleep', lambda s: None)
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  assert lock._create_best_effort(json.dumps({'token': 'a'}))
  assert not lock._create_best_effort(json.dumps({'token': 'b'}))


def test_module_acquire_takes_the_lock_on_process_0(tmp_path):
  lock = workdir_lock.acquire(str(tmp_path), command='train')
  assert os.path.exists(_lock_path(str(tmp_path)))
  with pytest.raises(workdir_lock.WorkdirLockedError):
    workdir_lock.acquire(str(tmp_path))
  lock.release()


# ---------------------------------------------------------------- workdir problems


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / 'run'
  path.write_text('x')
  with pytest.raises(workdir_lock.WorkdirError, match='is a file, not a directory'):
    workdir_lock.check_workdir(str(path))


def test_workdir_under_a_file(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(workdir_lock.WorkdirError, match=r'file is a file, not a directory'):
    workdir_lock.check_workdir(str(tmp_path / 'file' / 'run'))


def test_missing_workdir_is_created_or_refused_for_reading(tmp_path):
  workdir_lock.check_workdir(str(tmp_path / 'a' / 'b'))
  assert os.path.isdir(tmp_path / 'a' / 'b')
  with pytest.raises(workdir_lock.WorkdirError, match='does not exist'):
    workdir_lock.check_workdir(str(tmp_path / 'c'), for_writing=False)


def test_read_only_workdir_by_permission(tmp_path, monkeypatch):
  real_access = os.access
  monkeypatch.setattr(workdir_lock.os, 'access',
                      lambda p, mode: False if mode & os.W_OK else real_access(p, mode))
  with pytest.raises(workdir_lock.WorkdirError, match='is not writable .no write permission'):
    workdir_lock.check_workdir(str(tmp_path))
  workdir_lock.check_workdir(str(tmp_path), for_writing=False)  # reading is fine
  with pytest.raises(workdir_lock.WorkdirError,
                     match=rf'Cannot create --workdir=.*new: {tmp_path} is not writable'):
    workdir_lock.check_workdir(str(tmp_path / 'new'))


def test_read_only_workdir_for_real(tmp_path):
  """chattr +i: even root cannot create files in an immutable directory."""
  workdir = tmp_path / 'ro'
  workdir.mkdir()
  if subprocess.run(['chattr', '+i', str(workdir)], capture_output=True).returncode:
    pytest.skip('chattr +i is not supported here')
  try:
    with pytest.raises(workdir_lock.WorkdirError, match='is not writable') as info:
      workdir_lock.check_workdir(str(workdir))
    assert '\n' not in str(info.value)
  finally:
    subprocess.run(['chattr', '-i', str(workdir)], check=True)


def test_read_only_file_system_is_named_as_such(tmp_path, monkeypatch):
  class ReadOnly:
    f_flag = os.ST_RDONLY
  monkeypatch.setattr(workdir_lock.os, 'statvfs', lambda path: ReadOnly())
  with pytest.raises(workdir_lock.WorkdirError,
                     match=r'is not writable \(read-only file system\)'):
    workdir_lock.check_workdir(str(tmp_path))


def test_read_only_mount_for_real(tmp_path):
  """A read-only tmpfs: os.access says "no permission" there, the sentence must not."""
  mount = tmp_path / 'ro'
  mount.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', str(mount)],
                    capture_output=True).returncode:
    pytest.skip('cannot mount a file system here')
  try:
    with pytest.raises(workdir_lock.WorkdirError,
                       match=r'is not writable \(read-only file system\)'):
      workdir_lock.check_workdir(str(mount))
    with pytest.raises(workdir_lock.WorkdirError,
                       match=r'Cannot create --output=.*is not writable \(read-only file'):
      workdir_lock.check_output_dir(str(mount / 'pngs'), '--output')
  finally:
    subprocess.run(['umount', str(mount)], check=True)


def test_output_folder_problems_name_the_flag_and_create_nothing(tmp_path, monkeypatch):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(workdir_lock.WorkdirError,
                     match=r'--output=.*file is a file, not a folder'):
    workdir_lock.check_output_dir(str(tmp_path / 'file'), '--output')
  workdir_lock.check_output_dir(str(tmp_path / 'new' / 'pngs'), '--output')
  assert not os.path.exists(tmp_path / 'new')  # checked, not created
  real_access = os.access
  monkeypatch.setattr(workdir_lock.os, 'access',
                      lambda p, mode: False if mode & os.W_OK else real_access(p, mode))
  with pytest.raises(workdir_lock.WorkdirError,
                     match=r'--output=.* is not writable \(no write permission\)'):
    workdir_lock.check_output_dir(str(tmp_path), '--output')
