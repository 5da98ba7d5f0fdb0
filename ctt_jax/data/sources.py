"""The data sources: the `Source` every dataset module returns (its labeled, unlabeled and
val example lists) and the random-access example lists it holds.

The streams (streams.py) are pure functions of (seed, element index), so they need random
access: `read(index)` returns example `index` of a list, inside the tf.data graph.
"""
from __future__ import annotations

import dataclasses
import os

from absl import logging
import numpy as np
import tensorflow as tf

from ctt_jax.data import decode
from ctt_jax.data.errors import DataError


class ExampleList:
  """A fixed list of examples with IDs. Subclasses implement `read`.

  `has_labels`: whether `read(..., with_label=True)` returns ground truth (False: a list
  opened without labels, e.g. images that have none).
  """

  ids: tuple[str, ...]
  has_labels: bool = True

  def __len__(self) -> int:
    return len(self.ids)

  def read(self, index: tf.Tensor, with_label: bool) -> dict[str, tf.Tensor]:
    """Example `index` (int64 scalar tensor).

    Returns {'image': uint8 [H, W, 3], 'label': int32 [H, W] train ids, 255 = ignore
    (zeros of the image size when `with_label` is False), 'name': string scalar naming
    the example in error messages}. The image is the same with or without the label.
    """
    raise NotImplementedError


class FileExamples(ExampleList):
  """Images and labels read from files (the folder layouts).

  label_paths: one per image, or None (no labels: `has_labels` is False). An empty path
  stands for an image without a label file: its label is all 255 (ignore).
  """

  def __init__(self, ids, image_paths, label_paths, label_spec: decode.LabelSpec | None):
    self.ids = tuple(ids)
    self._image_paths = tf.constant(list(image_paths))
    self.has_labels = label_paths is not None and label_spec is not None
    self._label_paths = tf.constant(list(label_paths)) if self.has_labels else None
    self._label_spec = label_spec

  def read(self, index, with_label):
    image_path = tf.gather(self._image_paths, index)
    if with_label and not self.has_labels:
      raise ValueError('These examples were opened without labels.')
    if not with_label:
      image = decode.tf_load_image(image_path)
      return {'image': image, 'label': tf.zeros(tf.shape(image)[:2], tf.int32),
              'name': image_path}
    label_path = tf.gather(self._label_paths, index)
    image, label = decode.tf_load_pair(image_path, label_path, self._label_spec)
    return {'image': image, 'label': label, 'name': image_path}


class ArrayExamples(ExampleList):
  """Examples held in memory (the synthetic set). images uint8 [N, H, W, 3], labels [N, H, W]."""

  def __init__(self, ids, images: np.ndarray, labels: np.ndarray):
    self.ids = tuple(ids)
    self._images = tf.constant(images, tf.uint8)
    self._labels = tf.constant(labels, tf.int32)
    self._names = tf.constant(list(self.ids))

  def read(self, index, with_label):
    image = tf.gather(self._images, index)
    label = tf.gather(self._labels, index) if with_label else tf.zeros(
        tf.shape(image)[:2], tf.int32)
    return {'image': image, 'label': label, 'name': tf.gather(self._names, index)}


@dataclasses.dataclass(frozen=True)
class Source:
  """One dataset, partitioned: what `build_datasets` turns into streams.

  class_names: C names; palette: uint8 [C, 3], the dataset's official colours.
  labeled / unlabeled: training examples (disjoint); unlabeled may be empty ('full').
  val: the evaluation list, in a fixed order.
  eval_size: (H, W) every whole val image fits into (after the eval protocol's resize);
    the eval stream pads to it unless `data.eval_size` is set.
  """
  name: str
  class_names: tuple[str, ...]
  palette: np.ndarray
  labeled: ExampleList
  unlabeled: ExampleList
  val: ExampleList
  eval_size: tuple[int, int]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def existing_label_paths(label_paths: list[str], list_name: str) -> list[str] | None:
  """The label files of unlabeled images, for the diagnostic `data.unlabeled_labels`.

  All present (or remote, unchecked): the paths. None present: None (the images have no
  labels; the unlabeled batch then has no 'label'). Some missing: those paths become ''
  (an all-ignore label) and a warning says how many and names one; the labels that
  exist are still read, and a label file that exists but is bad stops the run as on the
  labeled stream.
  """
  if not label_paths or '://' in label_paths[0]:
    return list(label_paths)
  present = [os.path.isfile(p) for p in label_paths]
  if not any(present):
    logging.warning('None of the %d unlabeled images of %s has a label file (e.g. %s); '
                    'the unlabeled batches carry no labels (data.unlabeled_labels).',
                    len(label_paths), list_name, label_paths[0])
    return None
  if not all(present):
    missing = [p for p, ok in zip(label_paths, present) if not ok]
    logging.warning('%d of the %d unlabeled images of %s have no label file (e.g. %s); '
                    'their labels in the unlabeled batches are all 255 (ignore); these '
                    'labels serve diagnostics only.', len(missing), len(label_paths),
                    list_name, missing[0])
  return [p if ok else '' for p, ok in zip(label_paths, present)]


def check_files_exist(paths: list[str], list_name: str, data_dir: str, what_to_do: str):
  """Fails naming the first missing file; nothing listed is silently skipped.

  Only local paths are checked up front (one stat each); remote paths (gs://...) fail
  later, in the pipeline, with the file's name.
  """
  if not paths or '://' in paths[0]:
    return
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise DataError(
        f'{len(missing)} of the {len(paths)} files of {list_name} are missing under '
        f'{data_dir} (e.g. {os.path.relpath(missing[0], data_dir)}); {what_to_do}.')
