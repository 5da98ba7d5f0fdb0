"""Weak augmentation (training) and whole-image preparation (evaluation), in tf ops.

Every random draw is a `tf.random.stateless_*` op seeded by the element's own seed, so an
element's augmentation depends only on (config.seed, stream, element index). Image, label
and validity mask always go through the same geometric transform (one shared draw); labels
and masks are resampled with nearest neighbour, images bilinearly.

Shapes: image float32 [H, W, 3] (0..255), label int32 [H, W] (255 = ignore), valid bool
[H, W] (False where a pixel did not come from the source image: padding, rotation fill).
"""
from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from ctt_jax.data import errors

IGNORE = 255


@dataclasses.dataclass(frozen=True)
class TrainAugment:
  """The weak view's parameters (from config.data, see `from_config`).

  resize: (H, W) every image is first resized to, or None (keep the original size).
  scale_range: (lo, hi) random rescale factor.
  scale_step: 0: the factor is uniform on scale_range; > 0: it is one of lo, lo + step,
    ..., hi, each as likely (`draw_scale`).
  rotation_degrees: max |angle| of a random rotation about the centre (0: off).
  translate_fraction: max |shift| as a fraction of height / width (0: off).
  crop_size: (H, W) of the output; smaller images are padded (label 255, valid False).
  hflip: random horizontal flip with probability 1/2.
  """
  resize: tuple[int, int] | None
  scale_range: tuple[float, float]
  scale_step: float
  rotation_degrees: float
  translate_fraction: float
  crop_size: tuple[int, int]
  hflip: bool

  @classmethod
  def from_config(cls, data_config) -> 'TrainAugment':
    return cls(resize=size_or_none(data_config.resize),
               scale_range=tuple(float(s) for s in data_config.scale_range),
               scale_step=float(data_config.scale_step),
               rotation_degrees=float(data_config.rotation_degrees),
               translate_fraction=float(data_config.translate_fraction),
               crop_size=tuple(int(s) for s in data_config.crop_size),
               hflip=bool(data_config.hflip))


def size_or_none(size) -> tuple[int, int] | None:
  """(H, W) with both > 0, else None ('no resize')."""
  size = tuple(int(s) for s in size)
  return size if len(size) == 2 and min(size) > 0 else None


def resize(image, label, valid, size):
  """Resizes to `size` = (H, W): image bilinear, label and valid nearest."""
  image = tf.image.resize(image, size, 'bilinear')
  label = tf.image.resize(label[..., None], size, 'nearest')[..., 0]
  valid = tf.image.resize(tf.cast(valid, tf.uint8)[..., None], size, 'nearest')[..., 0] > 0
  return image, label, valid


def draw_scale(params: TrainAugment, seed):
  """The random rescale factor, a float32 scalar: uniform on `scale_range`, or, with
  `scale_step` > 0, one of the grid lo, lo + step, ..., hi drawn uniformly (the CTT
  authors' VOC loader draws `0.5 + random.randint(0, 11) / 10`: 0.5, 0.6, ..., 1.6)."""
  lo, hi = params.scale_range
  if params.scale_step <= 0:
    return tf.random.stateless_uniform([], seed, lo, hi)
  count = int(round((hi - lo) / params.scale_step)) + 1  # grid points, both ends included
  k = tf.random.stateless_uniform([], seed, 0, count, tf.int32)
  return lo + tf.cast(k, tf.float32) * params.scale_step


