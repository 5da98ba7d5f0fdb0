"""Image and label resizing and normalisation shared by training and inference."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


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


RESIZE_CONVENTIONS = ('half_pixel', 'align_corners')


def _check_convention(convention: str):
  if convention not in RESIZE_CONVENTIONS:
    raise ValueError(f'Unknown resize_convention {convention!r}; valid: '
                     f'{", ".join(RESIZE_CONVENTIONS)}.')


def _align_corners_weights(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] linear interpolation weights of PyTorch's align_corners=True:
  output i samples input position i * (in - 1) / (out - 1), corners on corners."""
  scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
  pos = np.arange(size_out) * scale
  lo = np.minimum(np.floor(pos).astype(np.int64), size_in - 1)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = (pos - lo).astype(np.float32)
  weights = np.zeros((size_out, size_in), np.float32)
  np.add.at(weights, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(size_out), hi), frac)
  return weights


def upsample_bilinear(logits, size, convention: str = 'half_pixel'):
  """[..., h, w, C] -> [..., H, W, C] bilinearly: 'half_pixel' centres (PyTorch's
  align_corners=False) or 'align_corners' (PyTorch's align_corners=True, the authors'
  `nn.Upsample`), the latter as two exact float32 matrix products."""
  _check_convention(convention)
  if convention == 'half_pixel':
    shape = logits.shape[:-3] + tuple(size) + logits.shape[-1:]
    return jax.image.resize(logits, shape, method='bilinear')
  (h, w), (out_h, out_w) = logits.shape[-3:-1], tuple(size)
  rows = jnp.asarray(_align_corners_weights(h, out_h))
  cols = jnp.asarray(_align_corners_weights(w, out_w))
  exact = jax.lax.Precision.HIGHEST  # TPUs would otherwise multiply in bfloat16
  x = jnp.einsum('Hh,...hwc->...Hwc', rows, logits.astype(jnp.float32), precision=exact)
  x = jnp.einsum('Ww,...Hwc->...HWc', cols, x, precision=exact)
  return x.astype(logits.dtype)


def nearest_indices(size_in: int, size_out: int, convention: str) -> np.ndarray:
  """Source index of each output index of a nearest resize: the pixel centre
  floor((i + 0.5) * in / out) ('half_pixel'), or PyTorch's legacy 'nearest'
  floor(i * float32(in / out)) ('align_corners', what the authors' F.interpolate does)."""
  _check_convention(convention)
  if convention == 'half_pixel':
    return np.floor((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int32)
  scale = np.float32(size_in) / np.float32(size_out)
  index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int32)
  return np.minimum(index, size_in - 1)


def resize_labels_nearest(labels, size, convention: str = 'half_pixel'):
  """Nearest-neighbour resize of [..., H, W] labels to [..., h, w] (`nearest_indices`)."""
  height, width = labels.shape[-2:]
  h, w = size
  if (h, w) == (height, width):
    return labels
  rows = nearest_indices(height, h, convention)
  cols = nearest_indices(width, w, convention)
  return labels[..., rows, :][..., cols]
