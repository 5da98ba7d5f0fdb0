"""main.py end to end on the synthetic set with a tiny model: events, checkpoints, eval
JSON, exact resume, SIGKILL, SIGTERM and a double Ctrl-C while saving, NaN stop, missing
dataset, the workdir lock, refused resumes, command-line and config errors, a finished
rerun, a read-only eval, an eval without a run, unverified checkpoints, the memory-bank
warning."""
import glob
import json
import logging
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import cityscapes, demo
from ctt_jax import checkpointing, data, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ('model.width=4,model.feature_dim=8,bank_size=4,batch_size=2,'
        'data.crop_size=32x32,data.synthetic_image_size=32x32,data.eval_batch_size=16,'
        'total_steps=4,log_every=2,eval_every=4,checkpoint_every=2,image_summaries=2')


def _config(extra=''):
  return demo.get_config(TINY + (',' + extra if extra else ''))


def _final_params(workdir):
  manager = checkpointing.make_manager(workdir, keep=3, asynchronous=False)
  state, step = checkpointing.read_raw(manager)
  return step, jax.tree.leaves(state['params'])


def _scalar_and_image_tags(workdir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={'tensors': 0})
  acc.Reload()
  return set(acc.Tags()['tensors']) | set(acc.Tags()['scalars']), set(acc.Tags()['images'])


STRAIGHT_RUN_WARNINGS = []  # what the straight run logged at WARNING


