"""A procedural scene dataset that needs no files: the default for demos and tests.

Five classes: background (a sky/ground gradient with soft noise), rectangle (flat colour,
dark outline), disk (radial shading), triangle (grainy texture) and stripes (two-colour
bands). Object colours overlap between classes on purpose (each class has a preferred hue,
but 40% of objects take any hue, and the ground shares the warm hues), so colour alone
does not solve the task; shape and texture do, within the receptive field of a small CNN.
Objects have random size, position and rotation, overlap (later ones occlude earlier
ones) and may leave the frame; sensor noise and brightness vary per image.

Image k of a split is drawn from np.random.default_rng([synthetic_seed, split, k]) only,
so the set is the same however many images are made and in whatever order.
"""
from __future__ import annotations

import colorsys
import functools

import numpy as np

from ctt_jax.data import splits
from ctt_jax.data.sources import ArrayExamples, Source

CLASS_NAMES = ('background', 'rectangle', 'disk', 'triangle', 'stripes')
PALETTE = np.array([(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25),
                    (0, 130, 200)], np.uint8)
# Preferred hue of each object class (red, green, yellow, violet).
_CLASS_HUE = {1: 0.0, 2: 0.33, 3: 0.15, 4: 0.75}
_TRAIN, _VAL = 0, 1


def _colour(rng: np.random.Generator, hue: float | None) -> np.ndarray:
  """float32 [3] RGB in 0..255; hue None = any hue."""
  h = rng.uniform() if hue is None else (hue + rng.normal(0, 0.08)) % 1.0
  rgb = colorsys.hsv_to_rgb(h, rng.uniform(0.35, 0.9), rng.uniform(0.4, 0.95))
  return np.array(rgb, np.float32) * 255


def _smooth_noise(rng, height, width, cells=4) -> np.ndarray:
  """float32 [H, W] in about -1..1: a random coarse grid, bilinearly upsampled."""
  grid = rng.uniform(-1, 1, (cells + 1, cells + 1))
  y = np.linspace(0, cells, height)
  x = np.linspace(0, cells, width)
  y0 = np.minimum(y.astype(int), cells - 1)
  x0 = np.minimum(x.astype(int), cells - 1)
  fy, fx = (y - y0)[:, None], (x - x0)[None, :]
  g = lambda dy, dx: grid[(y0 + dy)[:, None], (x0 + dx)[None, :]]
  return ((1 - fy) * ((1 - fx) * g(0, 0) + fx * g(0, 1))
          + fy * ((1 - fx) * g(1, 0) + fx * g(1, 1))).astype(np.float32)


def _background(rng, yy, height, width) -> np.ndarray:
  """Sky above a random horizon, ground below, each a vertical gradient."""
  horizon = rng.uniform(0.3, 0.7) * height
  sky_hue = rng.uniform(0.5, 0.7) if rng.uniform() < 0.7 else None
  sky_top, sky_low = _colour(rng, sky_hue), _colour(rng, sky_hue)
  ground_hue = rng.uniform(0.02, 0.35)
  ground_far, ground_near = _colour(rng, ground_hue), _colour(rng, ground_hue)
  # yy: [H, 1] row centres; the gradients are per row, broadcast over columns.
  t_sky = np.clip(yy / max(horizon, 1), 0, 1)[..., None]
  t_ground = np.clip((yy - horizon) / max(height - horizon, 1), 0, 1)[..., None]
  rows = np.where((yy < horizon)[..., None],
                  (1 - t_sky) * sky_top + t_sky * sky_low,
                  (1 - t_ground) * ground_far + t_ground * ground_near)
  return rows + 12 * _smooth_noise(rng, height, width)[..., None]


