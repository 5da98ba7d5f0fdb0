"""Random-access example lists and the `Source` every dataset module returns.

The streams (streams.py) are pure functions of (seed, element index), so they need random
access: `read(index)` returns example `index` of a list, inside the tf.data graph.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from ctt_jax.data import decode
from ctt_jax.data.errors import DataError


class ExampleList:
  """A fixed list of examples with IDs. Subclasses implement `read`."""

  ids: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.ids)

  def read(self, index: tf.Tensor, with_label: bool) -> dict[str, tf.Tensor]:
    """Example `index` (int64 scalar tensor).

    Returns {'image': uint8 [H, W, 3], 'label': int32 [H, W] train ids, 255 = ignore
    (zeros of the image size when `with_label` is False), 'name': string scalar naming
    the example in error messages}.
    """
    raise NotImplementedError


class FileExamples(ExampleList):
  """Images and labels read from files (the folder layouts)."""

  def __init__(self, ids, image_paths, label_paths, label_spec: decode.LabelSpec | None):
    self.ids = tuple(ids)
    self._image_paths = tf.constant(list(image_paths))
    self._label_paths = tf.constant(list(label_paths)) if label_paths else None
    self._label_spec = label_spec

  def read(self, index, with_label):
    image_path = tf.gather(self._image_paths, index)
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
