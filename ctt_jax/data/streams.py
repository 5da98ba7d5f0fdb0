"""The three tf.data streams, each a pure function of (seed, element index).

Training streams have no iterator state worth saving: global element i of a stream is

    epoch, position = divmod(i, n)                    # n = number of examples
    example = permutation(seed, stream, epoch)[position]
    augmentation seed = fold_in(seed, stream, i)

and step s of a run reads the global elements [s * B, (s + 1) * B). A process reads the
slice [s * B + start, s * B + stop) its devices hold (`batch_range`; by default process p of
P reads [p * B / P, (p + 1) * B / P)), so the per-process batches make up the
single-process batch, and `start_step` resumes exactly. When a slice has more processes
than a batch has images, processes that share an image pass the same range and read it
from the same stream position.
"""
from __future__ import annotations

import atexit
from typing import Callable, Iterator
import weakref

import numpy as np
import tensorflow as tf

from ctt_jax.data import augment as augment_lib
from ctt_jax.data import errors
from ctt_jax.data.sources import ExampleList

# Stream tags keep the labeled and unlabeled orders/augmentations independent.
LABELED, UNLABELED = 1, 2
_PERMUTATION, _AUGMENTATION = 0, 1
_MAX_INDEX = 2**62  # "infinite": far more elements than any run reads


def local_batch_size(global_batch: int, process_count: int, what: str) -> int:
  if global_batch % process_count:
    raise errors.DataError(f'{what}={global_batch} does not split evenly over '
                           f'{process_count} processes; make it a multiple of '
                           f'{process_count}.')
  return global_batch // process_count


def even_range(global_batch: int, process_index: int, process_count: int,
               what: str) -> tuple[int, int]:
  """[start, stop) of process p's equal share of a global batch."""
  local = local_batch_size(global_batch, process_count, what)
  return process_index * local, (process_index + 1) * local


def _to_global(k, batch_range: tuple[int, int], global_batch: int):
  """This process's k-th element -> global element index (step k // local, slot k % local)."""
  start, stop = batch_range
  local = stop - start
  step, j = k // local, k % local
  return step * global_batch + start + j


def global_indices(start_step: int, global_batch: int,
                   batch_range: tuple[int, int]) -> tf.data.Dataset:
  """int64 global element indices this process reads, from step `start_step` on."""
  local = batch_range[1] - batch_range[0]
  return tf.data.Dataset.range(start_step * local, _MAX_INDEX).map(
      lambda k: _to_global(k, batch_range, global_batch))


def _fold(seed: int, tag: int, purpose: int, data) -> tf.Tensor:
  base = tf.constant([seed, tag], tf.int64)
  base = tf.random.experimental.stateless_fold_in(base, purpose)
  return tf.random.experimental.stateless_fold_in(base, data)


def example_position(i, n: int, seed: int, tag: int) -> tf.Tensor:
  """Which of the n examples global element `i` shows: a fresh permutation per epoch."""
  epoch, position = i // n, i % n
  if n == 1:
    return tf.zeros_like(i)
  return tf.random.experimental.index_shuffle(
      position, _fold(seed, tag, _PERMUTATION, epoch), n - 1)


def element_seed(i, seed: int, tag: int) -> tf.Tensor:
  """int64 [2]: the seed of element i's augmentation draws."""
  return _fold(seed, tag, _AUGMENTATION, i)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # Parallel maps keep element order.
  options.threading.max_intra_op_parallelism = 1
  return options


LABELED_KEYS = ('image', 'label')
UNLABELED_KEYS = ('image', 'valid')


