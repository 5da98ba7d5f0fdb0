"""PASCAL VOC 2012 (21 classes): the augmented set (`voc_aug`) and classic VOC (`voc_classic`).

Folder layout (tfds has no VOC segmentation builder):

    <data_dir>/JPEGImages/<id>.jpg
    <data_dir>/SegmentationClassAug/<id>.png   class indices 0..20, 255 = ignore

voc_aug: training list splits/voc_aug/train_aug.txt (10582), labeled =
splits/voc_aug/<split>.txt (splits/voc_aug/authors/<split>.txt with
data.partition_source=authors). voc_classic: labeled = splits/voc_classic/<split>.txt ('full' =
its train.txt, 1464), unlabeled = train_aug.txt minus those. Both evaluate on
splits/voc_aug/val.txt (1449), whole images padded to 512x512 (VOC images are <= 500x500).
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

CLASS_NAMES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
               'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
ENV_VAR = 'CTT_VOC_DIR'
EVAL_SIZE = (512, 512)
IMAGE_DIR, LABEL_DIR = 'JPEGImages', 'SegmentationClassAug'


def voc_palette(num_classes: int = 256) -> np.ndarray:
  """The VOC colour map (bits of the class index spread over R, G, B): uint8 [C, 3]."""
  palette = np.zeros((num_classes, 3), np.uint8)
  for c in range(num_classes):
    v, r, g, b = c, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= ((v >> 0) & 1) << shift
      g |= ((v >> 1) & 1) << shift
      b |= ((v >> 2) & 1) << shift
      v >>= 3
    palette[c] = (r, g, b)
  return palette


PALETTE = voc_palette(len(CLASS_NAMES))
LABEL_SPEC = decode.identity_label_spec(
    len(CLASS_NAMES), hint='use the SegmentationClassAug class-index PNGs')


def missing_message(data_dir: str) -> str:
  return (f'PASCAL VOC not found: data.data_dir={data_dir!r} must hold {IMAGE_DIR}/<id>.jpg '
          f'and {LABEL_DIR}/<id>.png; extract VOCtrainval_11-May-2012.tar '
          '(http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) and the SBD-augmented labels '
          'SegmentationClassAug.zip into one folder and set data.data_dir (or '
          f'{ENV_VAR}) to it, see docs/DATA.md.')


def file_paths(data_dir: str, image_id: str) -> tuple[str, str]:
  return (os.path.join(data_dir, IMAGE_DIR, image_id + '.jpg'),
          os.path.join(data_dir, LABEL_DIR, image_id + '.png'))


def _examples(data_dir, ids, list_name, labels_required=True,
              with_labels=True) -> FileExamples:
  """Examples of `ids`; labels that are not required are read where their files exist."""
  images = [file_paths(data_dir, i)[0] for i in ids]
  labels = [file_paths(data_dir, i)[1] for i in ids]
  check_files_exist(images + (labels if labels_required else []), list_name, data_dir,
                    'complete the VOC and SegmentationClassAug download (docs/DATA.md)')
  if with_labels and not labels_required:
    labels = existing_label_paths(labels, list_name)
  return FileExamples(ids, images, labels if with_labels else None, LABEL_SPEC)


def build_source(config) -> Source:
  """`voc_aug` or `voc_classic` (config.data.name), partitioned by data.split."""
  data = config.data
  data_dir = resolve_data_dir(data, ENV_VAR)
  root = splits.splits_dir(data)
  aug_folder = os.path.join(root, 'voc_aug')
  train_list = os.path.join(aug_folder, 'train_aug.txt')
  train_ids = splits.read_id_list(train_list)
  if data.name == 'voc_classic':
    full = splits.read_id_list(os.path.join(root, 'voc_classic', 'train.txt'))
    labeled_ids, unlabeled_ids = splits.partition_from_list(
        train_ids, splits.partition_folder(data, 'voc_classic'), data.split, full_ids=full)
  else:
    labeled_ids, unlabeled_ids = splits.partition_from_list(
        train_ids, splits.partition_folder(data, 'voc_aug'), data.split)
  val_list = os.path.join(aug_folder, 'val.txt')
  val_ids = splits.read_id_list(val_list)

  if not (data_dir and os.path.isdir(os.path.join(data_dir, IMAGE_DIR))
          and os.path.isdir(os.path.join(data_dir, LABEL_DIR))):
    raise DataError(missing_message(data_dir))
  return Source(
      data.name, CLASS_NAMES, PALETTE,
      labeled=_examples(data_dir, labeled_ids, train_list),
      # SegmentationClassAug covers train_aug: the unlabeled images' labels, read for
      # the diagnostic data.unlabeled_labels only.
      unlabeled=_examples(data_dir, unlabeled_ids, train_list, labels_required=False,
                          with_labels=bool(data.unlabeled_labels)),
      val=_examples(data_dir, val_ids, val_list),
      eval_size=EVAL_SIZE)
