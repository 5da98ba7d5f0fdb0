"""Cityscapes on the real fixture frame: the trainId table, folder and tfds routes."""
import importlib.util
import os

import numpy as np
from PIL import Image
import pytest

from tests import dataset_trees
from tests.data_helpers import build, dataset_config
from ctt_jax import data
from ctt_jax.data import cityscapes

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'cityscapes_mini')
GT = os.path.join(FIXTURE, 'gtFine', 'val', 'frankfurt', dataset_trees.FIXTURE_ID + '_gtFine_')


def make_config(tree, **overrides):
  return dataset_config('cityscapes', **{
      'data_dir': tree['data_dir'], 'splits_dir': tree['splits_dir'], 'split': '1_1',
      **overrides})


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  return dataset_trees.write_cityscapes_tree(str(tmp_path_factory.mktemp('cs')), FIXTURE)


def reference_train_ids():
  """The fixture's labelTrainIds file [128, 256]."""
  return np.asarray(Image.open(GT + 'labelTrainIds.png')).astype(np.int32)


def test_table_is_the_official_one():
  assert len(cityscapes.LABEL_ID_TO_TRAIN_ID) == 19
  assert sorted(cityscapes.LABEL_ID_TO_TRAIN_ID.values()) == list(range(19))
  lut = cityscapes.LABEL_SPEC.lut
  assert lut[7] == 0 and lut[26] == 13 and lut[33] == 18  # road, car, bicycle
  assert lut[0] == lut[6] == lut[29] == lut[30] == 255  # unlabeled, ground, caravan
  assert (lut[34:] == -1).all()  # not a labelId: an error, not a silent ignore


def test_full_protocol_eval_matches_the_fixture_train_ids(tree):
  ds = build(make_config(tree, eval_protocol='full', eval_size=(128, 256)))
  (batch,) = list(ds.eval_batches())
  label = batch['label'][0]
  raw = np.asarray(Image.open(GT + 'labelIds.png'))
  expected = np.vectorize(lambda v: cityscapes.LABEL_ID_TO_TRAIN_ID.get(v, 255))(raw)
  np.testing.assert_array_equal(label, expected)
  # The fixture's own labelTrainIds file was resized separately: ~99.8% agreement.
  reference = reference_train_ids()
  assert (label == reference).mean() > 0.995
  assert set(np.unique(label)) == set(np.unique(reference))
  assert batch['valid'].all() and batch['index'].tolist() == [0]
  image = np.asarray(Image.open(os.path.join(
      FIXTURE, 'leftImg8bit', 'val', 'frankfurt', dataset_trees.FIXTURE_ID + '_leftImg8bit.png')))
  np.testing.assert_array_equal(batch['image'][0], image)


def test_paper_protocol_and_training_crops(tree):
  ds = build(make_config(tree))  # resize 512x1024, crop 256x512, batch 2
  (batch,) = list(ds.eval_batches())
  assert batch['image'].shape == (1, 512, 1024, 3) and batch['valid'].all()
  # Nearest 4x upscaling of the label.
  np.testing.assert_array_equal(batch['label'][0][2::4, 2::4],
                                np.asarray(batch['label'][0])[::4, ::4])
  labeled = next(ds.labeled)
  assert labeled['image'].shape == (2, 256, 512, 3)
  assert set(np.unique(labeled['label'])) <= set(np.unique(reference_train_ids()))
  assert ds.class_names[0] == 'road' and ds.palette[0].tolist() == [128, 64, 128]
  ds.close()


def test_missing_tree_names_the_layout_and_downloads(tmp_path):
  tree = {'data_dir': str(tmp_path / 'nowhere'), 'splits_dir': ''}
  with pytest.raises(data.DataError) as e:
    build(make_config(tree, split='1_30', source='folder'))
  message = str(e.value)
  for part in ('leftImg8bit/', 'gtFine/', 'leftImg8bit_trainvaltest.zip',
               'gtFine_trainvaltest.zip', 'data.data_dir'):
    assert part in message
  # 'auto' without a tree and without zips ends in the same message.
  with pytest.raises(data.DataError, match='Cityscapes not found'):
    build(make_config(tree, split='1_30', tfds_data_dir=str(tmp_path / 'tfds')))


@pytest.mark.skipif(importlib.util.find_spec('importlib_resources') is None,
                    reason='tfds dataset preparation needs importlib_resources')
def test_tfds_route_from_the_official_zips(tmp_path, tree):
  # The builder requires 2048x1024 frames: the zips hold the fixture frame upscaled.
  dataset_trees.write_cityscapes_zips(str(tmp_path / 'manual'), FIXTURE)
  config = make_config(tree, source='tfds', data_dir=str(tmp_path / 'manual'),
                       tfds_data_dir=str(tmp_path / 'tfds'))
  ds = build(config)
  (batch,) = list(ds.eval_batches())
  assert batch['image'].shape == (1, 512, 1024, 3)
  # The 2048x1024 nearest upscale, resized back to 512x1024 (nearest), equals the
  # fixture's labelIds mapped and upscaled 2x the same way as the folder route does.
  folder = build(make_config(tree))
  (folder_batch,) = list(folder.eval_batches())
  assert (batch['label'] == folder_batch['label']).mean() > 0.99
  labeled = next(ds.labeled)
  assert labeled['label'].shape == (2, 256, 512)
  assert set(np.unique(labeled['label'])) <= set(np.unique(reference_train_ids()))
  unlabeled = next(ds.unlabeled)  # 'full'-like: the one frame is reused
  assert unlabeled['valid'].all()
  ds.close()
  folder.close()
