"""Partitions: the packaged lists' counts, disjointness, coverage, and bad split names."""
import os

import pytest

from ctt_jax.data import splits
from ctt_jax.data.errors import DataError

ROOT = splits.PACKAGED_SPLITS_DIR


def partition(dataset, split, train_list, full_list=None):
  train = splits.read_id_list(os.path.join(ROOT, train_list))
  full = splits.read_id_list(os.path.join(ROOT, full_list)) if full_list else None
  labeled, unlabeled = splits.partition_from_list(
      train, os.path.join(ROOT, dataset), split, full_ids=full)
  return train, labeled, unlabeled


@pytest.mark.parametrize('dataset,train_list,counts,full_list', [
    ('cityscapes', 'cityscapes/train.txt',
     {'1_30': 100, '1_16': 186, '1_8': 372, '1_4': 744, '1_2': 1488, 'full': 2975}, None),
    ('voc_aug', 'voc_aug/train_aug.txt',
     {'1_50': 212, '1_20': 529, '1_8': 1322, '1_4': 2645, 'full': 10582}, None),
    ('voc_classic', 'voc_aug/train_aug.txt',
     {'1_16': 92, '1_8': 183, '1_4': 366, '1_2': 732, 'full': 1464},
     'voc_classic/train.txt'),
])
def test_partition_counts_disjoint_and_covering(dataset, train_list, counts, full_list):
  for split, count in counts.items():
    train, labeled, unlabeled = partition(dataset, split, train_list, full_list)
    assert len(labeled) == count, split
    assert not set(labeled) & set(unlabeled)
    assert sorted(labeled + unlabeled) == sorted(train)
  assert splits.available_splits(os.path.join(ROOT, dataset)) == sorted(
      s for s in counts if s != 'full') + ['full']


def test_val_lists():
  assert len(splits.read_id_list(os.path.join(ROOT, 'cityscapes/val.txt'))) == 500
  assert len(splits.read_id_list(os.path.join(ROOT, 'voc_aug/val.txt'))) == 1449


def test_unknown_split_lists_the_valid_ones():
  with pytest.raises(DataError) as e:
    partition('cityscapes', '1_3', 'cityscapes/train.txt')
  assert str(e.value).endswith(
      'set data.split to one of: 1_16, 1_2, 1_30, 1_4, 1_8, full.')
  assert "'1_3'" in str(e.value)


def test_fraction_counts():
  assert splits.labeled_count('1_8', 0.0, 367) == 46  # CamVid 1/8
  assert splits.labeled_count('1_4', 0.0, 367) == 92
  assert splits.labeled_count('full', 0.0, 367) == 367
  assert splits.labeled_count('1_8', 0.5, 367) == 184  # labeled_fraction wins
  assert splits.labeled_count('1_1000', 0.0, 367) == 1  # never empty
  with pytest.raises(DataError, match=r"'full' or '1_N'"):
    splits.labeled_count('eighth', 0.0, 367)


def test_fraction_partition_is_seeded_and_keeps_list_order():
  ids = [f'x{k:03d}' for k in range(367)]
  labeled, unlabeled = splits.partition_by_fraction(ids, 46, 0)
  assert len(labeled) == 46 and len(unlabeled) == 321
  assert labeled == sorted(labeled) and sorted(labeled + unlabeled) == ids
  assert splits.partition_by_fraction(ids, 46, 0)[0] == labeled
  assert splits.partition_by_fraction(ids, 46, 1)[0] != labeled


def test_partition_ids_outside_the_training_list_fail(tmp_path):
  (tmp_path / 'd').mkdir()
  (tmp_path / 'd' / '1_2.txt').write_text('a\nz\n')
  with pytest.raises(DataError, match='1 IDs of .*1_2.txt \\(e.g. z\\) are not in the '
                     'training list'):
    splits.partition_from_list(['a', 'b'], str(tmp_path / 'd'), '1_2')


AUTHORS_VOC = {'1_50': 212, '1_20': 529, '1_8': 1322, '1_4': 2645}


def test_authors_voc_lists_are_prefixes_of_their_permutation():
  folder = os.path.join(ROOT, 'voc_aug', 'authors')
  order = splits.read_id_list(os.path.join(folder, 'train_aug.txt'))
  train = splits.read_id_list(os.path.join(ROOT, 'voc_aug', 'train_aug.txt'))
  assert sorted(order) == train  # a permutation of the training list
  for split, count in AUTHORS_VOC.items():
    labeled, unlabeled = splits.partition_from_list(train, folder, split)
    assert labeled == sorted(order[:count]), split  # `train_ids[:partial_size]`
    assert sorted(labeled + unlabeled) == train
  assert splits.available_splits(folder) == sorted(AUTHORS_VOC) + ['full']
  standard = splits.read_id_list(os.path.join(ROOT, 'voc_aug', '1_50.txt'))
  assert len(set(standard) & set(order[:212])) == 5  # another draw than split 0


def test_partition_source_picks_the_folder_or_says_why_there_is_none():
  class Data:
    splits_dir, partition_source = '', 'authors'
  assert splits.partition_folder(Data, 'voc_aug') == os.path.join(ROOT, 'voc_aug', 'authors')
  with pytest.raises(DataError, match=r'data.partition_source=authors has no cityscapes '
                     r'lists: .*os.walk.*; set data.partition_source=standard.'):
    splits.partition_folder(Data, 'cityscapes')
  with pytest.raises(DataError, match=r'no voc_classic lists: .*standard 1_16 list'):
    splits.partition_folder(Data, 'voc_classic')
  Data.partition_source = 'standard'
  assert splits.partition_folder(Data, 'cityscapes') == os.path.join(ROOT, 'cityscapes')
  Data.partition_source = 'theirs'
  with pytest.raises(DataError, match=r"Unknown data.partition_source 'theirs'; valid: "
                     r"standard, authors."):
    splits.partition_folder(Data, 'voc_aug')
