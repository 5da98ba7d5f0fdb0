"""Weak augmentation keeps image and label aligned (one shared draw) and pads correctly."""
import numpy as np
import tensorflow as tf

from ctt_jax.data import augment
from tests import dataset_trees


def assert_aligned(image, label, valid):
  """Every interior labeled pixel's colour still encodes its label."""
  checked, agreement = dataset_trees.colour_agreement(image, label, valid, 11)
  assert checked > 0.2  # the test has something to check
  assert agreement > 0.99, agreement


def run(params, image, label, seed):
  out = augment.train_augment(params, tf.constant(image), tf.constant(label, tf.int32),
                              tf.constant(seed, tf.int64))
  return [np.asarray(x) for x in out]


def params(**overrides):
  settings = dict(resize=None, scale_range=(0.5, 1.5), scale_step=0.0, rotation_degrees=0.0,
                  translate_fraction=0.0, crop_size=(40, 48), hflip=True)
  settings.update(overrides)
  return augment.TrainAugment(**settings)


def test_scale_crop_flip_keep_image_and_label_aligned():
  image, label = dataset_trees.block_scene(np.random.default_rng(0), 60, 80, 11, block=10)
  for seed in range(8):
    out_image, out_label, valid = run(params(), image, label, [seed, 7])
    assert out_image.shape == (40, 48, 3) and out_image.dtype == np.uint8
    assert out_label.dtype == np.int32 and valid.dtype == bool
    assert_aligned(out_image, out_label, valid)
    # Padding (scale < 1 leaves the crop partly empty) is ignore and invalid.
    assert (out_label[~valid] == 255).all() and (out_image[~valid] == 0).all()
  # At scale 1 image and label crops must match pixel for pixel (no resampling).
  colours = dataset_trees.class_colours(11)
  for seed in range(4):
    out_image, out_label, valid = run(params(scale_range=(1.0, 1.0)), image, label,
                                      [seed, 2])
    assert valid.all()
    np.testing.assert_array_equal(out_image, colours[out_label])
  # Both flip outcomes happen over seeds (checked at scale 1, where the crop is exact).
  flipped = set()
  for seed in range(8):
    out_image, out_label, _ = run(params(scale_range=(1.0, 1.0), crop_size=(60, 80)),
                                  image, label, [seed, 1])
    flipped.add(bool(np.array_equal(out_label, label[:, ::-1])))
    assert np.array_equal(out_label, label) or np.array_equal(out_label, label[:, ::-1])
  assert flipped == {True, False}


def draw_scales(p, seeds):
  return np.array([float(augment.draw_scale(p, tf.constant([s, 3], tf.int64)))
                   for s in seeds])


def test_scale_grid_draws_exactly_the_authors_voc_factors():
  # Their loader (data/voc_dataset.py, generate_scale_label): 0.5 + random.randint(0, 11) / 10.
  authors = np.array([0.5 + k / 10.0 for k in range(12)])
  scales = draw_scales(params(scale_range=(0.5, 1.6), scale_step=0.1), range(600))
  gap = np.abs(scales[:, None] - authors[None]).min(axis=1)
  assert gap.max() < 1e-6  # every draw is a grid value (float32 rounding only)
  counts = np.bincount(np.abs(scales[:, None] - authors[None]).argmin(axis=1), minlength=12)
  assert counts.min() > 25  # each of the 12 values is drawn (50 expected of each)
  # Without a step the factor is continuous: draws fall between the grid values.
  continuous = draw_scales(params(scale_range=(0.5, 1.6)), range(200))
  assert (np.abs(continuous[:, None] - authors[None]).min(axis=1) > 1e-3).mean() > 0.9
  assert continuous.min() >= 0.5 and continuous.max() <= 1.6


def test_rotation_translation_resize_keep_alignment_and_fill_ignore():
  image, label = dataset_trees.block_scene(np.random.default_rng(1), 60, 80, 11, block=12)
  p = params(resize=(90, 120), scale_range=(0.8, 1.2), rotation_degrees=20.0,
             translate_fraction=0.2, crop_size=(64, 64))
  saw_fill = False
  for seed in range(6):
    out_image, out_label, valid = run(p, image, label, [seed, 3])
    assert_aligned(out_image, out_label, valid)
    assert (out_label[~valid] == 255).all()
    saw_fill |= (~valid).any()
  assert saw_fill  # rotations/shifts of 20 degrees / 20% leave uncovered corners


def test_same_seed_same_view_other_seed_other_view():
  image, label = dataset_trees.block_scene(np.random.default_rng(2), 60, 80, 11)
  a = run(params(rotation_degrees=5.0), image, label, [4, 4])
  b = run(params(rotation_degrees=5.0), image, label, [4, 4])
  c = run(params(rotation_degrees=5.0), image, label, [4, 5])
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])


def test_eval_prepare_pads_and_resizes():
  image, label = dataset_trees.block_scene(np.random.default_rng(3), 30, 50, 11)
  out_image, out_label, valid = [np.asarray(x) for x in augment.eval_prepare(
      tf.constant(image), tf.constant(label, tf.int32), None, (40, 64), tf.constant('x'))]
  np.testing.assert_array_equal(out_image[:30, :50], image)
  np.testing.assert_array_equal(out_label[:30, :50], label)
  assert valid[:30, :50].all() and not valid[30:].any() and not valid[:, 50:].any()
  assert (out_label[30:] == 255).all()
  out_image, out_label, valid = [np.asarray(x) for x in augment.eval_prepare(
      tf.constant(image), tf.constant(label, tf.int32), (60, 100), (60, 100),
      tf.constant('x'))]
  np.testing.assert_array_equal(out_label, np.kron(label, np.ones((2, 2), int)))
  assert valid.all()
