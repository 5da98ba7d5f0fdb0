"""Reading image and label files, with the checks that need decoded pixels.

These run inside the tf.data pipeline through `tf.numpy_function`, so a bad file stops
the run with a sentence naming it (errors.PipelineError) instead of a bare TensorFlow
decoding error. Pillow is used (not tf.io.decode_*) because it reads palette PNGs as class
indices (VOC's SegmentationClass), 16-bit PNGs, CMYK/greyscale JPEGs, and it names no
file in its errors either, which we add. It releases the GIL while decoding.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow as tf

from ctt_jax.data.errors import PipelineError


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """How a dataset's label files map to training ids.

  lut: int32 [256]; raw value -> train id in [0, C) or 255 (ignore); -1 = invalid.
  expected: the valid raw values, in words, for error messages.
  hint: what to do when a file holds invalid values.
  """
  lut: np.ndarray
  expected: str
  hint: str


def identity_label_spec(num_classes: int, extra_ignore: tuple[int, ...] = (),
                        hint: str = '') -> LabelSpec:
  """Labels that already hold train ids 0..C-1, plus 255 (and `extra_ignore`) = ignore."""
  lut = np.full(256, -1, np.int32)
  lut[:num_classes] = np.arange(num_classes)
  lut[255] = 255
  for v in extra_ignore:
    lut[v] = 255
  extra = ''.join(f', {v}' for v in extra_ignore)
  return LabelSpec(lut, f'0..{num_classes - 1}{extra} and 255', hint)


def _read_bytes(path: str) -> bytes:
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      return f.read()
  except (OSError, tf.errors.OpError) as e:
    raise PipelineError(f'Could not read {path} ({type(e).__name__}); check that the file '
                        'exists and is readable.') from None


def _open(path: str) -> Image.Image:
  try:
    image = Image.open(io.BytesIO(_read_bytes(path)))
    image.load()  # Decodes now, so truncated or corrupt files fail here.
    return image
  except PipelineError:
    raise
  except Image.UnidentifiedImageError:
    raise PipelineError(f'Could not decode {path} (not an image format Pillow reads); '
                        're-download or re-extract this file.') from None
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types)
    raise PipelineError(f'Could not decode {path} ({type(e).__name__}: {e}); re-download '
                        'or re-extract this file.') from None


def load_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB."""
  image = _open(path)
  if image.mode != 'RGB':
    image = image.convert('RGB')
  return np.asarray(image, np.uint8)


def load_label(path: str, spec: LabelSpec) -> np.ndarray:
  """int32 [H, W] train ids (255 = ignore), checked against `spec`."""
  image = _open(path)
  if image.mode not in ('L', 'P', 'I', 'I;16', 'I;16B'):
    raise PipelineError(f'Label file {path} is a {image.mode} image; labels must be '
                        'single-channel class-index PNGs (' + spec.hint + ').')
  return map_label(np.asarray(image), spec, f'Label file {path}')


def map_label(raw: np.ndarray, spec: LabelSpec, what: str) -> np.ndarray:
  """Raw label values [H, W] -> int32 train ids; `what` names the label in the error."""
  raw = raw.astype(np.int64)
  too_big = (raw > 255) | (raw < 0)
  mapped = spec.lut[np.clip(raw, 0, 255)]
  bad = (mapped < 0) | too_big
  if bad.any():
    values = ', '.join(str(v) for v in np.unique(raw[bad])[:6])
    raise PipelineError(f'{what} holds values {values} outside the valid '
                        f'{spec.expected}; {spec.hint}.')
  return mapped.astype(np.int32)


def load_pair(image_path: str, label_path: str, spec: LabelSpec):
  """(uint8 [H, W, 3], int32 [H, W]); fails if the two sizes differ.

  An empty `label_path` (an unlabeled image without a label file) gives an all-255 label.
  """
  image = load_image(image_path)
  if not label_path:
    return image, np.full(image.shape[:2], 255, np.int32)
  label = load_label(label_path, spec)
  if image.shape[:2] != label.shape:
    raise PipelineError(
        f'Label {label_path} is {label.shape[0]}x{label.shape[1]} but its image '
        f'{image_path} is {image.shape[0]}x{image.shape[1]} (HxW); use the label file '
        'made for this image at its original size.')
  return image, label


def tf_load_image(path: tf.Tensor) -> tf.Tensor:
  """In-graph `load_image`: string scalar -> uint8 [H, W, 3]."""
  image = tf.numpy_function(lambda p: load_image(p.decode()), [path], tf.uint8,
                            stateful=False)
  return tf.ensure_shape(image, [None, None, 3])


def tf_load_pair(image_path: tf.Tensor, label_path: tf.Tensor, spec: LabelSpec):
  """In-graph `load_pair`: two string scalars -> (uint8 [H, W, 3], int32 [H, W])."""
  image, label = tf.numpy_function(
      lambda i, l: load_pair(i.decode(), l.decode(), spec), [image_path, label_path],
      (tf.uint8, tf.int32), stateful=False)
  return tf.ensure_shape(image, [None, None, 3]), tf.ensure_shape(label, [None, None])
