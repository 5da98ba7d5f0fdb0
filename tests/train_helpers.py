"""Tiny configs, models and batches shared by the train-step tests."""
import numpy as np

from configs import common
from ctt_jax import models

IMAGE = (16, 16)
CLASSES = 3


TINY = {'model.name': 'tiny', 'model.feature_dim': 8, 'model.freeze_bn': False,
        'model.width': 4, 'num_classes': CLASSES, 'bank_size': 4, 'total_steps': 1000,
        'lr': 0.05, 'head_lr_mult': 1.0, 'contrastive_start_step': 0, 'batch_size': 2}


def tiny_config(overrides=None, **keys):
  """base_config() with the tiny settings, then `overrides` (dotted keys) and `keys`
  (top-level keys), through the configs' one override mechanism (unknown keys fail)."""
  return common.update(common.base_config(), {**TINY, **(overrides or {}), **keys})


def tiny_model(config):
  return models.get_model(config.model, config.num_classes)


def make_batch(seed=0, batch=2, image=IMAGE):
  """A learnable batch: the label is a function of the image (bright quadrants)."""
  rng = np.random.default_rng(seed)
  def images_and_labels():
    # 4x4 blocks, so the label is learnable at the tiny model's output stride 4.
    small = rng.integers(0, 256, size=(batch, image[0] // 4, image[1] // 4, 3))
    img = small.repeat(4, axis=1).repeat(4, axis=2).astype(np.uint8)
    label = (img[..., 0] // 86).astype(np.int32)  # 3 classes by red intensity
    label[:, :2, :2] = 255
    return img, label
  img_l, lab_l = images_and_labels()
  img_u, _ = images_and_labels()
  valid = np.ones((batch, *image), bool)
  valid[:, -3:, :] = False  # padding rows
  return {'labeled': {'image': img_l, 'label': lab_l},
          'unlabeled': {'image': img_u, 'valid': valid}}


def counting(fn):
  """`fn` wrapped to count its Python calls: under jax.jit, how often it was traced."""
  def wrapper(*args, **kwargs):
    wrapper.calls += 1
    return fn(*args, **kwargs)
  wrapper.calls = 0
  return wrapper
