"""PASCAL VOC (aug and classic) from a generated folder tree."""
import os

import numpy as np
from PIL import Image
import pytest

from tests import dataset_trees
from tests.data_helpers import build, dataset_config
from ctt_jax.data import splits


def make_config(tree, name='voc_aug', **overrides):
  return dataset_config(name, batch_size=2, **{
      'data_dir': tree['data_dir'], 'splits_dir': tree['splits_dir'], 'split': '1_2',
      'crop_size': (32, 32), 'eval_size': (64, 64), 'eval_batch_size': 2, **overrides})


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  return dataset_trees.write_voc_tree(str(tmp_path_factory.mktemp('voc')))


def test_voc_aug_streams(tree):
  ds = build(make_config(tree))
  assert ds.num_classes == 21 and ds.palette[15].tolist() == [192, 128, 128]  # person
  assert ds.labeled_ids == tuple(tree['labeled'])
  assert sorted(ds.labeled_ids + ds.unlabeled_ids) == tree['train']
  for _ in range(3):
    batch = next(ds.labeled)
    assert batch['image'].shape == (2, 32, 32, 3) and batch['label'].dtype == np.int32
    assert set(np.unique(batch['label'])) <= set(range(21)) | {255}
    unlabeled = next(ds.unlabeled)
    assert unlabeled['image'].shape == (2, 32, 32, 3)
    # Scale 0.5 of a 48x40 image is smaller than the crop: padded and marked invalid.
    assert (unlabeled['image'][~unlabeled['valid']] == 0).all()
  evals = list(ds.eval_batches())
  assert len(evals) == 2 and ds.eval_size == (64, 64)
  last = evals[-1]
  assert last['index'].tolist() == [2, -1] and not last['valid'][1].any()
  # Whole val images, top-left, padded with ignore.
  first = evals[0]
  label = np.asarray(Image.open(os.path.join(
      tree['data_dir'], 'SegmentationClassAug', tree['val'][0] + '.png')))
  lh, lw = label.shape
  np.testing.assert_array_equal(first['label'][0, :lh, :lw], label)
  assert first['valid'][0, :lh, :lw].all() and not first['valid'][0, lh:].any()
  assert (first['label'][0, lh:] == 255).all()
  ds.close()


def test_voc_classic_partitions(tree):
  ds = build(make_config(tree, 'voc_classic'))
  assert ds.labeled_ids == tuple(tree['labeled'])
  assert len(ds.unlabeled_ids) == len(tree['train']) - len(tree['labeled'])
  full = build(make_config(tree, 'voc_classic', split='full'))
  assert full.num_labeled == len(tree['train']) // 2  # its own train.txt
  assert len(full.unlabeled_ids) == len(tree['train']) - full.num_labeled
  ds.close()
  full.close()


def test_default_eval_size_is_512(tree):
  config = make_config(tree)
  config.data.eval_size = (0, 0)
  ds = build(config)
  assert ds.eval_size == (512, 512)


def test_authors_partition_source_reads_the_authors_folder(tree, tmp_path):
  # A copy of the tree's lists plus an `authors` 1_2 list that labels other images.
  splits_dir = str(tmp_path / 'splits')
  for name in ('train_aug', 'val', '1_2'):
    ids = splits.read_id_list(os.path.join(tree['splits_dir'], 'voc_aug', name + '.txt'))
    dataset_trees.write_list(os.path.join(splits_dir, 'voc_aug', name + '.txt'), ids)
  theirs = sorted(set(tree['train']) - set(tree['labeled']))[:len(tree['labeled'])]
  dataset_trees.write_list(os.path.join(splits_dir, 'voc_aug', 'authors', '1_2.txt'), theirs)
  config = make_config({**tree, 'splits_dir': splits_dir}, partition_source='authors')
  assert sorted(build(config).labeled_ids) == theirs
