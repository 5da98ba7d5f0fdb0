"""The CTT authors' DeepLabV2 head (`model.head='aspp_se'`, models/ctt_head.py).

Parity with a torch.nn copy of their `Classifier_Module2` (tests/torch_reference_nets.py)
on the same caffe-layout backbone, the Flax variables converted from the PyTorch state
dict by their names (`layer5.*`): eval mode, train mode with dropout off in both, and
train mode with the same channel-dropout mask in both. A caffe-layout ResNet-18 at width
1/4 (layer4: 128 channels; head branches 64 with 8 GroupNorm groups, SE 320 -> 20, features
32 with 4 groups) on 57x70 images.

Tolerance: max |Flax - PyTorch| <= 1e-4 x max |PyTorch| for the logits and 1e-5 absolute
for the (unit-norm) features. Both compute in float32 and differ only in summation order
(convolution algorithms, GroupNorm/BN reductions). Measured here: eval 1.7e-6 (logits,
relative) / 1.1e-6 (features); train 3.6e-6 / 2.5e-6. (A ResNet-50 backbone in train
mode, batch-norm on batch statistics through 16 blocks, gives 5e-5 / 4e-5.)
"""
from __future__ import annotations

import copy

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import base_config
from ctt_jax import optim
from ctt_jax.models import convert, get_model, weights
from ctt_jax.models.ctt_head import CTTHead, group_norm_groups
from tests.random_variables import random_variables
from tests.test_models import model_config, shapes_of

torch = pytest.importorskip('torch')
from tests import torch_reference_nets as ref  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_CLASSES = 5
SIZE = (57, 70)  # -> 8 x 9 at output stride 8 (caffe: ceil-mode pooling)


def ctt_config(m=0.25, feature_dim=32, **kw):
  return model_config('deeplabv2', 'resnet18', 'caffe', m=m, feature_dim=feature_dim,
                      head='aspp_se', freeze_bn=False, **kw)


def torch_ctt_net(c, seed=0):
  branch = ref.width(256, c.width_multiplier)
  net = ref.CTTDeepLabV2(NUM_CLASSES, c.backbone, c.width_multiplier, c.feature_dim,
                         group_norm_groups(branch), group_norm_groups(c.feature_dim))
  return ref.randomize_(net, seed)


def max_error(got, want):
  return float(np.max(np.abs(np.asarray(got) - want)))


class FixedChannelMask(torch.nn.Module):
  """Dropout2d with a given mask [B, C] (kept channels scaled by 1 / (1 - p))."""

  def __init__(self, keep, rate):
    super().__init__()
    self.scale = torch.from_numpy(keep.astype(np.float32) / (1.0 - rate))[:, :, None, None]

  def forward(self, x):
    return x * self.scale


@pytest.fixture(scope='module')
def pair():
  """(config, Flax model, converted variables, torch net, images NHWC, images NCHW)."""
  c = ctt_config()
  net = torch_ctt_net(c)
  variables = weights.from_torch_state_dict(ref.state_dict_numpy(net, 'module.'), c,
                                            skip_head=False)
  images = np.random.default_rng(1).normal(size=(2, *SIZE, 3)).astype(np.float32)
  return (c, get_model(c, NUM_CLASSES), variables, net, images,
          torch.from_numpy(images.transpose(0, 3, 1, 2)))


def torch_outputs(net, x):
  with torch.no_grad():
    out = net(x)
  return (out['out'].numpy().transpose(0, 2, 3, 1),
          out['feat'].numpy().transpose(0, 2, 3, 1))


def assert_parity(flax_out, torch_out):
  logits, feats = torch_out
  assert flax_out['logits'].shape == logits.shape == (2, 8, 9, NUM_CLASSES)
  assert flax_out['features'].shape == feats.shape == (2, 8, 9, 32)
  assert max_error(flax_out['logits'], logits) <= 1e-4 * np.max(np.abs(logits))
  assert max_error(flax_out['features'], feats) <= 1e-5


def test_parity_eval_mode(pair):
  """Eval mode: running statistics, no dropout (a 'dropout' rng is ignored)."""
  _, model, variables, net, images, x = pair
  apply = jax.jit(lambda v, x, key: model.apply(v, x, train=False, rngs={'dropout': key}))
  out = apply(variables, images, jax.random.key(0))
  assert_parity(out, torch_outputs(net.eval(), x))
  np.testing.assert_allclose(np.linalg.norm(out['features'], axis=-1), 1.0, rtol=1e-5)


def test_parity_train_mode_without_dropout(pair):
  """No 'dropout' rng: the Flax head is deterministic; PyTorch with p = 0. Batch-norm
  (freeze_bn=False) and GroupNorm use batch statistics in both."""
  _, model, variables, net, images, x = pair
  out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, images)
  net = copy.deepcopy(net).train()  # train mode updates BN running statistics
  net.layer5.head[0].p = 0.0
  assert_parity(out, torch_outputs(net, x))


