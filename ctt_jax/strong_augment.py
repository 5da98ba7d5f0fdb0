"""The students' strong view of the unlabeled batch, built on device inside the train step.

`build` mixes pairs of unlabeled images with a ClassMix mask (the pixels of a random half
of the classes predicted in an image, pasted onto the next image of the batch) or a
CutMix box, and applies colour jitter (brightness, contrast, saturation, hue) and Gaussian
blur. The mask is returned too: the same mask mixes the teachers' pseudo-labels and
confidences. It runs inside the jitted step because the ClassMix mask needs the
teachers' predictions.

Colour jitter and Gaussian blur are drawn per image (`coin='image'`) or once for the batch
(`'batch'`, the authors' code), before or after the mix (`order`). The train step calls
`build` once per step (one mask per image, shared by every student, so that LC compares
the students on the same input) or once per student (`classmix_mask='per_student'`, the
authors' code). Image i of the mixed batch takes mask-on pixels from image i and the rest
from image i+1 (rolled).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_LUMA = jnp.array([0.299, 0.587, 0.114], jnp.float32)


def _grayscale(images):
  return jnp.einsum('bhwc,c->bhw', images, _LUMA)[..., None]


def _rotate_hue(images, angle):
  """Rotates hue by `angle` [B] radians in YIQ space (a linear, vectorised hue shift)."""
  to_yiq = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                      [0.211, -0.523, 0.312]], jnp.float32)
  from_yiq = jnp.linalg.inv(to_yiq)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  zeros, ones = jnp.zeros_like(cos), jnp.ones_like(cos)
  rot = jnp.stack([jnp.stack([ones, zeros, zeros], -1),
                   jnp.stack([zeros, cos, -sin], -1),
                   jnp.stack([zeros, sin, cos], -1)], -2)  # [B, 3, 3]
  matrix = jnp.einsum('ij,bjk,kl->bil', from_yiq, rot, to_yiq)
  return jnp.einsum('bij,bhwj->bhwi', matrix, images)


COINS = ('image', 'batch')
ORDERS = ('jitter_then_mix', 'mix_then_jitter')


def _coin_shape(batch: int, coin: str) -> tuple[int, ...]:
  """Shape of a per-image draw: [B] for 'image', [1] (broadcast) for 'batch'."""
  if coin not in COINS:
    raise ValueError(f'Unknown strong_aug.coin {coin!r}; valid: {", ".join(COINS)}.')
  return (batch if coin == 'image' else 1,)


def color_jitter(rng, images, *, brightness, contrast, saturation, hue, prob,
                 coin: str = 'image'):
  """Random brightness, contrast, saturation and hue, each image with probability `prob`
  (`coin='image'`) or the whole batch on one coin ('batch'); the factors are per image.

  images: [B, H, W, 3] float in [0, 1].
  """
  b = images.shape[0]
  keys = jax.random.split(rng, 5)

  def factor(key, strength):
    return jax.random.uniform(key, (b, 1, 1, 1), minval=1 - strength, maxval=1 + strength)

  out = images * factor(keys[0], brightness)
  mean = jnp.mean(_grayscale(out), axis=(1, 2, 3), keepdims=True)
  out = (out - mean) * factor(keys[1], contrast) + mean
  gray = _grayscale(out)
  out = (out - gray) * factor(keys[2], saturation) + gray
  angle = jax.random.uniform(keys[3], (b,), minval=-hue, maxval=hue) * 2 * jnp.pi
  out = _rotate_hue(out, angle)
  apply = jax.random.bernoulli(keys[4], prob, _coin_shape(b, coin) + (1, 1, 1))
  return jnp.clip(jnp.where(apply, out, images), 0.0, 1.0)


def gaussian_blur(rng, images, *, prob, sigma_min, sigma_max, radius: int = 4,
                  coin: str = 'image'):
  """Separable Gaussian blur applied with probability `prob`, sigma and coin per image
  (`coin='image'`) or one of each for the batch ('batch', the authors' code). 9 taps hold
  more than 99.9% of the kernel's mass up to sigma 1.2."""
  b = images.shape[0]
  k_sigma, k_apply = jax.random.split(rng)
  sigma = jax.random.uniform(k_sigma, _coin_shape(b, coin), minval=sigma_min,
                             maxval=sigma_max)
  sigma = jnp.broadcast_to(sigma, (b,))
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
  kernel = kernel / kernel.sum(-1, keepdims=True)  # [B, T]

  def blur_one(image, k):  # image [H, W, 3], k [T]; edge padding keeps borders unbiased
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode='edge')
    h, w = image.shape[:2]
    rows = sum(k[t] * padded[t:t + h] for t in range(2 * radius + 1))
    return sum(k[t] * rows[:, t:t + w] for t in range(2 * radius + 1))

  blurred = jax.vmap(blur_one)(images, kernel)
  apply = jax.random.bernoulli(k_apply, prob, _coin_shape(b, coin) + (1, 1, 1))
  return jnp.where(apply, blurred, images)


CLASS_ROUNDINGS = ('half_up', 'half_down')


