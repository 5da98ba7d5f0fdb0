"""One jitted CTT train step (forward and backward) on each DeepLab head, with pretrained
backbone weights merged in by `init_train_state`'s hook. ResNet-18 at width 1/16 on 32x32
crops; most of the time is XLA compiling the step (~10-25 s per head on 2 shared cores).
"""
import jax
import numpy as np
import pytest

from ctt_jax import train_state, train_step
from ctt_jax.models import get_model, weights
from tests.random_variables import random_variables
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
  hook = lambda v, k: weights.merge_pretrained(v, pretrained, skip_head=True)
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


def _write_npz(path, variables, layout, flipped=False):
  flat = weights.flatten_variables(variables)
  flat.update({'meta/backbone': np.array('resnet18'), 'meta/layout': np.array(layout),
               'meta/input_channels_flipped': np.array(str(flipped).lower())})
  np.savez(path, **flat)
  return str(path)


def test_one_checkpoint_per_pair(tmp_path):
  """model.pretrained=(a,b): student 0 from a, student 1 from b (the authors' COCO +
  ImageNet peers); one path: the same backbone for both."""
  from ctt_jax import train  # pylint: disable=g-import-not-at-top
  image = (32, 32)
  config = tiny_config(**{'model.name': 'deeplabv2', 'model.backbone': 'resnet18',
                          'model.layout': 'caffe', 'model.width_multiplier': 0.0625,
                          'model.feature_dim': 8})
  model = get_model(config.model, config.num_classes)
  shapes, _ = shapes_of(model, image)
  files = [_write_npz(tmp_path / f'{k}.npz', random_variables(shapes, seed=k + 1), 'caffe')
           for k in range(2)]
  kernel = lambda path: np.load(path)['params/backbone/conv1/kernel']

  config.model.pretrained = f'({files[0]},{files[1]})'
  state = train_state.init_train_state(config, model, jax.random.key(0), image,
                                       variables_hook=train.variables_hook(config))
  got = np.asarray(state.params['backbone']['conv1']['kernel'])
  np.testing.assert_array_equal(got[0], kernel(files[0]))
  np.testing.assert_array_equal(got[1], kernel(files[1]))

  config.model.pretrained = files[1]
  state = train_state.init_train_state(config, model, jax.random.key(0), image,
                                       variables_hook=train.variables_hook(config))
  got = np.asarray(state.params['backbone']['conv1']['kernel'])
  np.testing.assert_array_equal(got[0], kernel(files[1]))
  np.testing.assert_array_equal(got[1], kernel(files[1]))

  # A file flipped for RGB input cannot be what a BGR-fed network starts from.
  config.model.pretrained = _write_npz(tmp_path / 'rgb.npz', random_variables(shapes), 'caffe',
                                       flipped=True)
  config.image_channel_order = 'bgr'
  with pytest.raises(ValueError, match=r'rgb.npz was converted with --bgr-to-rgb but '
                     r'image_channel_order is bgr; convert the original checkpoint again '
                     r'without --bgr-to-rgb.'):
    train.variables_hook(config)