def test_parity_train_mode_same_dropout_mask(pair):
  """With a 'dropout' rng whole channels are dropped per image (Dropout2d) and the rest
  scaled by 1/0.9; PyTorch gets the same mask, read off the zero channels of the Flax
  features (features are taken after the dropout, as in the authors' code)."""
  _, model, variables, net, images, x = pair
  apply = jax.jit(lambda v, x, key: model.apply(
      v, x, train=True, mutable=['batch_stats'], rngs={'dropout': key}))
  out, _ = apply(variables, images, jax.random.key(3))
  feats = np.asarray(out['features'])
  dropped = np.all(feats == 0, axis=(1, 2))  # [B, C]
  assert np.all(dropped | np.all(feats != 0, axis=(1, 2)))  # a channel: all or nothing
  assert 0 < dropped.mean() < 0.3, dropped.mean()
  assert not np.array_equal(dropped[0], dropped[1])  # one draw per image
  net = copy.deepcopy(net).train()
  net.layer5.head[0] = FixedChannelMask(~dropped, 0.1)
  assert_parity(out, torch_outputs(net, x))
  other, _ = apply(variables, images, jax.random.key(4))
  assert not np.allclose(other['logits'], out['logits'])


def test_authors_checkpoint_converts(tmp_path):
  """A checkpoint saved like the authors' `_save_checkpoint` (student under 'model',
  teacher under 'ema_model', optimizer, config) converts with --deeplabv2-head aspp_se into
  exactly the variables `from_torch_state_dict` gives, names mapped one by one."""
  c = ctt_config(m=0.0625, feature_dim=16)
  student = ref.state_dict_numpy(torch_ctt_net(c, seed=0))
  teacher = ref.state_dict_numpy(torch_ctt_net(c, seed=1))
  path = tmp_path / 'checkpoint-iter100.pth'
  torch.save({'iteration': 100, 'optimizer': {'state': {}, 'param_groups': []},
              'config': {'model': 'DeepLab', 'training': {'batch_size': 2}},
              'model': {k: torch.from_numpy(v) for k, v in student.items()},
              'ema_model': {k: torch.from_numpy(v) for k, v in teacher.items()}}, path)
  out = tmp_path / 'ctt.npz'
  convert.main(['--input', str(path), '--output', str(out), '--backbone', 'resnet18',
                '--layout', 'caffe', '--width-multiplier', '0.0625', '--feature-dim', '16',
                '--head', 'deeplabv2', '--deeplabv2-head', 'aspp_se'])
  loaded = weights.flatten_variables(weights.load_pretrained(str(out), c))
  p = {k.removeprefix('params/'): v for k, v in loaded.items() if k.startswith('params/')}
  theirs = {k.removeprefix('layer5.'): v for k, v in student.items()}
  for ours, want in (
      ('se/fc1/kernel', theirs['bottleneck.0.se.0.weight'].T),
      ('se/fc2/bias', theirs['bottleneck.0.se.2.bias']),
      ('branch3/conv/kernel', theirs['conv2d_list.3.0.weight'].transpose(2, 3, 1, 0)),
      ('branch0/gn/scale', theirs['conv2d_list.0.1.weight']),
      ('fuse/gn/bias', theirs['bottleneck.2.bias']),
      ('classifier/kernel', theirs['head.1.weight'].transpose(2, 3, 1, 0))):
    np.testing.assert_array_equal(p['head/' + ours], want)
  expected = weights.flatten_variables(
      weights.from_torch_state_dict(student, c, skip_head=False))
  assert {k for k in loaded if not k.startswith('meta/')} == set(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(loaded[k], v)
  # The bottleneck head's names are not the authors': a clear error names theirs.
  with pytest.raises(ValueError, match='layer5.bottleneck.0.se.0.weight'):
    weights.from_torch_state_dict(student, model_config('deeplabv2', 'resnet18', 'caffe',
                                                        m=0.0625, feature_dim=16),
                                  num_classes=NUM_CLASSES, skip_head=False)


def test_full_size_names_and_shapes_match_the_authors_network():
  """ResNet-101 at full width, shapes only (torch 'meta' tensors, jax.eval_shape): every
  name of the authors' state dict is one of ours, with the same shape."""
  with torch.device('meta'):
    net = ref.CTTDeepLabV2(19)
  theirs = {k: tuple(v.shape) for k, v in net.state_dict().items()
            if not k.endswith('num_batches_tracked')}
  c = model_config('deeplabv2', 'resnet101', 'caffe', m=1.0, feature_dim=256, head='aspp_se')
  shapes = weights.variable_shapes(c, 19)
  ours = {}
  for collection in ('params', 'batch_stats'):
    for path, leaf in flax.traverse_util.flatten_dict(shapes[collection]).items():
      shape = leaf.shape
      if path[-1] == 'kernel':
        shape = (tuple(shape[i] for i in (3, 2, 0, 1)) if len(shape) == 4 else shape[::-1])
      ours[weights.torch_name(collection, path, 'caffe')] = tuple(shape)
  assert ours == theirs
  assert theirs['layer5.bottleneck.0.se.0.weight'] == (80, 1280)
  assert theirs['layer5.head.1.weight'] == (19, 256, 1, 1)


@pytest.mark.parametrize('name,extra', [('deeplabv2', {'head': 'aspp_se'}),
                                        ('deeplabv3plus', {}), ('tiny', {})])
def test_features_take_negative_values(name, extra):
  """Signed features: no activation after the last normalisation.
  DeepLabs with random variables, `tiny` with its real init."""
  images = np.random.default_rng(0).normal(size=(2, 33, 33, 3)).astype(np.float32)
  if name == 'tiny':
    c = base_config().model
    c.name, c.feature_dim = 'tiny', 8
    model = get_model(c, 3)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(images)
  else:
    model = get_model(model_config(name, **extra), 3)
    variables = random_variables(shapes_of(model, (33, 33))[0])
  feats = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, images)['features'])
  assert (feats < 0).mean() > 0.2 and (feats > 0).mean() > 0.2


