"""Cityscapes through tensorflow-datasets (builder `cityscapes/semantic_segmentation`).

tfds prepares the dataset once from `leftImg8bit_trainvaltest.zip` and
`gtFine_trainvaltest.zip` in its manual_dir (= data.data_dir) into data.tfds_data_dir (tfds'
default when empty). We ask for the ArrayRecord format: it gives random access, which the
streams need (element i -> example permutation(i)). Features used: `image_id`,
`image_left` uint8 [1024, 2048, 3], `segmentation_label` uint8 [1024, 2048, 1] (raw
labelIds, mapped to trainIds here).
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ctt_jax.data import cityscapes
from ctt_jax.data import decode
from ctt_jax.data.errors import DataError, PipelineError
from ctt_jax.data.sources import ExampleList

BUILDER = 'cityscapes/semantic_segmentation'
_IMAGE, _LABEL = 'image_left', 'segmentation_label'


def load_builder(data_config, manual_dir: str) -> tfds.core.DatasetBuilder:
  """The prepared builder; prepares it (ArrayRecord) from the zips on first use."""
  builder = tfds.builder(BUILDER, data_dir=data_config.tfds_data_dir or None)
  if builder.is_prepared():
    return builder
  zips = [os.path.join(manual_dir, z) for z in cityscapes.ZIPS] if manual_dir else []
  if not zips or not all(os.path.isfile(z) for z in zips):
    raise DataError(cityscapes.missing_message(manual_dir))
  try:
    builder.download_and_prepare(
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except ModuleNotFoundError as e:
    # tfds' preparation code imports packages its wheel does not declare.
    raise DataError(f'Preparing Cityscapes with tensorflow-datasets needs the Python '
                    f'package {e.name}; pip install {e.name} and run again.') from None
  return builder


def data_source(builder, split: str, skip: tuple[str, ...] = ()):
  """Random-access view of one split; `skip` features stay undecoded (bytes)."""
  decoders = {k: tfds.decode.SkipDecoding() for k in skip} or None
  try:
    return builder.as_data_source(split, decoders=decoders)
  except NotImplementedError:
    raise DataError(
        f'The tfds cityscapes data at {builder.data_dir} is stored as '
        f'{builder.info.file_format}, which has no random access; convert it with '
        f'`tfds convert_format --dataset_dir={builder.data_dir} '
        '--out_file_format=array_record` or set data.tfds_data_dir to a fresh folder.'
    ) from None


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def record_ids(builder, split: str) -> list[str]:
  """image_id of every record of `split`, in record order (cached beside the data).

  Reading the IDs touches every record once, so the result is written to
  `<builder.data_dir>/ctt_image_ids_<split>.json` (skipped if that folder is read-only).
  """
  cache = os.path.join(str(builder.data_dir), f'ctt_image_ids_{split}.json')
  if tf.io.gfile.exists(cache):
    with tf.io.gfile.GFile(cache) as f:
      return json.load(f)
  source = data_source(builder, split, skip=(_IMAGE, _LABEL))
  ids = [_text(source[k]['image_id']) for k in range(len(source))]
  try:
    with tf.io.gfile.GFile(cache, 'w') as f:
      json.dump(ids, f)
  except (OSError, tf.errors.OpError):
    pass  # A read-only dataset folder only costs re-reading the IDs next time.
  return ids


class TfdsExamples(ExampleList):
  """Examples of one tfds split, in the order of an ID list."""

  def __init__(self, ids, source, record_of_id: dict[str, int], with_labels: bool):
    self.ids = tuple(ids)
    self._source = source
    self.has_labels = with_labels
    self._records = tf.constant([record_of_id[i] for i in self.ids] or [0], tf.int64)
    self._names = tf.constant(list(self.ids) or [''])

  def _fetch(self, record: np.int64, with_label: bool):
    example = self._source[int(record)]
    image = np.asarray(example[_IMAGE], np.uint8)
    if not with_label:
      return image, np.zeros(image.shape[:2], np.int32)
    what = f'The segmentation_label of tfds cityscapes example {_text(example["image_id"])}'
    label = decode.map_label(np.asarray(example[_LABEL])[..., 0], cityscapes.LABEL_SPEC,
                             what)
    if label.shape != image.shape[:2]:
      raise PipelineError(f'{what} is {label.shape[0]}x{label.shape[1]} but its image is '
                          f'{image.shape[0]}x{image.shape[1]} (HxW); prepare the tfds data '
                          'again from the official zips.')
    return image, label

  def read(self, index, with_label):
    if with_label and not self.has_labels:
      raise ValueError('These examples were opened without labels.')
    image, label = tf.numpy_function(
        lambda r: self._fetch(r, with_label), [tf.gather(self._records, index)],
        (tf.uint8, tf.int32), stateful=False)
    return {'image': tf.ensure_shape(image, [None, None, 3]),
            'label': tf.ensure_shape(label, [None, None]),
            'name': tf.gather(self._names, index)}


def examples(data_config, manual_dir, labeled_ids, unlabeled_ids, val_ids):
  """(labeled, unlabeled, val) example lists read through tfds.

  Every train record has its gtFine label; the unlabeled images' labels are decoded only
  for the diagnostic data.unlabeled_labels (never trained on).
  """
  builder = load_builder(data_config, manual_dir)
  lists = []
  for ids, split, with_labels in ((labeled_ids, 'train', True),
                                  (unlabeled_ids, 'train',
                                   bool(data_config.unlabeled_labels)),
                                  (val_ids, 'validation', True)):
    record_of_id = {image_id: k for k, image_id in enumerate(record_ids(builder, split))}
    missing = [i for i in ids if i not in record_of_id]
    if missing:
      raise DataError(
          f'{len(missing)} listed IDs (e.g. {missing[0]}) are not in the {split} split of '
          f'the tfds cityscapes data at {builder.data_dir}; prepare it from the complete '
          'official zips.')
    source = data_source(builder, split, skip=() if with_labels else (_LABEL,))
    lists.append(TfdsExamples(ids, source, record_of_id, with_labels))
  return tuple(lists)