def train_stream(examples: ExampleList, params: augment_lib.TrainAugment, *, seed: int,
                 tag: int, keys: tuple[str, ...], global_batch: int, start_step: int,
                 batch_range: tuple[int, int]) -> tf.data.Dataset:
  """Infinite batches of weak views, with the `keys` of {'image': uint8 [b, h, w, 3],
  'label': int32 [b, h, w], 'valid': bool [b, h, w]}; b = stop - start of `batch_range`
  (this process's images of each global batch), (h, w) = crop.

  The label is read only when `keys` has 'label'. It never changes the other keys:
  image, label and valid go through one augmentation draw seeded by (seed, tag, element),
  and the draw does not depend on the label's values.
  """
  n = len(examples)
  if n == 0:
    raise errors.DataError('A training stream has no examples; check data.split.')
  unknown = set(keys) - {'image', 'label', 'valid'}
  if unknown or 'image' not in keys:
    raise ValueError(f'train_stream keys {keys} must hold image and only label or valid.')
  with_label = 'label' in keys

  def load(i):
    example = examples.read(example_position(i, n, seed, tag), with_label)
    image, label, valid = augment_lib.train_augment(
        params, example['image'], example['label'], element_seed(i, seed, tag))
    views = {'image': image, 'label': label, 'valid': valid}
    return {k: views[k] for k in keys}

  local = batch_range[1] - batch_range[0]
  ds = global_indices(start_step, global_batch, batch_range)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(local, drop_remainder=True).prefetch(2).with_options(_options())


def eval_stream(examples: ExampleList, *, resize_to, pad_size, global_batch: int,
                process_index: int, process_count: int,
                batch_range: tuple[int, int] | None = None) -> tf.data.Dataset:
  """All val images once, in list order, as this process's slices of global batches
  (`batch_range`, by default process p's equal share).

  Yields {'image': uint8 [b, H, W, 3], 'label': int32 [b, H, W], 'valid': bool
  [b, H, W], 'index': int32 [b]} with (H, W) = pad_size. Elements past the end of the
  list (last batch) are blank: valid all False, label 255, index -1. Every process
  yields the same number of batches, ceil(n / global_batch).
  """
  n = len(examples)
  if batch_range is None:
    batch_range = even_range(global_batch, process_index, process_count,
                             'data.eval_batch_size')
  local = batch_range[1] - batch_range[0]
  num_steps = -(-n // global_batch)

  def real(i):
    example = examples.read(i, with_label=True)
    image, label, valid = augment_lib.eval_prepare(
        example['image'], example['label'], resize_to, pad_size, example['name'])
    return image, label, valid, tf.cast(i, tf.int32)

  def blank():
    return (tf.zeros([*pad_size, 3], tf.uint8),
            tf.fill(pad_size, tf.constant(augment_lib.IGNORE, tf.int32)),
            tf.zeros(pad_size, tf.bool), tf.constant(-1, tf.int32))

  def load(i):
    image, label, valid, index = tf.cond(i < n, lambda: real(i), blank)
    return {'image': image, 'label': label, 'valid': valid, 'index': index}

  ds = tf.data.Dataset.range(num_steps * local).map(
      lambda k: _to_global(k, batch_range, global_batch))
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(local, drop_remainder=True).prefetch(2).with_options(_options())


class NumpyStream(Iterator[dict[str, np.ndarray]]):
  """Numpy batches from a tf.data pipeline; data errors surface as `DataError`."""

  def __init__(self, make_dataset: Callable[[], tf.data.Dataset]):
    self._iterator = iter(make_dataset().as_numpy_iterator())
    _OPEN_STREAMS.add(self)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      raise StopIteration
    try:
      return next(self._iterator)
    except tf.errors.OpError as e:
      message = errors.untag(str(e))
      if message is None:
        raise
      raise errors.DataError(message) from None

  def close(self):
    """Stops the pipeline's background threads (prefetching stops, buffers are freed)."""
    self._iterator = None


_OPEN_STREAMS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_streams():
  # A tf.data iterator still prefetching through tf.numpy_function when the interpreter
  # shuts down can deadlock the exit (seen with tfds ArrayRecord reads): stop them first.
  for stream in list(_OPEN_STREAMS):
    stream.close()
