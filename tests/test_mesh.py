"""The paper's program on any slice: the (data, space) mesh rule, its equivalence with one
device, and main.py end to end on 8 fake devices with a resume on 8 and on 4."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import cityscapes
from ctt_jax import layout
from tests import dataset_trees

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURE = os.path.join(HERE, 'fixtures', 'cityscapes_mini')


# --- the rule (plain Python) ---


@pytest.mark.parametrize('devices, data, space', [
    (1, 1, 1), (2, 2, 1), (4, 2, 2), (8, 2, 4), (16, 2, 8), (64, 2, 32)])
def test_the_paper_batch_goes_over_data_and_the_rest_over_rows(devices, data, space):
  chosen = layout.plan_for_config(cityscapes.get_config('1_30'), devices)
  assert (chosen.data, chosen.space) == (data, space)


def test_the_batch_takes_every_device_it_can():
  assert layout.plan(8, 16, 256, 32) == layout.Layout(8, 1)
  assert layout.plan(8, 4, 256, 32) == layout.Layout(4, 2)
  assert layout.plan(8, 1, 256, 32) == layout.Layout(1, 8)
  assert layout.plan(8, 2, 256, 32, space=8) == layout.Layout(1, 8)  # one key fixes the other


def test_a_slice_too_large_for_the_batch_names_the_nearest_batch():
  with pytest.raises(layout.LayoutError, match=r'use batch_size=4 \(scaling.rule'):
    layout.plan_for_config(cityscapes.get_config('1_30'), 128)
  with pytest.raises(layout.LayoutError, match='do not split into 3 equal shards'):
    layout.plan(6, 2, 256, 32)
  with pytest.raises(layout.LayoutError, match='use mesh.data=2'):
    layout.plan(8, 2, 256, 32, data=8)


def test_eval_images_split_over_every_device_when_the_batch_cannot():
  mesh = layout.Layout(2, 4)
  assert layout.eval_row_shards(mesh, 1) == 8 and layout.eval_row_shards(mesh, 2) == 4
  layout.check_eval(mesh, 1, 512)
  with pytest.raises(layout.LayoutError, match='data.eval_batch_size=2'):
    layout.check_eval(mesh, 1, 300)


def test_summary_states_the_mesh_and_each_chips_share():
  line = layout.summary(cityscapes.get_config('1_30'), 8)
  assert line == ('8 devices: data 2 x space 4; each chip holds 64 of the 256 rows of 1 '
                  'labeled + 1 unlabeled image per step')


# --- the same numbers on one device and on a mesh of 8 ---


@pytest.fixture(scope='module')
def mesh_cases():
  proc = subprocess.run([sys.executable, os.path.join(HERE, 'mesh_step_check.py'), 'tiny'],
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {c['mesh']: c for c in json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize('mesh', ['2x4', '4x2', '1x8'])
def test_ctt_step_on_a_mesh_matches_one_device(mesh_cases, mesh):
  case = mesh_cases[mesh]
  # Every loss term ran (HC and LC too: the banks filled), and the state moved far more
  # than the tolerance: equal results are not an untrained state compared with itself.
  assert case['loss_keys'] == ['loss', 'loss_ct', 'loss_hc', 'loss_lc', 'loss_sup']
  assert case['bank_fill'] > 0 and case['params_moved'] > 1e-3
  # Sums over devices run in another order: float32 tolerance, not bit equality.
  assert case['loss_diff'] < 1e-5, case
  assert case['state_diff'] < 1e-5, case
  assert case['bank_diff'] < 1e-5, case
  assert case['bank_counts_equal'], case
  assert case['traces'] == 1


@pytest.mark.parametrize('mesh', ['2x4', '4x2', '1x8'])
def test_eval_step_on_a_mesh_gives_the_same_confusion_matrices(mesh_cases, mesh):
  case = mesh_cases[mesh]
  names = [k for k in case if k.startswith('eval_') and k.endswith('_equal')]
  assert names and (mesh != '2x4' or len(names) == 3)
  for name in names:
    assert case[name], (name, case)
    assert case[name.replace('_equal', '_pixels')] > 0


# --- main.py with the paper's config, 8 fake devices, resumed on 8 and 4 ---
# The paper's batch (2 + 2), method and schedule with a tiny net on the fixture frame at
# its own 128x256 size (crops of 64x128: a quarter of the rows and columns of the paper's
# 256x512, so a step takes seconds on CPU); the mesh rule lays it out as data 2 x space 4.


def _main(workdir, tree, devices, extra):
  arg = ','.join(['1_30', 'model.name=tiny', 'model.width=4', 'model.feature_dim=8',
                  f'data.data_dir={tree["data_dir"]}', f'data.splits_dir={tree["splits_dir"]}',
                  'data.source=folder', 'data.resize=128x256', 'data.crop_size=64x128',
                  'total_steps=3', 'checkpoint_every=2', 'eval_every=3', 'log_every=1',
                  'image_summaries=0', *extra])
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
                       '--xla_backend_optimization_level=0')
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'),
       f'--config={os.path.join(ROOT, "configs", "cityscapes.py")}:{arg}',
       f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True, timeout=900,
      env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _params(workdir):
  """(step, param leaves) of the newest checkpoint, read onto this process's one device
  (it was written on 8 or 4)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from ctt_jax import checkpointing  # pylint: disable=g-import-not-at-top
  manager = checkpointing.make_manager(workdir, keep=3, asynchronous=False)
  step = manager.latest_step()
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                        manager.item_metadata(step)['state'])
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))['state']
  return step, [np.asarray(x) for x in jax.tree.leaves(state['params'])]


def test_main_trains_the_paper_config_on_8_devices_and_resumes_as_1x8_and_on_4(tmp_path):
  tree = dataset_trees.write_cityscapes_tree(str(tmp_path / 'cs'), FIXTURE, extra_train=2)
  dataset_trees.write_list(os.path.join(tree['splits_dir'], 'cityscapes', '1_30.txt'),
                     [tree['id']])
  first = str(tmp_path / 'eight')
  proc = _main(first, tree, 8, ['stop_at_step=2'])
  assert ('8 devices: data 2 x space 4; each chip holds 16 of the 64 rows of 1 labeled + '
          '1 unlabeled image per step.') in proc.stdout
  assert _params(first)[0] == 2
  second = str(tmp_path / 'four')
  shutil.copytree(first, second)
  # The same run continues on another layout of the same slice and on half the slice.
  on_eight = _main(first, tree, 8, ['mesh.data=1'])
  on_four = _main(second, tree, 4, [])
  assert '8 devices: data 1 x space 8' in on_eight.stdout
  assert 'mesh.data 0 -> 1' in on_eight.stderr  # a safe change, logged
  assert '4 devices: data 2 x space 2' in on_four.stdout
  for proc in (on_eight, on_four):
    assert 'Resumed from the checkpoint of step 2' in proc.stderr
    assert re.search(r'Validation mIoU at step 3', proc.stdout), proc.stdout[-2000:]
  step_8, params_8 = _params(first)
  step_4, params_4 = _params(second)
  assert step_8 == step_4 == 3
  for a, b in zip(params_8, params_4):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # the same run, resumed
