"""One jitted CTT train step (forward and backward) on each DeepLab head, with pretrained
backbone weights merged in by `init_train_state`'s hook. ResNet-18 at width 1/16 on 32x32
crops; most of the time is XLA compiling the step (~10-25 s per head on 2 shared cores).
"""
import jax
import numpy as np
import pytest

from ctt_jax import train_state, train_step
from ctt_jax.models import get_model, weights
from ctt_jax.models.testing import random_variables
from tests.test_models import shapes_of
from tests.train_helpers import make_batch, tiny_config


@pytest.mark.parametrize('name', ['deeplabv2', 'deeplabv3plus'])
def test_one_ctt_train_step(name):
  """init_train_state with pretrained backbone weights, one jitted CTT step, both heads."""
  image = (32, 32)
  config = tiny_config(**{'model.name': name, 'model.backbone': 'resnet18',
                          'model.layout': 'torchvision', 'model.width_multiplier': 0.0625,
                          'model.feature_dim': 8, 'model.freeze_bn': False})
  model = get_model(config.model, config.num_classes)
  shapes, _ = shapes_of(model, image)
  pretrained = random_variables(shapes, seed=1)
  hook = lambda v: weights.merge_pretrained(v, pretrained, skip_head=True)
  state = train_state.init_train_state(config, model, jax.random.key(0), image,
                                       variables_hook=hook)
  backbone = state.params['backbone']['layer1_0']['conv1']['kernel']
  for k in range(config.num_pairs):  # same backbone, different heads
    np.testing.assert_array_equal(backbone[k],
                                  pretrained['params']['backbone']['layer1_0']['conv1'][
                                      'kernel'])
  head = jax.tree.leaves(state.params['classifier'])
  assert any(not np.array_equal(leaf[0], leaf[1]) for leaf in head)

  step = jax.jit(train_step.make_train_step(config, model, num_labeled=8))
  new_state, metrics = step(state, make_batch(image=image), jax.random.key(1))
  metrics = jax.device_get(metrics)
  assert metrics['loss_finite'] == 1.0
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(metrics)), metrics
  assert not np.array_equal(new_state.params['backbone']['conv1']['kernel'],
                            state.params['backbone']['conv1']['kernel'])
