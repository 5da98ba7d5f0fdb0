"""Image and label resizing and normalisation shared by training and inference."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def to_unit_range(images_uint8):
  """uint8 [..., 3] -> float32 in [0, 1]."""
  return jnp.asarray(images_uint8).astype(jnp.float32) / 255.0


CHANNEL_ORDERS = ('rgb', 'bgr')


def normalize(images_01, mean, std, channel_order):
  """(x - mean) / std per channel on [0, 1] RGB images [..., 3], `mean` and `std` given
  for R, G, B; then, with `channel_order` 'bgr', the channels reversed: the network reads
  B, G, R, as networks trained on OpenCV/Caffe images do."""
  if channel_order not in CHANNEL_ORDERS:
    raise ValueError(f'Unknown image_channel_order {channel_order!r}; valid: '
                     f'{", ".join(CHANNEL_ORDERS)}.')
  x = (images_01 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x[..., ::-1] if channel_order == 'bgr' else x


def normalizer(config):
  """`normalize` with the config's image_mean, image_std and image_channel_order."""
  return functools.partial(normalize, mean=tuple(config.image_mean),
                           std=tuple(config.image_std),
                           channel_order=config.image_channel_order)


def upsample_bilinear(logits, size):
  """[..., h, w, C] -> [..., H, W, C], half-pixel centres (PyTorch align_corners=False)."""
  shape = logits.shape[:-3] + tuple(size) + logits.shape[-1:]
  return jax.image.resize(logits, shape, method='bilinear')


def resize_labels_nearest(labels, size):
  """Nearest-neighbour resize of [..., H, W] labels to [..., h, w] (pixel-centre sampling)."""
  height, width = labels.shape[-2:]
  h, w = size
  if (h, w) == (height, width):
    return labels
  rows = jnp.floor((jnp.arange(h) + 0.5) * height / h).astype(jnp.int32)
  cols = jnp.floor((jnp.arange(w) + 0.5) * width / w).astype(jnp.int32)
  return labels[..., rows, :][..., cols]
