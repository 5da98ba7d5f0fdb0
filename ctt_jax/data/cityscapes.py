"""Cityscapes (gtFine): 19 classes, from an extracted folder or tensorflow-datasets.

Folder layout (`data.source='folder'`), as extracted from the two official zips:

    <data_dir>/leftImg8bit/{train,val}/<city>/<id>_leftImg8bit.png
    <data_dir>/gtFine/{train,val}/<city>/<id>_gtFine_labelIds.png

`data.source='tfds'` reads the tensorflow-datasets builder `cityscapes/semantic_segmentation`
instead (cityscapes_tfds.py); `auto` picks the folder when it exists. Labels are the raw
labelIds (0..33), mapped to the 19 trainIds with the official table; the rest -> 255.
"""
from __future__ import annotations

import os

import numpy as np

from ctt_jax.data import decode
from ctt_jax.data import splits
from ctt_jax.data.errors import DataError
from ctt_jax.data.sources import (FileExamples, Source, check_files_exist,
                                  existing_label_paths)
from ctt_jax.data.paths import resolve_data_dir

CLASS_NAMES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
               'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
               'truck', 'bus', 'train', 'motorcycle', 'bicycle')
# cityscapesScripts labels.py colours of the 19 trainIds.
PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32)], np.uint8)
# labelId -> trainId for the 19 evaluated classes (cityscapesScripts labels.py); every
# other labelId in 0..33 (unlabeled, ego vehicle, ..., caravan, trailer) is ignored.
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                        23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17,
                        33: 18}
NUM_LABEL_IDS = 34
FULL_SIZE = (1024, 2048)
ENV_VAR = 'CTT_CITYSCAPES_DIR'
ZIPS = ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip')


def _label_spec() -> decode.LabelSpec:
  lut = np.full(256, -1, np.int32)  # 34..255 are invalid: catches labelTrainIds files
  lut[:NUM_LABEL_IDS] = 255
  for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
    lut[label_id] = train_id
  return decode.LabelSpec(
      lut, 'Cityscapes labelIds 0..33',
      'use the raw *_gtFine_labelIds.png files, not labelTrainIds or colour images')


LABEL_SPEC = _label_spec()


def missing_message(data_dir: str) -> str:
  return (f'Cityscapes not found: data.data_dir={data_dir!r} holds neither the extracted '
          'leftImg8bit/ and gtFine/ folders nor the zips ' + ' and '.join(ZIPS) +
          ' (from https://www.cityscapes-dataset.com/downloads/); download them and set '
          f'data.data_dir (or {ENV_VAR}) to their folder, see docs/DATA.md.')


def has_folder(data_dir: str) -> bool:
  return all(os.path.isdir(os.path.join(data_dir, d)) for d in ('leftImg8bit', 'gtFine'))


def file_paths(data_dir: str, split: str, image_id: str) -> tuple[str, str]:
  """(image, labelIds) paths of one ID (`<city>_<seq>_<frame>`) in the folder layout."""
  city = image_id.split('_')[0]
  return (os.path.join(data_dir, 'leftImg8bit', split, city, f'{image_id}_leftImg8bit.png'),
          os.path.join(data_dir, 'gtFine', split, city, f'{image_id}_gtFine_labelIds.png'))


def _folder_examples(data_dir, split, ids, list_name, labels_required=True,
                     with_labels=True) -> FileExamples:
  """Examples of `ids`; labels that are not required are read where their files exist."""
  pairs = [file_paths(data_dir, split, i) for i in ids]
  images = [p[0] for p in pairs]
  labels = [p[1] for p in pairs]
  todo = 'extract all of ' + ' and '.join(ZIPS) + ' into data.data_dir'
  check_files_exist(images + (labels if labels_required else []), list_name, data_dir, todo)
  if with_labels and not labels_required:
    labels = existing_label_paths(labels, list_name)
  return FileExamples(ids, images, labels if with_labels else None, LABEL_SPEC)


def build_source(config) -> Source:
  """Cityscapes partitioned by `data.split` (splits/cityscapes/<split>.txt)."""
  data = config.data
  data_dir = resolve_data_dir(data, ENV_VAR)
  folder = os.path.join(splits.splits_dir(data), 'cityscapes')
  train_ids = splits.read_id_list(os.path.join(folder, 'train.txt'))
  val_ids = splits.read_id_list(os.path.join(folder, 'val.txt'))
  labeled_ids, unlabeled_ids = splits.partition_from_list(
      train_ids, splits.partition_folder(data, 'cityscapes'), data.split)

  source = data.source
  if source not in ('auto', 'folder', 'tfds'):
    raise DataError(f'Unknown data.source {source!r}; use auto, folder or tfds.')
  if source == 'auto':
    source = 'folder' if data_dir and has_folder(data_dir) else 'tfds'
  if source == 'folder':
    if not (data_dir and has_folder(data_dir)):
      raise DataError(missing_message(data_dir))
    train_list = os.path.join(folder, 'train.txt')
    labeled = _folder_examples(data_dir, 'train', labeled_ids, train_list)
    # The unlabeled images' gtFine labels: diagnostics only (data.unlabeled_labels).
    unlabeled = _folder_examples(data_dir, 'train', unlabeled_ids, train_list,
                                 labels_required=False,
                                 with_labels=bool(data.unlabeled_labels))
    val = _folder_examples(data_dir, 'val', val_ids, os.path.join(folder, 'val.txt'))
  else:
    from ctt_jax.data import cityscapes_tfds  # pylint: disable=g-import-not-at-top
    labeled, unlabeled, val = cityscapes_tfds.examples(
        data, data_dir, labeled_ids, unlabeled_ids, val_ids)
  return Source('cityscapes', CLASS_NAMES, PALETTE, labeled, unlabeled, val, FULL_SIZE)
