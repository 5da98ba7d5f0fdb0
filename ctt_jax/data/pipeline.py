"""`build_datasets`: the labeled, unlabeled and eval streams of one run.

Uses config.data.* (see configs/common.py), config.batch_size (global labeled batch per
step; the unlabeled batch has the same size), config.seed, config.num_classes and
config.ignore_label. Batch formats are those of docs/INTERFACES.md.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from absl import logging
import numpy as np
import tensorflow as tf

from ctt_jax.data import augment
from ctt_jax.data import streams
from ctt_jax.data.errors import DataError
from ctt_jax.data.sources import Source

DATASET_NAMES = ('cityscapes', 'voc_aug', 'voc_classic', 'camvid', 'synthetic')
LABELED_IDS_FILE = 'labeled_ids.txt'


@dataclasses.dataclass
class Datasets:
  """The data of one run, for this process.

  labeled: endless iterator of {'image': uint8 [b, h, w, 3], 'label': int32 [b, h, w]}.
  unlabeled: endless iterator of {'image': uint8 [b, h, w, 3], 'valid': bool [b, h, w]},
    plus 'label': int32 [b, h, w] when `unlabeled_labels` (ground truth for diagnostics,
    never for training; same augmentation draw as the image, 255 = ignore).
    b = this process's images of the global batch_size, (h, w) = data.crop_size.
  eval_batches(): a fresh iterator over the whole val set: {'image': uint8 [e, H, W, 3],
    'label': int32 [e, H, W], 'valid': bool [e, H, W], 'index': int32 [e]},
    e = this process's images of data.eval_batch_size; `eval_steps` batches; padding has
    index -1.
  palette: uint8 [C, 3], the dataset's official class colours.
  unlabeled_labels: whether the unlabeled batches carry 'label' (data.unlabeled_labels
    and the dataset has labels for its unlabeled images); also set when training=False.
  """
  labeled: streams.NumpyStream | None
  unlabeled: streams.NumpyStream | None
  eval_batches: Callable[[], streams.NumpyStream]
  num_classes: int
  class_names: tuple[str, ...]
  palette: np.ndarray
  labeled_ids: tuple[str, ...]
  unlabeled_ids: tuple[str, ...]
  num_labeled: int
  num_eval: int
  eval_ids: tuple[str, ...]
  eval_steps: int
  eval_size: tuple[int, int]
  name: str
  unlabeled_labels: bool = False

  def close(self):
    """Stops the training streams' background threads (also done at interpreter exit)."""
    for stream in (self.labeled, self.unlabeled):
      if stream is not None:
        stream.close()


def _dataset_module(name: str):
  if name == 'cityscapes':
    from ctt_jax.data import cityscapes as module  # pylint: disable=g-import-not-at-top
  elif name in ('voc_aug', 'voc_classic'):
    from ctt_jax.data import voc as module  # pylint: disable=g-import-not-at-top
  elif name == 'camvid':
    from ctt_jax.data import camvid as module  # pylint: disable=g-import-not-at-top
  elif name == 'synthetic':
    from ctt_jax.data import synthetic as module  # pylint: disable=g-import-not-at-top
  else:
    raise DataError(f'Unknown data.name {name!r}; use one of: ' + ', '.join(DATASET_NAMES)
                    + '.')
  return module


def load_source(config) -> Source:
  """The partitioned dataset named by config.data.name (reads lists, checks files)."""
  return _dataset_module(config.data.name).build_source(config)


def class_info(name: str) -> tuple[tuple[str, ...], np.ndarray]:
  """(class names, uint8 [C, 3] palette) of dataset `name`, without reading any file."""
  module = _dataset_module(name)
  return tuple(module.CLASS_NAMES), np.asarray(module.PALETTE, np.uint8)


def _hide_gpus_from_tf():
  # TF must not grab accelerator memory that JAX needs; it only runs the input pipeline.
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass  # TF was initialised already (e.g. a second call); its devices are fixed then.


def eval_geometry(data_config, source: Source):
  """(resize_to or None, pad size): the eval protocol applied to this dataset.

  `paper` resizes image and label to data.resize when it is set (Cityscapes 512x1024),
  `full` keeps the original size. The pad size is data.eval_size if set, else the resize
  size, else the dataset's largest image size.
  """
  protocol = data_config.eval_protocol
  if protocol not in ('paper', 'full'):
    raise DataError(f'Unknown data.eval_protocol {protocol!r}; use paper or full.')
  resize_to = augment.size_or_none(data_config.resize) if protocol == 'paper' else None
  pad_size = (augment.size_or_none(data_config.eval_size)
              or resize_to or tuple(source.eval_size))
  return resize_to, pad_size


