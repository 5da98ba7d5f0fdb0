"""Partition lists: which training images are labeled and which are unlabeled.

Datasets with published lists (Cityscapes, VOC) read `splits/<dataset>/<split>.txt`; the
unlabeled set is the training list minus those IDs. Datasets without lists (CamVid,
synthetic) take a seeded random subset whose size is a fraction of the training list.
"""
from __future__ import annotations

import math
import os
import re

import numpy as np

from ctt_jax.data.errors import DataError

PACKAGED_SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'splits')
# Files in a splits folder that are whole-set lists, not labeled partitions.
_NON_PARTITION_LISTS = ('train', 'train_aug', 'val', 'test')
_FRACTION_SPLIT = re.compile(r'^1_(\d+)$')


def splits_dir(data_config) -> str:
  """`data.splits_dir` if set (custom lists, e.g. for tests), else the packaged lists."""
  return data_config.splits_dir or PACKAGED_SPLITS_DIR


# data.partition_source: the packaged 'standard' lists (splits/README.md), or the lists the
# CTT authors' code trained with, in `<dataset>/authors/` where they can be named.
PARTITION_SOURCES = ('standard', 'authors')
# Why a dataset has no `authors` lists (one clause each, for the error).
_NO_AUTHORS_LISTS = {
    'cityscapes': ("their splits/city/split_0.pkl holds indices into the order os.walk "
                   "lists the Cityscapes train folder in, an order each file system decides, "
                   "so the indices name no images"),
    'voc_classic': ("their DeepLabV3+ script reads one list, data/voc_list/labeled.txt, "
                    "whose 92 IDs are the standard 1_16 list"),
}


def partition_folder(data_config, dataset: str) -> str:
  """The folder holding `dataset`'s partition files for data.partition_source."""
  folder = os.path.join(splits_dir(data_config), dataset)
  source = data_config.partition_source
  if source not in PARTITION_SOURCES:
    raise DataError(f'Unknown data.partition_source {source!r}; valid: '
                    f'{", ".join(PARTITION_SOURCES)}.')
  if source == 'standard':
    return folder
  if dataset in _NO_AUTHORS_LISTS:
    raise DataError(f'data.partition_source=authors has no {dataset} lists: '
                    f'{_NO_AUTHORS_LISTS[dataset]}; set data.partition_source=standard.')
  return os.path.join(folder, 'authors')


def read_id_list(path: str) -> list[str]:
  """One ID per line; blank lines are skipped. Fails if the file is missing or empty."""
  if not os.path.isfile(path):
    raise DataError(f'The ID list {path} does not exist; point data.splits_dir at a '
                    'folder holding <dataset>/<list>.txt files, or leave it empty for '
                    'the packaged lists.')
  with open(path) as f:
    ids = [line.strip() for line in f if line.strip()]
  if not ids:
    raise DataError(f'The ID list {path} is empty; write one image ID per line.')
  if len(set(ids)) != len(ids):
    raise DataError(f'The ID list {path} repeats some IDs; list every image once.')
  return ids


def available_splits(folder: str) -> list[str]:
  """Partition names in a splits folder (every .txt but the whole-set lists) + 'full'."""
  names = [f[:-4] for f in os.listdir(folder) if f.endswith('.txt')]
  return sorted(n for n in names if n not in _NON_PARTITION_LISTS) + ['full']


def partition_from_list(
    train_ids: list[str], folder: str, split: str, full_ids: list[str] | None = None,
) -> tuple[list[str], list[str]]:
  """(labeled, unlabeled) IDs: labeled = `<folder>/<split>.txt`, or `full_ids` for 'full'.

  Args:
    train_ids: the training list the unlabeled set is taken from.
    folder: where the partition files live.
    split: partition name ('1_30', ...) or 'full'.
    full_ids: the labeled set of 'full' (default: all of `train_ids`; classic VOC uses
      its 1464 images while its unlabeled pool is the 10582 of VOC aug).
  Returns:
    labeled IDs in list order and unlabeled IDs in training-list order; disjoint, and
    together exactly `train_ids`.
  """
  valid = available_splits(folder)
  if split not in valid:
    raise DataError(f'Unknown split {split!r} for {folder}; set data.split to one of: '
                    + ', '.join(valid) + '.')
  if split == 'full':
    labeled = list(train_ids if full_ids is None else full_ids)
    path = 'the full list'
  else:
    path = os.path.join(folder, split + '.txt')
    labeled = read_id_list(path)
  train_set = set(train_ids)
  strangers = [i for i in labeled if i not in train_set]
  if strangers:
    raise DataError(f'{len(strangers)} IDs of {path} (e.g. {strangers[0]}) are not in the '
                    'training list; use a partition file made for this training list.')
  labeled_set = set(labeled)
  return labeled, [i for i in train_ids if i not in labeled_set]


def labeled_count(split: str, labeled_fraction: float, num_train: int) -> int:
  """Size of the labeled subset for datasets without lists.

  `labeled_fraction > 0` wins; otherwise the split name gives it ('1_8' -> 1/8, 'full'
  -> all). Rounded half up (CamVid 367 / 8 = 45.9 -> 46), at least 1.
  """
  if labeled_fraction > 0:
    if labeled_fraction > 1:
      raise DataError(f'data.labeled_fraction={labeled_fraction} is above 1; use a '
                      'fraction in (0, 1].')
    fraction = labeled_fraction
  elif split == 'full':
    fraction = 1.0
  else:
    match = _FRACTION_SPLIT.match(split)
    if not match or int(match.group(1)) < 1:
      raise DataError(f'Unknown split {split!r} for a dataset without partition lists; '
                      "set data.split to 'full' or '1_N' (e.g. '1_8'), or set "
                      'data.labeled_fraction.')
    fraction = 1.0 / int(match.group(1))
  return max(1, min(num_train, int(math.floor(fraction * num_train + 0.5))))


def partition_by_fraction(
    train_ids: list[str], count: int, partition_seed: int,
) -> tuple[list[str], list[str]]:
  """(labeled, unlabeled): a seeded random subset of `count` IDs and the rest.

  Both keep training-list order; the subset depends only on (partition_seed, the list),
  not on the training seed, so methods compared at one partition see the same labels.
  """
  chosen = np.random.default_rng(partition_seed).permutation(len(train_ids))[:count]
  chosen = set(int(i) for i in chosen)
  labeled = [x for k, x in enumerate(train_ids) if k in chosen]
  unlabeled = [x for k, x in enumerate(train_ids) if k not in chosen]
  return labeled, unlabeled
