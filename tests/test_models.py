"""DeepLab models: output sizes, parameter counts, naming, bf16, frozen BN, layers.
(One train step per head: tests/test_deeplab_train_step.py.)

Shapes and counts come from `jax.eval_shape` (nothing compiled); the few forward passes
use ResNet-18 at width 1/16 on 33x33 images, with variables drawn in numpy (a jitted
`model.init` of ResNet-50 took 18 s to compile here, nearly all of it for its random
number generators).
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import base_config
from ctt_jax.models import get_model, layers, weights
from ctt_jax.models.resnet import ResNet
from tests.random_variables import random_variables


def model_config(name='deeplabv2', backbone='resnet18', layout='torchvision', os_=8,
                 m=0.0625, feature_dim=8, projection_dim=0, **kw):
  c = base_config().model
  c.name, c.backbone, c.layout, c.output_stride = name, backbone, layout, os_
  c.width_multiplier, c.feature_dim, c.projection_dim = m, feature_dim, projection_dim
  for k, v in kw.items():
    c[k] = v
  return c


# (model.name, other keys): every DeepLab head.
HEADS = [('deeplabv2', {}), ('deeplabv2', {'head': 'aspp_se'}), ('deeplabv3plus', {})]
HEAD_IDS = ['deeplabv2', 'deeplabv2-ctt', 'deeplabv3plus']


def shapes_of(model, size=(65, 65)):
  x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
  variables = jax.eval_shape(lambda r, x: model.init(r, x), jax.random.key(0), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  return variables, out


@pytest.mark.parametrize('name,output_stride,expected,extra', [
    ('deeplabv2', 8, 9, {}), ('deeplabv2', 16, 5, {}),  # 65 -> 33 -> 17 -> 9 (-> 5)
    ('deeplabv2', 8, 9, {'head': 'aspp_se'}), ('deeplabv2', 16, 5, {'head': 'aspp_se'}),
    ('deeplabv3plus', 8, 17, {}), ('deeplabv3plus', 16, 17, {}),  # at layer1: 1/4
])
def test_output_sizes(name, output_stride, expected, extra):
  model = get_model(model_config(name, os_=output_stride, projection_dim=4, **extra), 3)
  variables, out = shapes_of(model)
  assert out['logits'].shape == (2, expected, expected, 3)
  assert out['features'].shape == (2, expected, expected, 4)  # projection_dim
  assert out['logits'].dtype == out['features'].dtype == jnp.float32
  assert 'projection' in variables['params']


@pytest.mark.parametrize('output_stride,sizes', [(8, (17, 9, 9, 9)), (16, (17, 9, 5, 5)),
                                                  (32, (17, 9, 5, 3))])
def test_backbone_stage_sizes(output_stride, sizes):
  backbone = ResNet('resnet50', 'torchvision', output_stride, 0.125)
  _, stages = shapes_of(backbone)
  assert [stages[f'layer{i}'].shape[1] for i in range(1, 5)] == list(sizes)
  assert stages['layer4'].shape[-1] == 256  # 2048 * 0.125


def test_layout_stems():
  # caffe: ceil-mode max pool (64 -> 32 -> 17); others floor mode (-> 16).
  for layout, size in (('torchvision', 16), ('caffe', 17), ('v1c', 16), ('deepbase', 16)):
    variables, stages = shapes_of(ResNet('resnet50', layout, 8, 0.125), (64, 64))
    assert stages['layer1'].shape[1:3] == (size, size), layout
  params = variables['params']
  assert params['stem_conv3']['kernel'].shape == (3, 3, 8, 16)  # deepbase 64->128 at 1/8
  assert params['layer1_0']['conv1']['kernel'].shape == (1, 1, 16, 8)


@pytest.mark.parametrize('depth,published', [('resnet50', 25_557_032),
                                             ('resnet101', 44_549_160)])
def test_parameter_counts_match_torchvision(depth, published):
  variables, _ = shapes_of(ResNet(depth, 'torchvision', 32), (64, 64))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))
  assert count + 2048 * 1000 + 1000 == published  # + the ImageNet fc layer


@pytest.mark.parametrize('name,extra', HEADS, ids=HEAD_IDS)
def test_variable_names_follow_the_optimiser_convention(name, extra):
  variables, _ = shapes_of(get_model(model_config(name, projection_dim=4, **extra), 3))
  params = flax.traverse_util.flatten_dict(variables['params'])
  assert 'backbone' in variables['params'] and len(variables['params']) > 1
  for path, leaf in params.items():
    assert leaf.dtype == jnp.float32
    norm = 'bn' in path[-2] or path[-2] == 'gn'  # gn: GroupNorm, trained with frozen BN
    assert path[-1] in (('scale', 'bias') if norm else ('kernel', 'bias')), path
  for path in flax.traverse_util.flatten_dict(variables['batch_stats']):
    assert 'bn' in path[-2], path
  # Every variable has a PyTorch name, and they are distinct.
  names = [weights.torch_name(c, p, 'v1c') for c in ('params', 'batch_stats')
           for p in flax.traverse_util.flatten_dict(variables[c])]
  assert len(set(names)) == len(names)


@pytest.mark.parametrize('name,extra', HEADS, ids=HEAD_IDS)
def test_bfloat16_runs_close_to_float32(name, extra):
  images = np.random.default_rng(0).normal(size=(2, 33, 33, 3)).astype(np.float32)
  c32 = model_config(name, **extra)
  shapes, _ = shapes_of(get_model(c32, 3), (33, 33))
  variables = random_variables(shapes)
  outs = {}
  for dtype in ('float32', 'bfloat16'):
    model = get_model(model_config(name, dtype=dtype, **extra), 3)
    outs[dtype] = jax.jit(lambda v, x, m=model: m.apply(v, x))(variables, images)
  for key in ('logits', 'features'):
    got, want = outs['bfloat16'][key], outs['float32'][key]
    assert got.dtype == jnp.float32 and np.all(np.isfinite(got))
    assert np.max(np.abs(got - want)) < 0.1 * np.max(np.abs(want)), key


@pytest.mark.parametrize('freeze_bn', [True, False])
def test_freeze_bn(freeze_bn):
  """Frozen BN: train mode uses and keeps the running statistics; otherwise batch stats."""
  model = get_model(model_config('deeplabv3plus', freeze_bn=freeze_bn), 3)
  images = np.random.default_rng(0).normal(size=(2, 33, 33, 3)).astype(np.float32)
  shapes, _ = shapes_of(model, (33, 33))
  variables = random_variables(shapes)
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  out, updates = train(variables, images)
  evaluated = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  same_stats = jax.tree.map(np.array_equal, updates['batch_stats'], variables['batch_stats'])
  same_logits = np.allclose(out['logits'], evaluated['logits'], rtol=1e-5, atol=1e-5)
  if freeze_bn:
    assert all(jax.tree.leaves(same_stats)) and same_logits
  else:
    assert not any(jax.tree.leaves(same_stats)) and not same_logits


def test_unknown_settings_fail_with_the_valid_choices():
  for key, value, message in (('backbone', 'resnet152', 'resnet101'),
                              ('layout', 'timm', 'caffe'),
                              ('output_stride', 4, '8, 16 or 32'),
                              ('dtype', 'float16', 'bfloat16'),
                              ('head', 'aspp', 'bottleneck, aspp_se')):
    with pytest.raises(ValueError, match=message):
      get_model(model_config(**{key: value}), 3)


def test_resize_and_max_pool_match_torch():
  torch = pytest.importorskip('torch')
  F = torch.nn.functional
  rng = np.random.default_rng(0)
  for (h, w), size in (((5, 7), (17, 13)), ((9, 9), (33, 33)), ((8, 6), (3, 4))):
    x = rng.normal(size=(1, h, w, 2)).astype(np.float32)
    for align_corners in (True, False):
      want = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size,
                           mode='bilinear', align_corners=align_corners)
      got = layers.resize_bilinear(jnp.asarray(x), size, align_corners)
      np.testing.assert_allclose(got, want.numpy().transpose(0, 2, 3, 1), atol=1e-5)
  for n in (6, 7, 32, 33):
    x = rng.normal(size=(1, n, n + 3, 2)).astype(np.float32)
    for ceil_mode in (True, False):
      want = F.max_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), 3, 2, 1,
                          ceil_mode=ceil_mode)
      got = layers.max_pool_3x3_s2(jnp.asarray(x), ceil_mode)
      np.testing.assert_array_equal(got, want.numpy().transpose(0, 2, 3, 1))



def test_remat_key_reaches_the_backbone():
  """model.remat is passed to the ResNet (tests/test_resnet_remat.py: same values)."""
  assert get_model(model_config(remat='blocks'), 3).remat == 'blocks'
  with pytest.raises(ValueError, match='model.remat'):
    get_model(model_config(remat='layers'), 3)
