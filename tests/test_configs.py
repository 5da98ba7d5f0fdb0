"""Every config builds (get_config + model init with abstract shapes, no data needed), and
each paper config's docstring gives the paper's mIoU and commands that build."""
import importlib
import os
import shlex

import jax
import pytest

from configs import common
from ctt_jax import config_validation, models, train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


# The paper's mIoU of CTT for each split: Cityscapes (Table 1), VOC aug (2), classic VOC (3).
PAPER_MIOU = {
    'cityscapes': ('Table 1', {'1_30': '59.53', '1_8': '64.04', '1_4': '65.83',
                               '1_2': '67.83'}),
    'voc_aug': ('Table 2', {'1_50': '69.24', '1_20': '72.02', '1_8': '73.66', '1_4': '75.07'}),
    'voc_classic': ('Table 3', {'1_16': '64.00', '1_8': '71.05', '1_4': '72.36',
                                '1_2': '76.13'}),
}


def _commands(doc):
  """The `python main.py ...` commands of a docstring as argv lists (continuations joined)."""
  lines = doc.replace('\\\n', ' ').splitlines()
  return [shlex.split(line) for line in lines if line.strip().startswith('python main.py')]


@pytest.mark.parametrize('name', sorted(PAPER_MIOU))
def test_paper_config_docstring_gives_the_paper_miou_and_commands_that_build(name):
  module = importlib.import_module(f'configs.{name}')
  doc = module.__doc__
  table, miou = PAPER_MIOU[name]
  assert table in doc and 'No paper-scale run of ctt-jax exists yet' in doc
  for split, value in miou.items():  # the split's row of the docstring's table
    row = [line for line in doc.splitlines() if line.split()[:1] == [split]]
    assert len(row) == 1 and value in row[0], (split, row)
  assert all(split in doc for split in module.SPLITS)
  recipes = set()
  for argv in _commands(doc):
    assert any(a.startswith('--workdir=') for a in argv), argv
    spec = [a.partition('=')[2] for a in argv if a.startswith('--config=')]
    config = common.from_file(spec[0], ROOT)  # as main.py's --config reads it
    assert config.data.split in module.SPLITS
    config_validation.validate(config, device_count=1, process_count=1)
    recipes.add(config.recipe)
  assert recipes == {'authors', 'paper'}  # the default recipe's command and recipe=paper


@pytest.mark.parametrize('name, dataset', [
    ('cityscapes', 'cityscapes'), ('voc_aug', 'voc_aug'), ('voc_classic', 'voc_classic'),
    ('camvid', 'camvid'), ('demo', 'synthetic')])
def test_each_config_writes_the_data_settings_tests_and_benchmarks_use(name, dataset):
  """common.DATASETS builds data configs without a config file; the files agree with it."""
  config = importlib.import_module(f'configs.{name}').get_config('recipe=paper')
  expected = common.apply_dataset_defaults(common.base_config(), dataset)
  for key in [*common.DATASETS[dataset], 'data.name', 'scaling.base_batch_size']:
    node_c, node_e = config, expected
    for part in key.split('.'):
      node_c, node_e = node_c[part], node_e[part]
    assert node_c == node_e, key