def _affine(image, label, valid, angle, shift):
  """Rotates by `angle` (radians) about the centre and shifts by `shift` = (dy, dx) px."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  cy, cx = (h - 1) / 2, (w - 1) / 2
  cos, sin = tf.cos(angle), tf.sin(angle)
  # The op maps each output pixel back to its input pixel: p_in = R^T (p_out - c - t) + c.
  x0, y0 = cx + shift[1], cy + shift[0]
  transform = tf.stack([cos, sin, cx - cos * x0 - sin * y0,
                        -sin, cos, cy + sin * x0 - cos * y0, 0., 0.])[None]

  def warp(x, fill, interpolation):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform, output_shape=shape[:2],
        fill_value=fill, interpolation=interpolation, fill_mode='CONSTANT')[0]

  image = warp(image, 0., 'BILINEAR')
  label = tf.cast(warp(tf.cast(label[..., None], tf.float32), float(IGNORE), 'NEAREST'),
                  tf.int32)[..., 0]
  valid = warp(tf.cast(valid[..., None], tf.float32), 0., 'NEAREST')[..., 0] > 0.5
  return image, label, valid


def pad_to(image, label, valid, size):
  """Pads bottom/right up to at least `size` = (H, W): image 0, label 255, valid False."""
  shape = tf.shape(image)
  pads = [[0, tf.maximum(size[0] - shape[0], 0)], [0, tf.maximum(size[1] - shape[1], 0)]]
  image = tf.pad(image, pads + [[0, 0]])
  label = tf.pad(label, pads, constant_values=IGNORE)
  valid = tf.pad(valid, pads, constant_values=False)
  return image, label, valid


def train_augment(params: TrainAugment, image, label, seed):
  """The weak view of one example.

  Args:
    params: the augmentation settings.
    image: uint8 [H, W, 3]; label: int32 [H, W]; seed: int64 [2], this element's seed.
  Returns:
    image uint8 [h, w, 3], label int32 [h, w], valid bool [h, w] with (h, w) = crop_size.
  """
  s_scale, s_angle, s_shift, s_top, s_left, s_flip = tf.unstack(
      tf.random.experimental.stateless_split(seed, 6))
  image = tf.cast(image, tf.float32)
  valid = tf.ones(tf.shape(label), tf.bool)
  if params.resize is not None:
    image, label, valid = resize(image, label, valid, params.resize)

  lo, hi = params.scale_range
  if (lo, hi) != (1.0, 1.0):
    scale = draw_scale(params, s_scale)
    new_size = tf.cast(tf.round(tf.cast(tf.shape(label), tf.float32) * scale), tf.int32)
    image, label, valid = resize(image, label, valid, tf.maximum(new_size, 1))

  if params.rotation_degrees > 0 or params.translate_fraction > 0:
    max_angle = params.rotation_degrees * math.pi / 180
    angle = tf.random.stateless_uniform([], s_angle, -max_angle, max_angle)
    size = tf.cast(tf.shape(label), tf.float32)
    shift = tf.random.stateless_uniform([2], s_shift, -1., 1.) * (
        params.translate_fraction * size)
    image, label, valid = _affine(image, label, valid, angle, shift)

  crop = params.crop_size
  image, label, valid = pad_to(image, label, valid, crop)
  shape = tf.shape(label)
  top = tf.random.stateless_uniform([], s_top, 0, shape[0] - crop[0] + 1, tf.int32)
  left = tf.random.stateless_uniform([], s_left, 0, shape[1] - crop[1] + 1, tf.int32)
  image = image[top:top + crop[0], left:left + crop[1]]
  label = label[top:top + crop[0], left:left + crop[1]]
  valid = valid[top:top + crop[0], left:left + crop[1]]

  if params.hflip:
    flip = tf.random.stateless_uniform([], s_flip) < 0.5
    image, label, valid = tf.cond(
        flip, lambda: (image[:, ::-1], label[:, ::-1], valid[:, ::-1]),
        lambda: (image, label, valid))

  # Bilinear sampling blurs the image a little past the nearest-neighbour validity edge;
  # make padding exactly "label 255, image 0" so every consumer sees one convention.
  label = tf.where(valid, label, IGNORE)
  image = tf.where(valid[..., None], image, 0.)
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return (tf.ensure_shape(image, [*crop, 3]), tf.ensure_shape(label, crop),
          tf.ensure_shape(valid, crop))


def eval_prepare(image, label, resize_to, pad_size, name):
  """A whole val image for evaluation, padded to `pad_size` = (H, W).

  Args:
    image: uint8 [H, W, 3]; label: int32 [H, W]; name: string scalar for the error.
    resize_to: (H, W) for the `paper` protocol (image bilinear, label nearest) or None.
  Returns:
    image uint8 [*pad_size, 3], label int32 (255 on padding), valid bool.
  """
  image = tf.cast(image, tf.float32)
  valid = tf.ones(tf.shape(label), tf.bool)
  if resize_to is not None:
    image, label, valid = resize(image, label, valid, resize_to)
  shape = tf.shape(label)
  fits = tf.logical_and(shape[0] <= pad_size[0], shape[1] <= pad_size[1])
  message = errors.tf_tag([
      'Val image ', name, ' is ', tf.strings.as_string(shape[0]), 'x',
      tf.strings.as_string(shape[1]), f' (HxW), larger than the eval size {pad_size[0]}x'
      f'{pad_size[1]}; set data.eval_size to at least its size.'])
  with tf.control_dependencies([tf.debugging.Assert(fits, [message])]):
    image, label, valid = pad_to(image, label, valid, pad_size)
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return (tf.ensure_shape(image, [*pad_size, 3]), tf.ensure_shape(label, pad_size),
          tf.ensure_shape(valid, pad_size))
