"""The config checked up front: one table for every key, each user error one sentence, and
which keys a resume may change."""
import json
import os
import subprocess
import sys

import pytest

from configs import camvid, cityscapes, common, demo, voc_aug, voc_classic
from ctt_jax import config_validation as cv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _error(config, devices=1, processes=1) -> str:
  with pytest.raises(cv.ConfigError) as info:
    cv.validate(config, device_count=devices, process_count=processes)
  message = str(info.value)
  assert '\n' not in message and message.endswith('.')
  return message


def test_schema_has_exactly_the_keys_of_base_config():
  keys = set(cv.flatten(common.base_config()))
  assert keys - set(cv.SCHEMA) == set(), 'add these keys to config_validation.SCHEMA'
  assert set(cv.SCHEMA) - keys == set(), 'SCHEMA names keys base_config() lacks'


def test_choices_match_the_library():
  from ctt_jax import methods  # pylint: disable=g-import-not-at-top
  from ctt_jax.models import deeplab, resnet  # pylint: disable=g-import-not-at-top
  assert set(cv.METHODS) == set(methods.METHOD_NAMES)
  assert set(cv.SCHEMA['bank_push'].choices) == set(methods.BANK_PUSH_MODES)
  assert set(cv.LAYOUTS) == set(resnet.LAYOUTS)
  assert set(cv.BACKBONES) == set(resnet.DEPTHS)
  assert set(cv.SCHEMA['model.remat'].choices) == set(resnet.REMAT_MODES)
  assert set(cv.SCHEMA['model.head'].choices) == set(deeplab.DEEPLABV2_HEADS)
  assert set(cv.DATASETS) == set(common.DATASETS)


@pytest.mark.parametrize('module, splits', [
    (demo, demo.SPLITS), (cityscapes, cityscapes.SPLITS), (voc_aug, voc_aug.SPLITS),
    (voc_classic, voc_classic.SPLITS), (camvid, camvid.SPLITS)])
def test_every_shipped_config_is_valid(module, splits):
  for split in splits:
    cv.validate(module.get_config(split), device_count=1, process_count=1)