def _draw_object(rng, image, label, cls):
  """Paints one object of class `cls` over `image` [H, W, 3] and `label` [H, W]."""
  height, width = label.shape
  size = rng.uniform(0.1, 0.32) * min(height, width)
  cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
  angle = rng.uniform(0, np.pi)
  colour = _colour(rng, _CLASS_HUE[cls] if rng.uniform() < 0.6 else None)
  # Work in the object's bounding window only (every shape fits in 1.5 * size).
  top, bottom = max(int(cy - 1.5 * size), 0), min(int(cy + 1.5 * size) + 1, height)
  left, right = max(int(cx - 1.5 * size), 0), min(int(cx + 1.5 * size) + 1, width)
  if top >= bottom or left >= right:
    return
  yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32) + 0.5
  # Coordinates in the object's rotated frame.
  u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
  v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)

  if cls == 1:  # rectangle: flat colour, darker 1.5 px outline
    a, b = size * rng.uniform(0.5, 1.0, 2)
    mask = (np.abs(u) <= a) & (np.abs(v) <= b)
    edge = np.minimum(a - np.abs(u), b - np.abs(v)) < 1.5
    paint = np.where(edge[..., None], 0.55 * colour, colour)
  elif cls == 2:  # disk: bright centre, dark rim
    r2 = (u**2 + v**2) / size**2
    mask = r2 <= 1
    paint = colour * (1.2 - 0.7 * r2)[..., None]
  elif cls == 3:  # triangle: grainy texture
    corners = angle + 2 * np.pi * np.arange(3) / 3 + rng.uniform(-0.3, 0.3, 3)
    px, py = cx + size * 1.3 * np.cos(corners), cy + size * 1.3 * np.sin(corners)
    side = [(px[(k + 1) % 3] - px[k]) * (yy - py[k]) - (py[(k + 1) % 3] - py[k]) * (xx - px[k])
            for k in range(3)]
    mask = ((side[0] >= 0) & (side[1] >= 0) & (side[2] >= 0)) | (
        (side[0] <= 0) & (side[1] <= 0) & (side[2] <= 0))
    paint = colour + rng.normal(0, 28, (*mask.shape, 3)).astype(np.float32)
  else:  # stripes: two-colour bands across an ellipse
    a, b = size * rng.uniform(0.6, 1.1, 2)
    mask = (u / a)**2 + (v / b)**2 <= 1
    period = rng.uniform(4, 8)
    phase = rng.uniform(0, 2 * np.pi)
    band = np.sin(2 * np.pi * u / period + phase) > 0
    paint = np.where(band[..., None], colour, 0.6 * _colour(rng, None))
  image[top:bottom, left:right][mask] = paint[mask]
  label[top:bottom, left:right][mask] = cls


def render_scene(rng: np.random.Generator, height: int, width: int):
  """One scene: (image uint8 [H, W, 3], label uint8 [H, W] in 0..4)."""
  yy = np.arange(height, dtype=np.float32)[:, None] + 0.5
  image = _background(rng, yy, height, width).astype(np.float32)
  label = np.zeros((height, width), np.uint8)
  for _ in range(rng.integers(3, 9)):
    _draw_object(rng, image, label, int(rng.integers(1, len(CLASS_NAMES))))
  image = image * rng.uniform(0.8, 1.2) + rng.normal(0, rng.uniform(2, 8), image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8), label


@functools.lru_cache(maxsize=8)
def make_split(seed: int, split: int, count: int, height: int, width: int):
  """(images uint8 [count, H, W, 3], labels uint8 [count, H, W]) of one split."""
  scenes = [render_scene(np.random.default_rng([seed, split, k]), height, width)
            for k in range(count)]
  images = np.stack([s[0] for s in scenes])
  labels = np.stack([s[1] for s in scenes])
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def build_source(config) -> Source:
  """The synthetic set: data.synthetic_num_train / _num_val images of data.synthetic_image_size."""
  data = config.data
  height, width = (int(s) for s in data.synthetic_image_size)
  seed = int(data.synthetic_seed)
  train_images, train_labels = make_split(seed, _TRAIN, int(data.synthetic_num_train),
                                          height, width)
  val_images, val_labels = make_split(seed, _VAL, int(data.synthetic_num_val), height, width)
  train_ids = [f'train_{k:05d}' for k in range(len(train_images))]
  count = splits.labeled_count(data.split, data.labeled_fraction, len(train_ids))
  labeled_ids, _ = splits.partition_by_fraction(train_ids, count, data.partition_seed)
  is_labeled = np.isin(train_ids, labeled_ids)
  ids = np.array(train_ids)
  return Source(
      'synthetic', CLASS_NAMES, PALETTE,
      labeled=ArrayExamples(ids[is_labeled], train_images[is_labeled],
                            train_labels[is_labeled]),
      unlabeled=ArrayExamples(ids[~is_labeled], train_images[~is_labeled],
                              train_labels[~is_labeled]),
      val=ArrayExamples([f'val_{k:05d}' for k in range(len(val_images))], val_images,
                        val_labels),
      eval_size=(height, width))
