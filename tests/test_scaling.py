"""The opt-in recipe scaling: nothing changes unless asked, and what changes is logged."""
import math

from absl import logging
import pytest

from configs import cityscapes
from ctt_jax import scaling


def test_the_recipe_is_never_scaled_silently():
  config = cityscapes.get_config('1_30,batch_size=16')
  assert config.scaling.base_batch_size == 2  # the dataset's batch, kept beside the override
  assert scaling.apply(config) is config  # scaling.rule='none': the config as written
  same = cityscapes.get_config('1_30,scaling.rule=linear')
  assert scaling.apply(same) is same  # the recipe's own batch: nothing to scale


@pytest.mark.parametrize('rule, lr_factor', [('linear', 8.0), ('sqrt', math.sqrt(8.0))])
def test_batch_16_scales_lr_steps_and_ema_per_image(rule, lr_factor, monkeypatch):
  logged = []
  monkeypatch.setattr(logging, 'warning', lambda fmt, *a: logged.append(fmt % a))
  config = cityscapes.get_config(f'1_30,batch_size=16,scaling.rule={rule}')
  scaled = scaling.apply(config)
  assert scaled.lr == pytest.approx(2.5e-4 * lr_factor)
  assert scaled.total_steps == 10_000  # 80k steps x 2 images = 10k x 16: as many images
  assert scaled.eval_every == 500 and scaled.checkpoint_every == 250
  # Eight steps of decay 0.99 per 2 images = one step per 16: the teachers move as far.
  assert scaled.ema_decay == pytest.approx(0.99 ** 8)
  assert config.lr == 2.5e-4 and config.total_steps == 80_000  # the input is left as is
  assert len(logged) == 1
  assert logged[0].startswith(f'scaling.rule={rule} for batch_size=16 (the recipe was tuned '
                              'for 2): lr 0.00025 -> ')
  assert 'total_steps 80000 -> 10000' in logged[0] and 'ema_decay 0.99 -> 0.922' in logged[0]