def test_importing_it_loads_neither_jax_nor_tensorflow():
  code = ('import sys; import ctt_jax.config_validation; '
          'print(sorted(m for m in ("jax", "tensorflow") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == '[]'


def test_unknown_key_gets_did_you_mean():
  config = demo.get_config().to_dict()
  config['lamda_ct'] = 1.0  # a typo in a config file (overrides are refused by common.update)
  message = _error(config)
  assert "lamda_ct is not a config key (did you mean lambda_ct" in message
  assert cv.suggest('model.widht', list(cv.SCHEMA))[0] == 'model.width'
  assert cv.suggest('width', list(cv.SCHEMA)) == ['model.width']
  assert cv.suggest('eval_evry', list(cv.SCHEMA))[0] == 'eval_every'
  assert cv.suggest('zzzz', list(cv.SCHEMA)) == []


@pytest.mark.parametrize('override, expected', [
    ('num_pairs=0', 'num_pairs is 0 but must be an integer >= 1'),
    ('eval_every=0', 'eval_every is 0 but must be an integer >= 1'),
    ('log_every=0', 'log_every is 0 but must be an integer >= 1'),
    ('checkpoint_every=-1', 'checkpoint_every is -1 but must be an integer >= 1'),
    ('total_steps=-5', 'total_steps is -5 but must be an integer >= 1'),
    ('phi=2', 'phi is 2.0 but must be a number in [0, 1]'),
    ('ema_decay=1.0', 'ema_decay is 1.0 but must be a number in [0, 1)'),
    ('hc_temperature=0', 'hc_temperature is 0.0 but must be a number > 0'),
    ('lambda_hc=-0.1', 'lambda_hc is -0.1 but must be a number >= 0'),
    ('bank_size=0', 'bank_size is 0 but must be an integer >= 1'),
    ('lr=0', 'lr is 0.0 but must be a number > 0'),
    ('data.crop_size=0x64', 'data.crop_size is (0, 64) but must be two integers > 0'),
    ('k_per_step=0', 'k_per_step is 0 but must be an integer >= 1 or -1'),
    ('method=ctx', "method is 'ctx' (did you mean 'ctt'?) but must be one of 'supervised'"),
    ('unlabeled_aug=mixup', "unlabeled_aug is 'mixup' but must be one of 'classmix', "
                            "'cutmix', 'none'"),
    ('model.name=deeplabv3', "model.name is 'deeplabv3' (did you mean"),
    ('data.eval_protocol=fast', "data.eval_protocol is 'fast' but must be one of 'paper'"),
    ('model.conv_impl=cudnn', "model.conv_impl is 'cudnn' but must be one of 'auto'"),
    ('model.dtype=float16', "model.dtype is 'float16' (did you mean 'bfloat16'?)"),
    ('ct_weighting=all', "ct_weighting is 'all' but must be one of"),
    ('bank_push=never', "bank_push is 'never' but must be one of"),
    ('data.source=gcs', "data.source is 'gcs' but must be one of 'auto', 'tfds', 'folder'"),
    ('method=self_training', 'method=self_training needs self_training_teacher_workdir'),
    ('data.scale_range=1.5x0.5', 'data.scale_range is (1.5, 0.5) but its first value'),
    ('ignore_label=3', 'ignore_label is 3 but that is one of the 5 classes (use 255)'),
    ('stop_at_step=5000', 'stop_at_step (5000) is beyond total_steps (1500)'),
])
def test_each_user_error_is_one_sentence(override, expected):
  assert expected in _error(demo.get_config(override))


def test_a_config_that_cannot_be_laid_out_is_one_sentence_with_the_fix():
  # The paper's batch of 2 lays out on 8 devices (data 2 x space 4), on any process count.
  cv.validate(cityscapes.get_config('1_30'), device_count=8, process_count=2)
  cv.validate(cityscapes.get_config('1_30'), device_count=8, process_count=8)
  # 128 devices would split a 256-row crop into 64 row shards: its feature map has 32.
  message = _error(cityscapes.get_config('1_30'), devices=128, processes=32)
  assert '64 row shards are more than the 32 rows of the feature map' in message
  assert 'use batch_size=4' in message
  message = _error(cityscapes.get_config('1_30,mesh.data=4'), devices=8)
  assert 'batch_size=2 does not split over 4 devices; use mesh.data=2' in message
  message = _error(cityscapes.get_config('1_30,mesh.data=2,mesh.space=2'), devices=8)
  assert 'make 4 devices but the run has 8' in message


def test_wrong_types_are_named():
  config = common.base_config().to_dict()
  config['num_pairs'] = 2.5
  config['use_ct'] = 'yes'
  config['model']['output_stride'] = 12
  message = _error(config)
  assert 'num_pairs is 2.5 but must be an integer >= 1' in message
  assert "use_ct is 'yes' but must be true or false" in message
  assert 'model.output_stride is 12 but must be 8, 16 or 32' in message


def test_all_problems_in_one_sentence_and_listed():
  with pytest.raises(cv.ConfigError) as info:
    cv.validate(demo.get_config('num_pairs=0,phi=2'), device_count=1, process_count=1)
  assert len(info.value.problems) == 2
  assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- resume


def _stored(config):
  """What config.json holds: JSON, so tuples come back as lists."""
  return json.loads(config.to_json_best_effort())


def test_same_config_resumes_without_differences():
  config = demo.get_config()
  assert cv.compare_for_resume(_stored(config), config) == ([], [])


def test_unsafe_and_safe_differences():
  stored = _stored(demo.get_config())
  current = demo.get_config('lr=0.005,model.width=8,total_steps=3000,eval_every=100,'
                            'data.eval_batch_size=16')
  unsafe, safe = cv.compare_for_resume(stored, current)
  assert [d.key for d in unsafe] == ['lr', 'model.width']
  assert {d.key for d in safe} == {'total_steps', 'eval_every', 'data.eval_batch_size'}
  error = cv.resume_error('/runs/a', unsafe)
  message = str(error)
  assert 'lr 0.02 -> 0.005' in message and 'model.width 16 -> 8' in message
  assert '/runs/a/config.json' in message and '\n' not in message
  assert cv.describe(safe).count('->') == 3


def test_keys_added_or_removed_by_a_code_update_are_safe():
  stored = _stored(demo.get_config())
  del stored['model']['remat']
  stored['retired_key'] = 1
  unsafe, safe = cv.compare_for_resume(stored, demo.get_config())
  assert unsafe == []
  assert {(d.key, d.stored, d.current) for d in safe} == {
      ('model.remat', cv.ABSENT, ''), ('retired_key', 1, cv.ABSENT)}


def test_safe_keys_exist():
  assert cv.SAFE_ON_RESUME <= set(cv.SCHEMA)


def test_paper_backbone_without_weights_warns_and_camvid_does_not():
  warned = cv.warnings(cityscapes.get_config('1_30'))
  assert len(warned) == 1 and 'FROM SCRATCH' in warned[0] and 'resnet101' in warned[0]
  assert not cv.warnings(cityscapes.get_config('1_30,model.pretrained=w.npz'))
  assert not cv.warnings(camvid.get_config())  # small, from scratch by design
