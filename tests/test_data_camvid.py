"""CamVid (SegNet layout): generated trees, label alignment end to end, the real copy."""
import os

import numpy as np
from PIL import Image
import pytest

from configs import common
from configs.common import base_config
from tests import dataset_trees
from tests.data_helpers import build, dataset_config
from ctt_jax import data
from ctt_jax.data import camvid


def make_config(data_dir, **overrides):
  return dataset_config('camvid', batch_size=4, **{
      'data_dir': str(data_dir), 'crop_size': (32, 40), 'eval_batch_size': 2, **overrides})


@pytest.mark.parametrize('with_lists', [False, True])
def test_generated_tree(tmp_path, with_lists):
  tree = dataset_trees.write_camvid_tree(str(tmp_path), with_lists=with_lists)
  ds = build(make_config(tmp_path, split='1_4'))
  assert ds.num_labeled == 4 and len(ds.unlabeled_ids) == 12 and ds.num_eval == 4
  assert sorted(ds.labeled_ids + ds.unlabeled_ids) == tree['train']
  assert ds.palette.shape == (11, 3) and ds.class_names[0] == 'sky'
  batch = next(ds.labeled)
  assert batch['image'].shape == (4, 32, 40, 3) and batch['label'].shape == (4, 32, 40)
  assert set(np.unique(batch['label'])) <= set(range(11)) | {255}
  # Void (11) became ignore, and the image under it is the void colour (black).
  assert (batch['label'] == 255).any()
  evals = list(ds.eval_batches())
  assert len(evals) == 2 and evals[0]['image'].shape == (2, 36, 48, 3)
  assert (np.concatenate([e['index'] for e in evals]) == [0, 1, 2, 3]).all()
  label = np.asarray(Image.open(os.path.join(tmp_path, 'valannot', 'val_0000.png')))
  np.testing.assert_array_equal(evals[0]['label'][0], np.where(label == 11, 255, label))
  ds.close()


def test_labels_line_up_with_images_after_augmentation(tmp_path):
  # The generated images encode their labels as colours (lossless PNG): check that a
  # scaled, rotated, shifted, cropped, flipped label still matches its image.
  dataset_trees.write_camvid_tree(str(tmp_path), num_train=8, size=(60, 80))
  config = make_config(tmp_path, split='full', scale_range=(0.6, 1.4),
                       rotation_degrees=15.0, translate_fraction=0.1, crop_size=(48, 64))
  ds = build(config)
  for _ in range(3):
    batch = next(ds.labeled)
    for image, label in zip(batch['image'], batch['label']):
      checked, agreement = dataset_trees.colour_agreement(image, label, label != 255, 11)
      assert checked > 0.2 and agreement > 0.99, (checked, agreement)
    unlabeled = next(ds.unlabeled)
    # Unlabeled padding/fill is marked invalid and black.
    assert (unlabeled['image'][~unlabeled['valid']] == 0).all()
  ds.close()


def test_real_camvid_copy():
  data_dir = camvid.data_dir_of(base_config().data)
  if not os.path.isdir(os.path.join(data_dir, 'train')):
    pytest.skip(f'no CamVid copy at {data_dir}')
  config = base_config()
  common.apply_dataset_defaults(config, 'camvid')  # data_dir '' -> the default location
  config.batch_size = 2
  ds = build(config)
  assert ds.num_labeled == 46 and len(ds.unlabeled_ids) == 367 - 46  # 1/8 of 367
  assert ds.num_eval == 101 and ds.eval_size == (180, 240)
  batch = next(ds.labeled)
  assert batch['image'].shape == (2, 176, 240, 3)
  assert set(np.unique(batch['label'])) <= set(range(11)) | {255}
  first = next(ds.eval_batches())
  assert first['valid'].all() and first['index'].tolist() == [0]
  ds.close()
