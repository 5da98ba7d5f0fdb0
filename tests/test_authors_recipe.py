"""The dataset rows of the authors' recipe: each paper config defaults to the authors' code,
and `recipe=paper` keeps the paper's reading."""
import importlib

import pytest

from configs import common
from ctt_jax import config_validation


def get(name, arg=''):
  return importlib.import_module(f'configs.{name}').get_config(arg or None)


@pytest.mark.parametrize('name', ['cityscapes', 'voc_aug', 'voc_classic'])
def test_weak_view_has_no_flip_in_the_authors_recipe(name):
  assert get(name).data.hflip is False
  assert get(name, 'recipe=paper').data.hflip is True


@pytest.mark.parametrize('name', ['voc_aug', 'voc_classic'])
def test_voc_scale_grid_of_the_authors_loader(name):
  authors, paper = get(name).data, get(name, 'recipe=paper').data
  assert (tuple(authors.scale_range), authors.scale_step) == ((0.5, 1.6), 0.1)
  assert (tuple(paper.scale_range), paper.scale_step) == ((0.5, 1.5), 0.0)


def test_a_scale_step_must_cut_the_range_into_whole_steps():
  problem = config_validation.scale_grid_problem((0.5, 1.6), 0.3)
  assert problem == ('data.scale_step (0.3) must divide the width of data.scale_range '
                     '(0.5, 1.6) into whole steps, or be 0')
  assert config_validation.scale_grid_problem((0.5, 1.6), 0.1) is None
  assert config_validation.scale_grid_problem((0.5, 1.5), 0.0) is None