def classmix_masks(rng, class_map, num_classes: int, rounding: str = 'half_up'):
  """ClassMix masks: per image, a random half of the classes it contains, ceil(n/2)
  (`rounding='half_up'`) or floor(n/2) ('half_down', the authors' code).

  Args:
    class_map: [B, H, W] int class per pixel (argmax of the pseudo-labelling networks'
      softmax); values outside [0, C) never enter the mask.
  Returns:
    [B, H, W] bool, True where the pixel keeps image i (it is pasted onto image i+1).
  """
  b = class_map.shape[0]
  onehot = jax.nn.one_hot(class_map, num_classes, dtype=jnp.bool_)  # [B, H, W, C]
  present = jnp.any(onehot, axis=(1, 2))  # [B, C]
  # A random order of the present classes; the first ceil(n/2) are chosen.
  keys = jnp.where(present, jax.random.uniform(rng, (b, num_classes)), 2.0)
  rank = jnp.argsort(jnp.argsort(keys, axis=-1), axis=-1)
  if rounding not in CLASS_ROUNDINGS:
    raise ValueError(f'Unknown classmix_classes {rounding!r}; valid: '
                     f'{", ".join(CLASS_ROUNDINGS)}.')
  num_chosen = (present.sum(-1, keepdims=True) + (rounding == 'half_up')) // 2
  chosen = present & (rank < num_chosen)  # [B, C]
  return jnp.any(onehot & chosen[:, None, None, :], axis=-1)


def cutmix_masks(rng, batch: int, height: int, width: int, area: float):
  """CutMix masks: one random box per image covering `area` of it, True inside the box."""
  k_ratio, k_y, k_x = jax.random.split(rng, 3)
  # Aspect ratio log-uniform in [1/2, 2]; box sides from area and ratio, clipped to fit.
  ratio = jnp.exp(jax.random.uniform(k_ratio, (batch,), minval=-jnp.log(2.), maxval=jnp.log(2.)))
  box_h = jnp.clip(jnp.round(jnp.sqrt(area * height * width * ratio)), 1, height)
  box_w = jnp.clip(jnp.round(area * height * width / box_h), 1, width)
  y0 = jnp.floor(jax.random.uniform(k_y, (batch,)) * (height - box_h + 1))
  x0 = jnp.floor(jax.random.uniform(k_x, (batch,)) * (width - box_w + 1))
  ys = jnp.arange(height)[None, :, None]
  xs = jnp.arange(width)[None, None, :]
  inside_y = (ys >= y0[:, None, None]) & (ys < (y0 + box_h)[:, None, None])
  inside_x = (xs >= x0[:, None, None]) & (xs < (x0 + box_w)[:, None, None])
  return inside_y & inside_x


def mix(mask, values):
  """Image i of the result: `values[i]` where mask[i], else `values[i+1]` (rolled).

  mask: [B, H, W] bool; values: [B, H, W, ...].
  """
  rolled = jnp.roll(values, -1, axis=0)
  m = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
  return jnp.where(m, values, rolled)


def build(rng, images, class_probs, valid, *, kind: str, aug, num_classes: int,
          classes_rounding: str = 'half_up'):
  """The students' view of the unlabeled batch and the mask that mixed it.

  images: [B, H, W, 3] in [0, 1] (weak view); class_probs: [B, H, W, C], whose argmax
  chooses ClassMix's classes; valid: bool [B, H, W].
  kind: 'classmix', 'cutmix' or 'none'; aug: the `strong_aug` config (jitter, blur, their
  coin and order, CutMix area). Returns (mixed strong images, bool mask [B, H, W]); the
  same mask must mix the pseudo-labels that supervise this view.
  """
  k_jitter, k_blur, k_mix = jax.random.split(rng, 3)
  if aug.order not in ORDERS:
    raise ValueError(f'Unknown strong_aug.order {aug.order!r}; valid: {", ".join(ORDERS)}.')

  def jitter_and_blur(x):
    x = color_jitter(k_jitter, x, brightness=aug.brightness, contrast=aug.contrast,
                     saturation=aug.saturation, hue=aug.hue, prob=aug.color_jitter_prob,
                     coin=aug.coin)
    return gaussian_blur(k_blur, x, prob=aug.blur_prob, sigma_min=aug.blur_sigma_min,
                         sigma_max=aug.blur_sigma_max, coin=aug.coin)

  batch, height, width = valid.shape
  if kind == 'classmix':
    class_map = jnp.where(valid, class_probs.argmax(-1), -1)
    mask = classmix_masks(k_mix, class_map, num_classes, classes_rounding)
  elif kind == 'cutmix':
    mask = cutmix_masks(k_mix, batch, height, width, aug.cutmix_area)
  elif kind == 'none':
    mask = jnp.ones(valid.shape, bool)
  else:
    raise ValueError(f'Unknown unlabeled_aug {kind!r}; valid: classmix, cutmix, none.')
  if aug.order == 'jitter_then_mix':
    return mix(mask, jitter_and_blur(images)), mask
  return jitter_and_blur(mix(mask, images)), mask


def mix_stacked(mask, values):
  """`mix` applied to each network's map: values [n, B, H, W] -> [n, B, H, W]."""
  return jnp.moveaxis(mix(mask, jnp.moveaxis(values, 0, -1)), -1, 0)
