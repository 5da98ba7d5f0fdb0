"""Checkpoints you can trust: digests written before a step is committed, fallback from a
corrupt or unverified newest step, explicit steps read alone, incompatible shapes named,
orbax's logs quiet.

A tiny struct-dataclass state (like TrainState: dicts, a tuple, a scalar step) saved at
steps 1, 2, 3 by an asynchronous manager; each test corrupts a copy of that workdir.
"""
import glob
import json
import logging
import os
import shutil

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctt_jax import checkpointing
from ctt_jax import logs


@flax.struct.dataclass
class TinyState:
  step: jax.Array
  params: dict
  banks: tuple


def _state(value: float, width: int = 16) -> TinyState:
  return TinyState(step=jnp.int32(value),
                   params={'conv': {'kernel': jnp.full((3, 3, 3, width), value)},
                           'head': {'bias': jnp.arange(40.0) + value}},
                   banks=(jnp.full((2, 64), value), {}))


def _abstract(width: int = 16):
  return jax.eval_shape(lambda: _state(0.0, width))


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('saved'))
  manager = checkpointing.make_manager(workdir, keep=5)
  for step in (1, 2, 3):
    checkpointing.save(manager, step, _state(float(step)), {'val_miou': 0.1 * step})
  checkpointing.finalize(manager)
  manager.close()
  return workdir


@pytest.fixture
def workdir(saved, tmp_path):
  copy = str(tmp_path / 'run')
  shutil.copytree(saved, copy)
  return copy


def _step_dir(workdir, step):
  return os.path.join(workdir, 'checkpoints', str(step))


def _largest_data_file(workdir, step):
  files = glob.glob(os.path.join(_step_dir(workdir, step), 'state', 'ocdbt.process_0', 'd',
                                 '*'))
  return max(files, key=os.path.getsize)