def test_group_norm_groups_keep_the_authors_group_size():
  assert group_norm_groups(256) == 32  # the authors' GroupNorm(32, 256)
  assert group_norm_groups(320) == 32  # wider: 32 groups
  for channels, groups in ((64, 8), (16, 2), (48, 6), (100, 10), (8, 1), (3, 1)):
    assert group_norm_groups(channels) == groups, channels
  for channels in range(1, 600):
    g = group_norm_groups(channels)
    assert channels % g == 0 and 1 <= g <= 32 and (g == 1 or channels // g >= 8)


def test_init_and_optimizer_groups():
  """The authors' init (classifier N(0, 0.001), Kaiming fan-in convs, zero biases, GroupNorm
  1/0); the head's GroupNorm is trained even when batch-norm is frozen."""
  head = CTTHead(3, width=128, feature_dim=64)
  layer4 = jnp.zeros((1, 5, 5, 256))
  params = jax.jit(lambda x: head.init(jax.random.key(0), x))(layer4)['params']
  classifier = np.asarray(params['classifier']['kernel'])
  assert 'bias' not in params['classifier'] and classifier.shape == (1, 1, 64, 3)
  assert 0.0007 < classifier.std() < 0.0013
  kernel = np.asarray(params['branch1']['conv']['kernel'])
  assert kernel.shape == (3, 3, 256, 128)
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (9 * 256)), rtol=0.05)
  assert not np.any(params['branch1']['conv']['bias'])
  fuse_gn = params['fuse']['gn']
  assert np.all(fuse_gn['scale'] == 1) and not np.any(fuse_gn['bias'])
  assert params['se']['fc1']['kernel'].shape == (640, 40)  # 5 x 128 -> 640 / 16
  np.testing.assert_allclose(np.asarray(params['se']['fc2']['kernel']).std(),
                             np.sqrt(2 / 640), rtol=0.05)  # Kaiming on fan-out
  groups = optim.param_groups({'head': params}, freeze_bn=True)['head']
  assert set(jax.tree.leaves(groups)) == {'head'}


def test_conv_impl_reaches_the_head_and_im2col_matches_xla():
  """`model.conv_impl` is passed to the head; with 'im2col' the head's loss and gradients
  (dropout mask included) equal 'xla''s. The head alone on random layer4 features."""
  seen = []

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, CTTHead):
      seen.append(context.module.conv_impl)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    shapes_of(get_model(model_config(head='aspp_se', conv_impl='im2col'), 3), (33, 33))
  assert seen and set(seen) == {'im2col'}

  rng = np.random.default_rng(0)
  layer4 = jnp.asarray(rng.normal(size=(2, 7, 6, 32)), jnp.float32)
  heads = {impl: CTTHead(3, width=16, feature_dim=16, conv_impl=impl)
           for impl in ('xla', 'im2col')}
  params = random_variables(jax.eval_shape(heads['xla'].init, jax.random.key(0),
                                           layer4)['params'])
  labels = jnp.asarray(rng.integers(0, 3, (2, 7, 6)), jnp.int32)

  def loss(params, head):
    logits, feats = head.apply({'params': params}, layer4, train=True,
                               rngs={'dropout': jax.random.key(1)})
    logp = jax.nn.log_softmax(logits)
    ce = -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))
    return ce + jnp.mean(feats ** 3)

  results = {impl: jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, head)
             for impl, head in heads.items()}
  (loss_xla, grads_xla), (loss_ours, grads_ours) = results['xla'], results['im2col']
  np.testing.assert_allclose(loss_ours, loss_xla, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=0, atol=1e-4 * max(1.0, float(np.abs(b).max()))), grads_ours, grads_xla)