class _Collect(logging.Handler):
  def emit(self, record):
    if record.levelno >= logging.WARNING:
      STRAIGHT_RUN_WARNINGS.append(record.getMessage())


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """The one trained tiny run of this module (4 steps); its warnings are kept."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  collect = _Collect()
  logging.getLogger('absl').addHandler(collect)
  try:
    results = train.train_and_evaluate(_config(), workdir)
  finally:
    logging.getLogger('absl').removeHandler(collect)
  return workdir, results


def test_run_writes_events_checkpoints_and_eval_json(straight_run):
  workdir, results = straight_run
  assert 0.0 <= results[results['best']]['miou'] <= 1.0
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4'))
  with open(os.path.join(workdir, 'eval', 'step_00000004.json')) as f:
    saved = json.load(f)
  assert 'teacher_0' in json.dumps(saved) and 'student_1' in json.dumps(saved)
  scalar_tags, _ = _scalar_and_image_tags(workdir)
  for tag in ('train/loss', 'train/loss_ct', 'train/lr', 'train/bank_fill',
              'train/steps_per_sec', 'val/miou_teacher_0'):
    assert tag in scalar_tags, (tag, sorted(scalar_tags))
  assert glob.glob(os.path.join(workdir, 'labeled_ids*'))


def test_image_summaries_are_written(straight_run):
  workdir, _ = straight_run
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={'tensors': 0})
  acc.Reload()
  tensors = acc.Tags()['tensors']
  # The tag names the panels left to right: input, truth, then each network.
  assert any(t.startswith('val/input_truth_student_0_student_1_teacher_0_teacher_1')
             for t in tensors), tensors


def test_half_run_plus_restart_equals_straight_run(straight_run, tmp_path):
  workdir, _ = straight_run
  resumed = str(tmp_path / 'resumed')
  train.train_and_evaluate(_config('stop_at_step=2'), resumed)
  assert _final_params(resumed)[0] == 2
  train.train_and_evaluate(_config(), resumed)
  step_a, params_a = _final_params(workdir)
  step_b, params_b = _final_params(resumed)
  assert step_a == step_b == 4
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(a, b)  # bitwise on CPU: same programs, same data


def _main(workdir, config_arg, check=True, program=('main.py',)):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, program[0]), *program[1:],
       f'--config={os.path.join(ROOT, "configs", "demo.py")}:{config_arg}',
       f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True, timeout=900)
  if check:
    assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_sigkill_while_saving_leaves_a_resumable_workdir(straight_run, tmp_path):
  workdir, _ = straight_run
  killed = str(tmp_path / 'killed')
  # Killed while the save of step 3 is in flight (checkpoint_every=1, a safe change).
  proc = _main(killed, TINY + ',checkpoint_every=1', check=False,
               program=('tests/signal_after_save.py', 'KILL', '3'))
  assert proc.returncode == -9, proc.stderr[-3000:]
  saved = checkpointing.make_manager(killed, keep=3, read_only=True).latest_step()
  assert saved in (2, 3)  # 3 only if orbax committed it before the kill
  proc = _main(killed, TINY)
  assert f'Resumed from the checkpoint of step {saved} in' in proc.stderr, proc.stderr[-3000:]
  assert 'parameters per student' not in proc.stderr  # logged only by a run from step 0
  step_a, params_a = _final_params(workdir)
  step_b, params_b = _final_params(killed)
  assert step_a == step_b == 4
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(tmp_path):
  workdir = str(tmp_path / 'nan')
  with pytest.raises(train.NonFiniteLossError, match='last good checkpoint'):
    train.train_and_evaluate(_config('lr=1e30,checkpoint_every=1,eval_every=100'), workdir)
  manager = checkpointing.make_manager(workdir, keep=3, asynchronous=False)
  assert manager.latest_step() is not None
  leaves = jax.tree.leaves(checkpointing.read_raw(manager)[0]['params'])
  assert all(np.all(np.isfinite(x)) for x in leaves)


def test_missing_dataset_is_one_sentence_before_anything_is_built(tmp_path):
  nowhere = tmp_path / 'nowhere'
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'),
       f'--config={os.path.join(ROOT, "configs", "cityscapes.py")}:1_30,'
       f'data.data_dir={nowhere}', f'--workdir={tmp_path / "new" / "w"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-2000:]
  naming = [line for line in proc.stderr.splitlines() if str(nowhere) in line]
  assert len(naming) == 1 and naming[0].startswith('Error: Cityscapes not found'), naming
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'new').exists()  # nothing created


def test_data_is_found_before_the_model_is_built(tmp_path, monkeypatch):
  def no_model(*args, **kwargs):
    raise AssertionError('the model was built before the data was looked up')
  monkeypatch.setattr(train.models, 'get_model', no_model)
  config = cityscapes.get_config(f'1_30,data.data_dir={tmp_path / "nowhere"}')
  with pytest.raises(data.DataError, match='Cityscapes not found'):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_a_failed_start_leaves_no_directory_it_created(tmp_path):
  workdir = tmp_path / 'new' / 'run'
  with pytest.raises(Exception, match='missing.npz'):  # found after checkpoints/ is made
    train.train_and_evaluate(_config(f'model.pretrained={tmp_path / "missing.npz"}'),
                             str(workdir))
  assert not (tmp_path / 'new').exists()


def test_sigint_twice_checkpoints_once_and_exits_130(tmp_path):
  workdir = str(tmp_path / 'int')
  # Ctrl-C after the save of step 2, and again while the save of step 3 is in flight.
  proc = _main(workdir, TINY, check=False,
               program=('tests/signal_after_save.py', 'INT', '2', 'again'))
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and 'SIGINT received again' in proc.stderr
  assert re.fullmatch(r'SIGINT: stopped at step 3 with a checkpoint in \S+; rerun the same '
                      r'command to resume\.', proc.stderr.splitlines()[-1])
  manager = checkpointing.make_manager(workdir, keep=3, read_only=True)
  assert manager.latest_step() == 3
  assert checkpointing.verify_step(os.path.join(workdir, 'checkpoints', '3')) is None


def test_sigterm_checkpoints_and_exits_143(straight_run, tmp_path, monkeypatch):
  import signal  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'term')
  save = checkpointing.save
  def save_then_sigterm(manager, step, *args, **kwargs):
    save(manager, step, *args, **kwargs)
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
  monkeypatch.setattr(checkpointing, 'save', save_then_sigterm)
  with pytest.raises(train.Interrupted,
                     match='SIGTERM: stopped at step 3 .*rerun the same command') as info:
    train.train_and_evaluate(_config(), workdir)
  assert info.value.exit_status == 143  # main.py exits with it, as for SIGINT above
  manager = checkpointing.make_manager(workdir, keep=3, read_only=True)
  assert manager.latest_step() == 3


def test_second_run_on_a_locked_workdir_is_refused(tmp_path):
  from ctt_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'locked')
  os.makedirs(workdir)
  holder = workdir_lock.WorkdirLock(workdir, command='the first run')
  holder.acquire()
  try:
    with pytest.raises(workdir_lock.WorkdirLockedError, match='the first run'):
      train.train_and_evaluate(_config(), workdir)
  finally:
    holder.release()
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


@pytest.mark.parametrize('change, key', [('lr=0.005', 'lr'), ('model.width=8', 'model.width')])
def test_resume_with_an_incompatible_config_is_refused(straight_run, change, key):
  from ctt_jax import config_validation  # pylint: disable=g-import-not-at-top
  workdir, _ = straight_run
  with pytest.raises(config_validation.ConfigError, match=key.replace('.', r'\.')):
    train.train_and_evaluate(_config(change + ',total_steps=6'), workdir)
  step, _ = _final_params(workdir)
  assert step == 4  # nothing was overwritten


def test_rerun_of_a_finished_run_says_so_and_prints_the_table(straight_run, capsys):
  workdir, results = straight_run
  events = set(glob.glob(os.path.join(workdir, 'events.out.tfevents*')))
  again = train.train_and_evaluate(_config(), workdir)
  out = capsys.readouterr().out
  assert 'already finished' in out and 'Validation mIoU at step 4' in out
  assert again['teacher_0']['miou'] == pytest.approx(results['teacher_0']['miou'])
  assert set(glob.glob(os.path.join(workdir, 'events.out.tfevents*'))) == events


def test_eval_prints_its_table_before_a_failed_write(straight_run, monkeypatch, capsys):
  from ctt_jax import metrics  # pylint: disable=g-import-not-at-top
  workdir, results = straight_run
  def read_only(*args, **kwargs):
    raise PermissionError(30, 'Read-only file system')
  monkeypatch.setattr(metrics, 'write_eval_json', read_only)
  evaluated = train.evaluate_checkpoint(_config(), workdir, step=4)
  assert 'Validation mIoU at step 4' in capsys.readouterr().out
  assert evaluated['teacher_0']['miou'] == pytest.approx(results['teacher_0']['miou'])


def test_eval_of_a_folder_without_a_run_creates_nothing(tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint in .*; train first'):
    train.evaluate_checkpoint(_config(), str(tmp_path))
  assert not os.listdir(tmp_path)


def _copy_without_digests_of_step_4(workdir, target):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(workdir, target)
  for item in checkpointing.ITEMS:
    os.remove(os.path.join(target, 'checkpoints', '4', item, checkpointing.DIGEST_FILE))
  return str(target)


def test_eval_skips_an_unverified_step_unless_allowed(straight_run, tmp_path, caplog, capsys):
  workdir = _copy_without_digests_of_step_4(straight_run[0], tmp_path / 'copy')
  train.evaluate_checkpoint(_config(), workdir)
  assert 'Validation mIoU at step 2' in capsys.readouterr().out
  skipped = [r.getMessage() for r in caplog.records if 'step 4' in r.getMessage()]
  assert len(skipped) == 1 and 'no digest' in skipped[0], skipped
  assert 'falling back to step 2' in skipped[0] and '--allow_unverified' in skipped[0]
  train.evaluate_checkpoint(_config(), workdir, allow_unverified=True)
  assert 'Validation mIoU at step 4' in capsys.readouterr().out


def test_resume_never_trains_on_from_an_unverified_step(straight_run, tmp_path):
  workdir = _copy_without_digests_of_step_4(straight_run[0], tmp_path / 'copy')
  data_files = glob.glob(os.path.join(workdir, 'checkpoints', '4', 'state', '**', 'd', '*'),
                         recursive=True)
  path = max(data_files, key=os.path.getsize)
  corrupt = bytearray(open(path, 'rb').read())
  corrupt[len(corrupt) // 2:len(corrupt) // 2 + 64] = bytes(64)  # undetectable without digest
  with open(path, 'wb') as f:
    f.write(corrupt)
  train.train_and_evaluate(_config(), workdir)  # falls back to step 2, trains 2 -> 4 again
  assert glob.glob(os.path.join(workdir, checkpointing.QUARANTINE_DIR, '4-*'))  # kept
  _, params_a = _final_params(straight_run[0])
  step_b, params_b = _final_params(workdir)
  assert step_b == 4
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(a, b)


def test_bank_warning_fires_for_an_empty_queue_not_for_filling_ones():
  names = ('background', 'rectangle', 'disk', 'triangle', 'stripes')
  # The demo's banks at step 50 of 300 (bank_size 32), measured: filling, none empty.
  filling = np.array([[32, 32, 32, 32, 32], [32, 32, 32, 32, 5]])
  assert train.banks_cannot_fill(50, filling, names, contrastive_start_step=-1) is None
  never_seen = filling.copy()
  never_seen[1, 2] = 0
  warning = train.banks_cannot_fill(50, never_seen, names, contrastive_start_step=-1)
  assert "class 'disk' is still empty" in warning and 'contrastive_start_step' in warning
  assert train.banks_cannot_fill(50, never_seen, names, contrastive_start_step=0) is None


def test_the_run_warns_only_about_classes_whose_queue_is_empty(straight_run):
  """The loop reads the banks at each log line (step 2 of the tiny run, a tenth of 4 steps
  passed): the warning names exactly the classes whose queue was empty then."""
  workdir, _ = straight_run
  manager = checkpointing.make_manager(workdir, keep=3, read_only=True)
  count = np.asarray(checkpointing.read_raw(manager, 2)[0]['banks']['count'])
  expected = train.banks_cannot_fill(2, count, data.class_info('synthetic')[0], -1)
  logged = [w for w in STRAIGHT_RUN_WARNINGS if w.startswith('HC/LC have not started')]
  assert logged == ([expected] if expected else []), (logged, count)


DEMO = 'configs/demo.py'
PREDICT = ['--mode=predict', '--input={tmp}/in']


@pytest.mark.parametrize('args, expected', [
    ([f'--config={DEMO}', '--config.lamda_ct=2'],
     "--config.lamda_ct=2: 'lamda_ct' is not a config key; did you mean lambda_ct"),
    ([f'--config={DEMO}', '--config.lr=abc'],
     "--config.lr=abc: lr must be a number > 0, not 'abc'."),
    (['--config=configs/demoo.py'], '--config=configs/demoo.py: configs/demoo.py does not '
     'exist (did you mean configs/demo.py?); pass a config file, one of configs/camvid.py'),
    ([f'--config={DEMO}', '--mode=evaluate'], '--mode=evaluate is not one of train, eval, '
     'predict, compile (did you mean --mode=eval?).'),
    ([f'--config={DEMO}', *PREDICT, '--output={tmp}/out', '--network=student_7'],
     '--network=student_7 is not a network of this run; use one of student_0, student_1, '
     'teacher_0, teacher_1 (did you mean student_1?).'),
    ([f'--config={DEMO}', *PREDICT, '--output={tmp}/file'],
     '--output={tmp}/file is a file, not a folder'),
    ([f'--config={DEMO}:' + TINY + ',bank_sise=3'],
     "Unknown config key 'bank_sise'; did you mean bank_size"),
    ([f'--config={DEMO}:phi=high'], "Bad value for config key 'phi'"),
    ([f'--config={DEMO}:2_3'], f"--config={DEMO}:2_3: Unknown partition '2_3' for "
     'synthetic; valid: 1_8, 1_4, 1_2, full.'),
    ([], '--config is required: Config file[:partition,key=value,...].'),
    ([f'--config={DEMO}:total_steps=0'], 'Invalid config: total_steps is 0 but must be'),
    ([f'--config={DEMO}:lr=-1'], 'Invalid config: lr is -1.0 but must be a number > 0'),
    ([f'--config={DEMO}:phi=2'], 'Invalid config: phi is 2.0 but must be'),
    ([f'--config={DEMO}:num_pairs=0'], 'Invalid config: num_pairs is 0 but must be'),
    ([f'--config={DEMO}:method=ctt_typo'], "method is 'ctt_typo' but must be one of 'supervised', "),
    ([f'--config={DEMO}:eval_every=0'], 'eval_every is 0 but must be'),
    ([f'--config={DEMO}', '--config.recipe=authors'], '--config.recipe=authors would rename '
     'the recipe but set none of its keys; choose it in the config argument instead, e.g. '
     '--config=FILE:recipe=authors.'),
    ([f'--config={DEMO}:recipe=autors'], "Unknown recipe 'autors'; valid: paper, authors."),
])
def test_command_line_mistakes_are_one_sentence_before_anything_is_loaded(tmp_path, args,
                                                                          expected):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  (tmp_path / 'in').mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'in' / 'a.png')
  (tmp_path / 'file').write_text('x')
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'),
       *[a.format(tmp=tmp_path) for a in args], f'--workdir={tmp_path / "w"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  # One line: the sentence, printed once, before jax and TensorFlow load (main() logs
  # its first line after that) and before the workdir is touched.
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('Error: '), proc.stderr[-2000:]
  assert expected.format(tmp=tmp_path) in lines[0], lines[0]
  assert not (tmp_path / 'w').exists() and not (tmp_path / 'out').exists()