def _truncate(workdir):
  path = _largest_data_file(workdir, 3)
  os.truncate(path, os.path.getsize(path) // 2)


def _delete_metadata(workdir):
  os.remove(os.path.join(_step_dir(workdir, 3), 'state', '_METADATA'))


def _delete_manifests(workdir):
  for path in glob.glob(os.path.join(_step_dir(workdir, 3), '**', 'manifest.ocdbt'),
                        recursive=True):
    os.remove(path)


def _flip_64_bytes(workdir):
  path = _largest_data_file(workdir, 3)
  data = bytearray(open(path, 'rb').read())
  for i in range(len(data) // 2 - 32, len(data) // 2 + 32):
    data[i] ^= 0xFF
  with open(path, 'wb') as f:
    f.write(data)


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_every_item_is_digested_before_the_step_is_committed(tmp_path, monkeypatch):
  manager = checkpointing.make_manager(str(tmp_path), keep=5)
  committed_when_digested = []
  real_write = checkpointing.write_digest
  def record(directory):
    committed_when_digested.append(os.path.isdir(_step_dir(tmp_path, 1)))
    real_write(directory)
  monkeypatch.setattr(checkpointing, 'write_digest', record)
  checkpointing.save(manager, 1, _state(1.0))
  checkpointing.finalize(manager)
  assert committed_when_digested == [False, False]  # one per item, both before the rename
  assert checkpointing.verify_step(_step_dir(tmp_path, 1)) is None
  for item in checkpointing.ITEMS:
    assert os.path.exists(os.path.join(_step_dir(tmp_path, 1), item,
                                       checkpointing.DIGEST_FILE))
  with open(os.path.join(_step_dir(tmp_path, 1), 'state', checkpointing.DIGEST_FILE)) as f:
    files = json.load(f)['files']
  assert '_METADATA' in files and 'manifest.ocdbt' in files
  manager.close()


def test_a_step_whose_digest_fails_is_never_committed(tmp_path, monkeypatch):
  manager = checkpointing.make_manager(str(tmp_path), keep=5, asynchronous=False)
  def disk_full(directory):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(checkpointing, 'write_digest', disk_full)
  with pytest.raises(OSError, match='No space left'):
    checkpointing.save(manager, 1, _state(1.0))
  manager.reload()
  assert manager.all_steps() == [] and not os.path.exists(_step_dir(tmp_path, 1))


def test_intact_workdir_restores_the_newest_step_exactly(workdir, caplog):
  manager = checkpointing.make_manager(workdir, keep=5)
  state, step = checkpointing.restore(manager, _abstract())
  assert step == 3 and not _warnings(caplog)
  np.testing.assert_array_equal(state.params['head']['bias'], np.arange(40.0) + 3)
  assert isinstance(state, TinyState)


@pytest.mark.parametrize('corrupt, problem', [
    (_truncate, 'bytes instead of'),
    (_delete_metadata, 'state/_METADATA is missing'),
    (_delete_manifests, 'manifest.ocdbt is missing'),
    (_flip_64_bytes, 'does not match its SHA-256 digest'),
])
def test_corrupt_newest_step_falls_back_with_one_warning(workdir, caplog, corrupt, problem):
  corrupt(workdir)
  manager = checkpointing.make_manager(workdir, keep=5)
  state, step = checkpointing.restore(manager, _abstract())
  assert step == 2
  np.testing.assert_array_equal(state.banks[0], np.full((2, 64), 2.0))
  warnings = _warnings(caplog)
  assert len(warnings) == 1, warnings
  assert 'step 3' in warnings[0] and problem in warnings[0]
  assert 'falling back to step 2' in warnings[0]


def test_digest_mismatch_is_detected(workdir, caplog):
  digest_path = os.path.join(_step_dir(workdir, 3), 'state', checkpointing.DIGEST_FILE)
  with open(digest_path) as f:
    record = json.load(f)
  record['files']['_METADATA']['sha256'] = '0' * 64
  with open(digest_path, 'w') as f:
    json.dump(record, f)
  assert 'does not match' in checkpointing.verify_step(_step_dir(workdir, 3))
  manager = checkpointing.make_manager(workdir, keep=5)
  with pytest.raises(checkpointing.CheckpointError, match=r'step 3 .* unusable: file '
                     r'state/_METADATA does not match its SHA-256 digest'):
    checkpointing.restore(manager, _abstract(), step=3)
  assert checkpointing.restore(manager, _abstract())[1] == 2


def test_explicit_step_reads_only_that_step(workdir, monkeypatch):
  for step in (1, 3):  # make every other step unreadable garbage
    for path in glob.glob(os.path.join(_step_dir(workdir, step), '**', '*'), recursive=True):
      if os.path.isfile(path):
        with open(path, 'wb') as f:
          f.write(b'garbage')
  manager = checkpointing.make_manager(workdir, keep=5)
  hashed, restored = [], []
  real_sha, real_restore = checkpointing._sha256, manager.restore
  monkeypatch.setattr(checkpointing, '_sha256',
                      lambda p: hashed.append(str(p)) or real_sha(p))
  monkeypatch.setattr(manager, 'restore',
                      lambda step, **kw: restored.append(step) or real_restore(step, **kw))
  state, step = checkpointing.restore(manager, _abstract(), step=2)
  assert step == 2 and restored == [2]
  assert hashed and all(f'{os.sep}2{os.sep}' in p for p in hashed)
  np.testing.assert_array_equal(state.params['conv']['kernel'], np.full((3, 3, 3, 16), 2.0))


def test_explicit_bad_step_fails_in_one_sentence(workdir):
  _truncate(workdir)
  manager = checkpointing.make_manager(workdir, keep=5)
  with pytest.raises(checkpointing.CheckpointError) as info:
    checkpointing.restore(manager, _abstract(), step=3)
  message = str(info.value)
  assert 'step 3' in message and 'bytes instead of' in message and '\n' not in message
  with pytest.raises(checkpointing.CheckpointError, match='available steps: \\[1, 2, 3\\]'):
    checkpointing.restore(manager, _abstract(), step=7)


def test_no_usable_step_lists_each_problem(workdir):
  for step in (1, 2, 3):
    os.remove(os.path.join(_step_dir(workdir, step), 'state', '_METADATA'))
  manager = checkpointing.make_manager(workdir, keep=5)
  with pytest.raises(checkpointing.CheckpointError, match='No usable checkpoint') as info:
    checkpointing.restore(manager, _abstract())
  assert all(f'step {s} (' in str(info.value) for s in (1, 2, 3))


def _remove_digests(workdir, step):
  for item in checkpointing.ITEMS:
    os.remove(os.path.join(_step_dir(workdir, step), item, checkpointing.DIGEST_FILE))


def test_newest_step_without_digest_is_skipped_in_one_sentence(workdir, caplog):
  _remove_digests(workdir, 3)
  _flip_64_bytes(workdir)  # what an undigested step may hide
  manager = checkpointing.make_manager(workdir, keep=5)
  state, step = checkpointing.restore(manager, _abstract())
  assert step == 2
  np.testing.assert_array_equal(state.banks[0], np.full((2, 64), 2.0))
  warnings = _warnings(caplog)
  assert len(warnings) == 1 and '\n' not in warnings[0], warnings
  assert 'step 3' in warnings[0] and 'no digest' in warnings[0]
  assert 'falling back to step 2' in warnings[0] and '--allow_unverified' in warnings[0]


def test_allow_unverified_restores_a_step_without_digest(workdir, caplog):
  _remove_digests(workdir, 3)
  manager = checkpointing.make_manager(workdir, keep=5)
  state, step = checkpointing.restore(manager, _abstract(), allow_unverified=True)
  assert step == 3 and float(state.banks[0][0, 0]) == 3.0
  assert any('restoring it anyway' in w for w in _warnings(caplog))
  with pytest.raises(checkpointing.CheckpointError,
                     match='step 3 .* no digest.*pass --allow_unverified'):
    checkpointing.restore(manager, _abstract(), step=3)
  assert checkpointing.restore(manager, _abstract(), step=3, allow_unverified=True)[1] == 3


def test_only_unverified_steps_is_one_sentence_naming_the_flag(workdir):
  for step in (1, 2, 3):
    _remove_digests(workdir, step)
  manager = checkpointing.make_manager(workdir, keep=5)
  with pytest.raises(checkpointing.CheckpointError,
                     match='No usable checkpoint .*pass --allow_unverified') as info:
    checkpointing.restore(manager, _abstract())
  assert '\n' not in str(info.value)


def test_digest_of_an_older_version_is_still_checked(workdir, caplog):
  _remove_digests(workdir, 3)
  checkpointing.write_digest(_step_dir(workdir, 3))  # <step>/DIGEST_FILE, as before
  manager = checkpointing.make_manager(workdir, keep=5)
  assert checkpointing.restore(manager, _abstract())[1] == 3 and not _warnings(caplog)
  _flip_64_bytes(workdir)
  assert checkpointing.restore(manager, _abstract())[1] == 2
  assert 'does not match its SHA-256 digest' in _warnings(caplog)[0]


@pytest.mark.parametrize('spoil', [_flip_64_bytes, lambda w: _remove_digests(w, 3)])
def test_quarantine_moves_the_bad_step_so_it_can_be_saved_again(workdir, spoil):
  spoil(workdir)
  manager = checkpointing.make_manager(workdir, keep=5, asynchronous=False)
  assert checkpointing.restore(manager, _abstract(), quarantine=True)[1] == 2
  assert manager.all_steps() == [1, 2]
  assert glob.glob(os.path.join(workdir, checkpointing.QUARANTINE_DIR, '3-*'))
  checkpointing.save(manager, 3, _state(30.0))
  checkpointing.finalize(manager)
  state, step = checkpointing.restore(manager, _abstract())
  assert step == 3 and float(state.banks[0][0, 0]) == 30.0


def test_a_reader_creates_and_cleans_up_nothing(workdir, tmp_path):
  in_flight = os.path.join(workdir, 'checkpoints', '4.orbax-checkpoint-tmp')
  os.makedirs(in_flight)  # a save of the training that runs beside the reader
  reader = checkpointing.make_manager(workdir, keep=1, read_only=True)
  assert checkpointing.restore(reader, _abstract())[1] == 3
  assert os.path.isdir(in_flight)
  empty = tmp_path / 'no_run'
  empty.mkdir()
  assert checkpointing.make_manager(str(empty), keep=1, read_only=True).latest_step() is None
  assert not os.listdir(empty)


def test_changed_shape_raises_incompatible_naming_leaf_and_shapes(workdir, caplog):
  manager = checkpointing.make_manager(workdir, keep=5)
  with pytest.raises(checkpointing.IncompatibleCheckpointError) as info:
    checkpointing.restore(manager, _abstract(width=8))
  message = str(info.value)
  assert "'params/conv/kernel'" in message
  assert '(3, 3, 3, 16)' in message and '(3, 3, 3, 8)' in message
  assert '\n' not in message
  assert not _warnings(caplog)  # not a corruption: no fallback to older steps


def test_changed_structure_raises_incompatible(workdir):
  @flax.struct.dataclass
  class Wider(TinyState):
    extra: jax.Array = None

  abstract = jax.eval_shape(lambda: Wider(**vars(_state(0.0)), extra=jnp.zeros(3)))
  manager = checkpointing.make_manager(workdir, keep=5)
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match="no leaf 'extra'"):
    checkpointing.restore(manager, abstract, step=2)


def test_quiet_library_logs_drops_orbax_info_but_keeps_ours(tmp_path, monkeypatch):
  monkeypatch.delenv('TF_CPP_MIN_LOG_LEVEL', raising=False)
  seen = []

  class Collect(logging.Handler):
    def emit(self, record):
      seen.append(record)

  absl_logger = logging.getLogger('absl')
  handler, old_level, old_filters = Collect(), absl_logger.level, list(absl_logger.filters)
  old_levels = {name: logging.getLogger(name).level for name in logs.LIBRARY_LOGGERS}
  absl_logger.addHandler(handler)
  absl_logger.setLevel(logging.INFO)
  try:
    manager = checkpointing.make_manager(str(tmp_path), keep=2, asynchronous=False)
    checkpointing.save(manager, 1, _state(1.0))
    assert any(os.sep + 'orbax' + os.sep in r.pathname for r in seen)  # noisy by default
    seen.clear()
    logs.quiet_library_logs(verbosity=0)
    checkpointing.save(manager, 2, _state(2.0))
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.info('our own progress line')
    assert [r.getMessage() for r in seen] == ['our own progress line']
    assert os.environ['TF_CPP_MIN_LOG_LEVEL'] == '1'
    assert logging.getLogger('jax._src').level == logging.WARNING
    logs.quiet_library_logs(verbosity=1)  # --verbosity=1 lets library INFO through again
    seen.clear()
    checkpointing.save(manager, 3, _state(3.0))
    assert any(os.sep + 'orbax' + os.sep in r.pathname for r in seen)
  finally:
    absl_logger.removeHandler(handler)
    absl_logger.setLevel(old_level)
    absl_logger.filters[:] = old_filters
    for name, level in old_levels.items():
      logging.getLogger(name).setLevel(level)


KILLED_WHILE_SAVING = '''
import os, signal, sys
sys.path.insert(0, {root!r})
import jax.numpy as jnp
from ctt_jax import checkpointing
manager = checkpointing.make_manager({workdir!r}, keep=5)
for step in (1, 2, 3, 4):
  state = {{'w': jnp.full((2_000_000,), float(step)), 'step': jnp.int32(step)}}
  checkpointing.save(manager, step, state)  # waits for the previous save to commit
os.kill(os.getpid(), signal.SIGKILL)  # step 4 is still being written in the background
'''


def test_sigkill_while_saving_leaves_only_verified_steps(tmp_path, caplog):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = str(tmp_path / 'killed')
  proc = subprocess.run([sys.executable, '-c',
                         KILLED_WHILE_SAVING.format(root=root, workdir=workdir)],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == -9, proc.stderr[-2000:]
  manager = checkpointing.make_manager(workdir, keep=5)
  assert manager.all_steps()[:3] == [1, 2, 3]
  for step in manager.all_steps():  # 4 too, if orbax committed it before the kill
    assert checkpointing.verify_step(_step_dir(workdir, step)) is None
  abstract = jax.eval_shape(lambda: {'w': jnp.zeros((2_000_000,)), 'step': jnp.int32(0)})
  state, step = checkpointing.restore(manager, abstract)
  assert step == manager.all_steps()[-1] and not _warnings(caplog)
  assert float(state['w'][-1]) == step
