"""The dataset rows of the authors' recipe: each paper config defaults to the authors' code,
and `recipe=paper` keeps the paper's reading."""
import importlib

import jax.numpy as jnp
import numpy as np
import pytest

from ctt_jax import config_validation
from ctt_jax import resize_normalize


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


# One known pixel, R, G, B = (200, 100, 50), through each loader of the authors' code.
PIXEL_RGB = np.array([200.0, 100.0, 50.0])
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])


def authors_cityscapes_input(rgb):
  """data/cityscapes_loader.py `transform`: img[:, :, ::-1] (RGB -> BGR), img -= mean."""
  return rgb[::-1] - np.array([73.15835921, 82.90891754, 72.39239876])


def authors_voc_input(rgb):
  """data/voc_dataset.py: cv2.imread (BGR), image -= mean, image[:, :, ::-1] (-> RGB)."""
  return (rgb[::-1] - CAFFE_MEAN_BGR)[::-1]


@pytest.mark.parametrize('name, reference', [
    ('cityscapes', authors_cityscapes_input),
    ('voc_aug', authors_voc_input),
    ('voc_classic', authors_voc_input)])
def test_network_input_of_a_known_pixel_is_the_authors_loaders(name, reference):
  x = resize_normalize.normalizer(get(name))(jnp.asarray(PIXEL_RGB / 255, jnp.float32))
  np.testing.assert_allclose(np.asarray(x), reference(PIXEL_RGB), atol=1e-3)


def test_cityscapes_paper_recipe_keeps_rgb_minus_the_caffe_mean():
  x = resize_normalize.normalizer(get('cityscapes', 'recipe=paper'))(
      jnp.asarray(PIXEL_RGB / 255, jnp.float32))
  # The config's Caffe mean has 5 decimals on [0, 1]: within 0.004 of the exact one on 0..255.
  np.testing.assert_allclose(np.asarray(x), PIXEL_RGB - CAFFE_MEAN_BGR[::-1], atol=4e-3)


def test_bgr_reverses_the_channels_after_normalising_and_unknown_orders_fail():
  x = jnp.asarray([[0.2, 0.5, 0.9]])
  mean, std = (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)
  rgb = resize_normalize.normalize(x, mean, std, 'rgb')
  np.testing.assert_allclose(resize_normalize.normalize(x, mean, std, 'bgr'), rgb[:, ::-1])
  np.testing.assert_allclose(rgb, [[0.2, 0.6, 1.2]], atol=1e-6)
  with pytest.raises(ValueError, match=r"Unknown image_channel_order 'brg'; valid: rgb, bgr."):
    resize_normalize.normalize(x, mean, std, 'brg')


def authors_eval_steps(num_labeled, batch_size, num_steps, every=10):
  """Steps after which cross_teacher_contr.py evaluates (its loop, read line by line):
  `total` counts labeled images; an epoch ends when `i_iter != 0 and total >=
  labeled_samples`, and `if epoch % 10 == 0` evaluates (`every` = 20 in the DeepLabV3+
  script)."""
  total, epoch, steps = 0, 0, []
  for i_iter in range(num_steps):
    total += batch_size  # `for j in range(batch_size): ... total += 1`
    if i_iter != 0 and total >= num_labeled:
      epoch, total = epoch + 1, 0
      if epoch % every == 0:
        steps.append(i_iter + 1)  # steps done when it evaluates
  return steps


@pytest.mark.parametrize('name, arg, num_labeled, every', [
    ('cityscapes', '1_8', 372, 10), ('cityscapes', '1_30', 100, 10),
    ('voc_aug', '1_50', 212, 10), ('voc_classic', '1_16', 92, 20)])
def test_eval_cadence_is_the_authors_epochs(name, arg, num_labeled, every):
  from ctt_jax import train  # pylint: disable=g-import-not-at-top  (jax, TF: only here)
  config = get(name, arg)
  period = train.eval_period(config, num_labeled)
  steps = authors_eval_steps(num_labeled, config.batch_size, 20 * period, every)
  assert steps == list(range(period, 20 * period + 1, period))
  assert train.eval_period(get(name, arg + ',recipe=paper'), num_labeled) == 4000


def test_evaluation_rows_of_the_authors_recipe():
  for name in ('cityscapes', 'voc_aug', 'voc_classic'):
    assert get(name).eval_networks == 'students'
    assert get(name, 'recipe=paper').eval_networks == 'all'
  for name in ('voc_aug', 'voc_classic'):
    assert tuple(get(name).data.eval_size) == (505, 505)  # evaluateSSL.py: input_size
    assert tuple(get(name, 'recipe=paper').data.eval_size) == (512, 512)


def test_partition_source_of_the_authors_recipe():
  assert get('voc_aug').data.partition_source == 'authors'
  assert get('voc_aug', 'recipe=paper').data.partition_source == 'standard'
  for name in ('cityscapes', 'voc_classic'):  # no lists of theirs can be named
    assert get(name).data.partition_source == 'standard'
