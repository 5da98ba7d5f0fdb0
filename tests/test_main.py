"""main.py end to end on the synthetic set with a tiny model: events, checkpoints, eval
JSON, exact resume, SIGKILL while saving, NaN stop, missing dataset."""
import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import demo
from ctt_jax import checkpointing, train

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


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('straight'))
  results = train.train_and_evaluate(_config(), workdir)
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
  assert any('input_truth_predictions' in t for t in tensors), tensors


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


def _main(workdir, config_arg, env_extra=None, check=True):
  env = dict(os.environ, **(env_extra or {}))
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'),
       f'--config={os.path.join(ROOT, "configs", "demo.py")}:{config_arg}',
       f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=900)
  if check:
    assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_sigkill_while_saving_leaves_a_resumable_workdir(straight_run, tmp_path):
  workdir, _ = straight_run
  killed = str(tmp_path / 'killed')
  proc = _main(killed, TINY, {'CTT_DEBUG_SIGKILL_AFTER_SAVE_STEP': '2'}, check=False)
  assert proc.returncode == -9, proc.stderr[-3000:]
  proc = _main(killed, TINY)
  assert 'Resumed from the checkpoint of step' in proc.stderr or 'step 0' not in proc.stderr
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


def test_missing_dataset_ends_with_one_clear_sentence(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'),
       f'--config={os.path.join(ROOT, "configs", "cityscapes.py")}:1_30,'
       f'data.data_dir={tmp_path / "nowhere"}', f'--workdir={tmp_path / "w"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert str(tmp_path / 'nowhere') in proc.stderr
  assert 'Traceback' not in proc.stderr
