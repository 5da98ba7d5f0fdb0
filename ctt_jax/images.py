"""Image and label resizing and normalisation shared by training and inference."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def to_unit_range(images_uint8):
  """uint8 [..., 3] -> float32 in [0, 1]."""
  return jnp.asarray(images_uint8).astype(jnp.float32) / 255.0


def normalize(images_01, mean, std):
  """(x - mean) / std per channel, on [0, 1] images (config.image_mean / image_std)."""
  return (images_01 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


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
