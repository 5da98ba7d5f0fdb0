"""Every config builds (get_config + model init with abstract shapes, no data needed)."""
import importlib

import jax
import pytest

from configs import common
from ctt_jax import models, train_state

CONFIGS = {
    'cityscapes': ('1_30', '1_16', '1_8', '1_4', '1_2', 'full'),
    'voc_aug': ('1_50', '1_20', '1_8', '1_4', 'full'),
    'voc_classic': ('1_16', '1_8', '1_4', '1_2'),
    'camvid': ('1_8',),
    'demo': ('1_8',),
}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_config_builds_a_model_and_state_from_shapes(name):
  module = importlib.import_module(f'configs.{name}')
  for split in CONFIGS[name]:
    assert module.get_config(split).data.split == split
  config = module.get_config(CONFIGS[name][0])
  model = models.get_model(config.model, config.num_classes)
  state = train_state.abstract_train_state(config, model, tuple(config.data.crop_size))
  leaves = jax.tree.leaves(state.params)
  assert all(leaf.shape[0] == config.num_pairs for leaf in leaves)
  n_params = sum(leaf.size for leaf in leaves) // config.num_pairs
  assert n_params > 0
  assert state.banks.feats.shape[:3] == (config.num_pairs, config.num_classes,
                                         config.bank_size)


def test_paper_settings_of_the_cityscapes_config():
  config = importlib.import_module('configs.cityscapes').get_config('1_8')
  # The authors' recipe: their bank of 256 per class.
  assert config.recipe == 'authors'
  assert (config.method, config.num_pairs, config.bank_size, config.phi) == ('ctt', 2, 256, .75)
  assert (config.lr, config.momentum, config.weight_decay, config.total_steps) == (
      2.5e-4, 0.9, 5e-4, 80_000)
  assert tuple(config.data.crop_size) == (256, 512) and config.batch_size == 2
  assert (config.model.name, config.model.backbone) == ('deeplabv2', 'resnet101')


def test_overrides_parse_to_the_key_type():
  config = importlib.import_module('configs.cityscapes').get_config(
      '1_8,method=mean_teacher,num_pairs=3,bank_size=512,phi=0.85,use_lc=false,'
      'model.backbone=resnet50,data.crop_size=128x256')
  assert (config.method, config.num_pairs, config.bank_size, config.phi) == (
      'mean_teacher', 3, 512, 0.85)
  assert config.use_lc is False and config.model.backbone == 'resnet50'
  assert tuple(config.data.crop_size) == (128, 256)


def test_unknown_key_and_split_fail_with_the_valid_ones():
  cityscapes = importlib.import_module('configs.cityscapes')
  with pytest.raises(KeyError, match=r"Unknown config key 'bank_szie'.*bank_size"):
    cityscapes.get_config('1_8,bank_szie=3')
  with pytest.raises(ValueError, match=r"Unknown partition '1_7'.*1_30, 1_16"):
    cityscapes.get_config('1_7')
  with pytest.raises(ValueError, match="Bad value for config key 'num_pairs'"):
    cityscapes.get_config('num_pairs=two')
  assert common.split_arg('1_8,a=1') == ('1_8', ['a=1'])
  assert common.split_arg('a=(1,2),1_8,b=[3, 4]') == ('1_8', ['a=(1,2)', 'b=[3, 4]'])
  for text in ('96x128', '(96, 128)', '96:128'):
    assert cityscapes.get_config(f'1_8,data.crop_size={text}').data.crop_size == (96, 128)


def test_a_recipe_sets_its_rows_before_the_other_overrides():
  cityscapes = importlib.import_module('configs.cityscapes')
  authors = cityscapes.get_config('1_8')
  paper = cityscapes.get_config('1_8,phi=0.8,recipe=paper')
  assert paper.recipe == 'paper' and paper.phi == 0.8
  base = common.base_config()
  for key, value in common.RECIPES['authors'].items():
    node_a, node_p, node_b = authors, paper, base
    for part in key.split('.'):
      node_a, node_p, node_b = node_a[part], node_p[part], node_b[part]
    assert node_a == value, key
    assert node_p == node_b, key  # the paper recipe is base_config's reading
  # An override of a row wins over the recipe, wherever it stands in the argument.
  assert cityscapes.get_config('1_8,hc_temperature=0.3').hc_temperature == 0.3
  assert cityscapes.get_config('1_8,hc_temperature=0.3,recipe=paper').hc_temperature == 0.3
  with pytest.raises(ValueError, match=r"Unknown recipe 'autors'; valid: paper, authors"):
    cityscapes.get_config('1_8,recipe=autors')