def build_datasets(config, *, start_step: int = 0, training: bool = True,
                   process_index: int | None = None,
                   process_count: int | None = None,
                   source: Source | None = None,
                   train_range: tuple[int, int] | None = None,
                   eval_range: tuple[int, int] | None = None) -> Datasets:
  """The streams of one run; step `start_step` onward (resume needs no iterator state).

  Process `process_index` of `process_count` (default: jax's) gets its slice of every
  global batch; the P slices concatenated are the single-process batch. `train_range`
  and `eval_range` ([start, stop) of the global train and eval batch, from
  `sharding.process_batch_range`) override the equal slices, e.g. when processes share
  images. With `training=False` (evaluation) the training streams are None and never built.
  `source`: the `load_source(config)` already read (training looks the data up before it
  builds anything, so a missing dataset fails first).
  """
  _hide_gpus_from_tf()
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  if config.ignore_label != augment.IGNORE:
    raise DataError(f'config.ignore_label={config.ignore_label} but the pipelines mark '
                    f'ignored pixels with {augment.IGNORE}; set ignore_label=255.')
  data = config.data
  source = source or load_source(config)
  if config.num_classes != source.num_classes:
    raise DataError(f'config.num_classes={config.num_classes} but {data.name} has '
                    f'{source.num_classes} classes; set num_classes={source.num_classes}.')

  if training and train_range is None:
    train_range = streams.even_range(int(config.batch_size), process_index, process_count,
                                     'batch_size')
  labeled, unlabeled = (_train_streams(config, source, start_step, train_range)
                        if training else (None, None))

  resize_to, pad_size = eval_geometry(data, source)
  eval_batch = int(data.eval_batch_size)
  make_eval = lambda: streams.eval_stream(
      source.val, resize_to=resize_to, pad_size=pad_size, global_batch=eval_batch,
      process_index=process_index, process_count=process_count, batch_range=eval_range)
  make_eval()  # Fails now, not at the first evaluation, if the eval batch does not split.

  return Datasets(
      labeled=labeled,
      unlabeled=unlabeled,
      eval_batches=lambda: streams.NumpyStream(make_eval),
      num_classes=source.num_classes,
      class_names=tuple(source.class_names),
      palette=np.asarray(source.palette, np.uint8),
      labeled_ids=tuple(source.labeled.ids),
      unlabeled_ids=tuple(source.unlabeled.ids),
      num_labeled=len(source.labeled),
      num_eval=len(source.val),
      eval_ids=tuple(source.val.ids),
      eval_steps=-(-len(source.val) // eval_batch),
      eval_size=tuple(pad_size),
      name=data.name,
      unlabeled_labels=unlabeled_has_labels(config, source))


def _train_streams(config, source: Source, start_step, train_range):
  """The endless labeled and unlabeled streams (numpy batches, tf.data behind)."""
  params = augment.TrainAugment.from_config(config.data)
  unlabeled = source.unlabeled
  if len(unlabeled) == 0:
    # Split 'full': every training image is labeled; the unlabeled stream (still needed by
    # semi-supervised methods) then draws from those same images (their labels only as
    # the diagnostic 'label' of data.unlabeled_labels).
    logging.warning('data.split=%r leaves no unlabeled images; the unlabeled stream '
                    'reuses the labeled images.', config.data.split)
    unlabeled = source.labeled
  common = dict(seed=int(config.seed), global_batch=int(config.batch_size),
                start_step=int(start_step), batch_range=tuple(train_range))
  labeled_ds = streams.train_stream(source.labeled, params, tag=streams.LABELED,
                                    keys=streams.LABELED_KEYS, **common)
  unlabeled_keys = streams.UNLABELED_KEYS + (
      ('label',) if unlabeled_has_labels(config, source) else ())
  unlabeled_ds = streams.train_stream(unlabeled, params, tag=streams.UNLABELED,
                                      keys=unlabeled_keys, **common)
  return (streams.NumpyStream(lambda: labeled_ds), streams.NumpyStream(lambda: unlabeled_ds))


def unlabeled_has_labels(config, source: Source) -> bool:
  """Whether the unlabeled batches carry 'label' (ground truth, for diagnostics only).

  True when data.unlabeled_labels is set and the dataset has labels for its unlabeled
  images (split 'full' reuses the labeled images, which have them).
  """
  if not config.data.unlabeled_labels:
    return False
  return (source.unlabeled if len(source.unlabeled) else source.labeled).has_labels


def write_labeled_ids(datasets: Datasets, workdir: str) -> str:
  """Writes the labeled IDs, one per line, to <workdir>/labeled_ids.txt; returns the path.

  The file has the format of a splits list, so a run's partition can be reused or
  audited. Call it from one process (process 0) when the workdir is shared.
  """
  tf.io.gfile.makedirs(workdir)
  path = os.path.join(workdir, LABELED_IDS_FILE)
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(''.join(i + '\n' for i in datasets.labeled_ids))
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path
