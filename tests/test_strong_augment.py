"""On-device strong view: ClassMix/CutMix masks, mixing, colour jitter and blur."""
import jax
import jax.numpy as jnp
import numpy as np

from ctt_jax import strong_augment


def test_classmix_takes_half_of_the_present_classes_rounded_up():
  rng = np.random.default_rng(0)
  class_map = rng.choice([0, 2, 3, 5, 6], size=(8, 12, 12)).astype(np.int32)
  class_map[1] = 4  # one class only
  class_map[2, :, :6] = -1  # padding never enters the mask
  masks = np.asarray(strong_augment.classmix_masks(jax.random.key(1), class_map, 7))
  for i in range(8):
    present = set(np.unique(class_map[i])) - {-1}
    chosen = set(np.unique(class_map[i][masks[i]]))
    assert len(chosen) == (len(present) + 1) // 2
    # The mask is exactly the pixels of the chosen classes.
    np.testing.assert_array_equal(masks[i], np.isin(class_map[i], list(chosen)))
  assert not masks[2][:, :6].any()


def test_mix_pastes_image_i_onto_image_i_plus_1():
  values = jnp.arange(3 * 2 * 2).reshape(3, 2, 2).astype(jnp.float32)
  mask = jnp.array([[[1, 0], [0, 0]], [[0, 0], [0, 1]], [[0, 0], [0, 0]]], bool)
  mixed = np.asarray(strong_augment.mix(mask, values))
  np.testing.assert_array_equal(mixed[0], [[0, 5], [6, 7]])
  np.testing.assert_array_equal(mixed[1], [[8, 9], [10, 7]])
  np.testing.assert_array_equal(mixed[2], values[0])


def test_cutmix_box_has_the_requested_area():
  masks = np.asarray(strong_augment.cutmix_masks(jax.random.key(0), 16, 40, 60, 0.5))
  area = masks.mean(axis=(1, 2))
  assert np.all(np.abs(area - 0.5) < 0.06)


def test_jitter_and_blur_stay_in_range_and_change_images():
  images = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
  out = strong_augment.color_jitter(jax.random.key(1), images, brightness=0.4, contrast=0.4,
                                    saturation=0.4, hue=0.1, prob=1.0)
  assert float(out.min()) >= 0 and float(out.max()) <= 1
  assert float(jnp.abs(out - images).mean()) > 0.01
  same = strong_augment.color_jitter(jax.random.key(1), images, brightness=0.4, contrast=0.4,
                                     saturation=0.4, hue=0.1, prob=0.0)
  np.testing.assert_allclose(same, images, atol=1e-6)
  blurred = strong_augment.gaussian_blur(jax.random.key(2), images, prob=1.0, sigma_min=1.0,
                                         sigma_max=2.0)
  assert float(blurred.std()) < float(images.std())  # smoothing lowers the variance
  np.testing.assert_allclose(blurred.mean(), images.mean(), atol=0.02)
