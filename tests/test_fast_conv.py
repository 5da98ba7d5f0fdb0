"""models/fast_conv.py: the matmul-backward convolutions equal XLA's.

Forward values and both gradients against `lax.conv_general_dilated` + `jax.grad`, for
strides 1/2, dilations 1/2/6, odd and even sizes and a 7x7 stem-like kernel (the
concatenated-taps path); `dense` against the einsum; `PatchConv` against `nn.Conv` with
the same parameters; a tiny DeepLab (both heads) with `model.conv_impl='im2col'` against
'xla': same loss, same gradients.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctt_jax import losses
from ctt_jax.models import fast_conv, get_model, layers
from tests.random_variables import random_variables
from tests.test_models import model_config, shapes_of


def lax_conv(x, kernel, stride, dilation, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def assert_close(got, want, rtol=2e-5):
  """Equal up to float32 summation order, relative to the array's scale."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(1.0, np.abs(want).max()))


CASES = [  # (height, width, ksize, stride, dilation)
    (9, 9, 3, 1, 1), (10, 7, 3, 1, 1), (8, 8, 3, 2, 1), (9, 12, 3, 2, 1),
    (11, 12, 3, 1, 2), (10, 9, 3, 2, 2), (13, 9, 3, 1, 6), (7, 8, 3, 1, 6),
    (16, 15, 7, 2, 1),
]


@pytest.fixture(params=['split', 'unsplit'])
def split_padding(request, monkeypatch):
  """Each case as `conv2d` runs it (split by kernel row where `padding_share` reaches the
  line) and with the split off (a share above 1 is never reached)."""
  if request.param == 'unsplit':
    monkeypatch.setattr(fast_conv, 'SPLIT_PADDING_SHARE', 1.1)
  return request.param


@pytest.mark.parametrize('height,width,ksize,stride,dilation', CASES)
def test_values_and_gradients_equal_lax_conv(height, width, ksize, stride, dilation,
                                             split_padding):
  rng = np.random.default_rng(height * 100 + width)
  padding = dilation * (ksize - 1) // 2  # PyTorch-style symmetric padding
  x = jnp.asarray(rng.normal(size=(2, height, width, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(ksize, ksize, 5, 6)), jnp.float32)
  want = lax_conv(x, kernel, stride, dilation, padding)
  got = fast_conv.conv2d(x, kernel, stride, dilation, padding)
  assert_close(got, want)
  cotangent = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  loss = lambda conv: lambda x, k: jnp.vdot(conv(x, k, stride, dilation, padding),
                                             cotangent)
  got_dx, got_dk = jax.jit(jax.grad(loss(fast_conv.conv2d), (0, 1)))(x, kernel)
  want_dx, want_dk = jax.grad(loss(lax_conv), (0, 1))(x, kernel)
  assert_close(got_dx, want_dx)
  assert_close(got_dk, want_dk)


def _forward_and_gradients_match(x, kernel, stride, dilation, padding):
  want = lax_conv(x, kernel, stride, dilation, padding)
  assert_close(fast_conv.conv2d(x, kernel, stride, dilation, padding), want)
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=want.shape), jnp.float32)
  loss = lambda conv: lambda x, k: jnp.vdot(conv(x, k, stride, dilation, padding),
                                             cotangent)
  got = jax.jit(jax.grad(loss(fast_conv.conv2d), (0, 1)))(x, kernel)
  for g, w in zip(got, jax.grad(loss(lax_conv), (0, 1))(x, kernel)):
    assert_close(g, w)


@pytest.mark.parametrize('height,width,dilation,real', [
    (5, 9, 6, ((1, 1), (0, 2))),  # rows: only the centre tap; 1 x 3 kernel
    (5, 5, 6, ((1, 1), (1, 1))),  # only the centre tap: a 1x1 convolution (`dense`)
    (9, 17, 12, ((1, 1), (0, 2))),  # the ASPP branches at 64x128
    (9, 17, 24, ((1, 1), (1, 1))),
    (4, 30, 6, ((1, 1), (0, 2))),
    (17, 33, 18, ((1, 1), (0, 2)))])
def test_taps_that_read_only_padding_are_dropped(height, width, dilation, real,
                                                split_padding):
  assert (fast_conv.real_taps(height, height, 3, 1, dilation, dilation),
          fast_conv.real_taps(width, width, 3, 1, dilation, dilation)) == real
  rng = np.random.default_rng(height * 7 + width)
  x = jnp.asarray(rng.normal(size=(2, height, width, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 5, 6)), jnp.float32)
  _forward_and_gradients_match(x, kernel, 1, dilation, dilation)


@pytest.mark.parametrize('height,width,dilation,channels', [(3, 5, 1, 64), (4, 4, 2, 48),
                                                            (9, 17, 4, 256)])
def test_input_gradient_with_flipped_activations(height, width, dilation, channels,
                                                 monkeypatch):
  monkeypatch.setattr(fast_conv, 'SPLIT_PADDING_SHARE', 1.1)  # this path, not the split
  # Weights larger than the activations: `input_grad` flips dy instead of the kernel.
  assert 2 * height * width * (2 * channels + 8) < 9 * channels * (channels + 8)
  rng = np.random.default_rng(height * 11 + width)
  x = jnp.asarray(rng.normal(size=(2, height, width, channels)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, channels, channels + 8)), jnp.float32)
  _forward_and_gradients_match(x, kernel, 1, dilation, dilation)


@pytest.mark.parametrize('height,width,dilation', [(9, 9, 1), (10, 7, 2), (9, 17, 6),
                                                   (9, 17, 12)])
def test_kernel_gradient_from_shifted_cotangents(height, width, dilation, monkeypatch):
  monkeypatch.setattr(fast_conv, 'SPLIT_PADDING_SHARE', 1.1)  # this path, not the split
  # Fewer output than input channels at stride 1: `kernel_grad` shifts dy, not x (the
  # last case also crops the kernel to its real taps, so the padding is per side).
  rng = np.random.default_rng(height * 13 + width)
  x = jnp.asarray(rng.normal(size=(2, height, width, 40)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 40, 16)), jnp.float32)
  _forward_and_gradients_match(x, kernel, 1, dilation, dilation)


@pytest.mark.parametrize('n_in,n_out,k,dilation,before', [
    (33, 33, 3, 24, 24), (33, 33, 3, 6, 6), (9, 9, 3, 6, 6), (10, 10, 3, 1, 1),
    (17, 15, 3, 12, 11), (8, 12, 3, 2, 3)])
def test_padding_share_counts_products_with_padding(n_in, n_out, k, dilation, before):
  padded = sum(not 0 <= r + i * dilation - before < n_in
               for r in range(n_out) for i in range(k))
  assert fast_conv.padding_share(n_in, n_out, k, dilation, before) == pytest.approx(
      padded / (k * n_out))


@pytest.mark.parametrize('height,width,dilation,cin,cout,parts', [
    (11, 40, 4, 24, 8, [(1, 3)] * 3),   # rows (share 0.24; columns 0.07)
    (21, 9, 3, 8, 12, [(3, 1)] * 3),    # columns (0.22; rows 0.10)
    (11, 15, 4, 24, 8, [(1, 3)] * 3),   # rows (0.24; columns 0.18: parts not split again)
    (9, 17, 6, 16, 16, [(1, 3)] * 3),   # the 64x128 ASPP branch of dilation 6
    (5, 9, 6, 8, 8, [(1, 1)] * 3)])  # cropped to the centre row, then by column
def test_convolution_split_by_kernel_row_and_column(height, width, dilation, cin, cout,
                                                    parts, monkeypatch):
  """Where taps read much zero padding the convolution is a sum of parts over the pixels
  each reads (kernel shapes of the parts recorded), equal to XLA's."""
  seen = []
  matmul_grads, dense = fast_conv._conv_matmul_grads, fast_conv.dense
  monkeypatch.setattr(fast_conv, '_conv_matmul_grads',
                      lambda x, k, *a: seen.append(k.shape[:2]) or matmul_grads(x, k, *a))
  monkeypatch.setattr(fast_conv, 'dense',
                      lambda x, k: seen.append((1, 1)) or dense(x, k))
  rng = np.random.default_rng(height * 17 + width)
  x = jnp.asarray(rng.normal(size=(2, height, width, cin)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
  _forward_and_gradients_match(x, kernel, 1, dilation, dilation)
  assert seen[:len(parts)] == parts  # the first trace: the forward pass


def test_patch_conv_is_nn_conv_with_the_same_parameters():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 10, 3)), jnp.float32)
  ours = fast_conv.PatchConv(4, 3, stride=2, dilation=1, padding=1, use_bias=True)
  theirs = nn.Conv(4, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=True)
  variables = theirs.init(jax.random.key(0), x)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # a non-zero bias
  assert (jax.tree.structure(ours.init(jax.random.key(0), x))
          == jax.tree.structure(variables))
  assert_close(ours.apply(variables, x), theirs.apply(variables, x))
  grad = lambda m: jax.grad(lambda v, x: jnp.sum(m.apply(v, x) ** 2), (0, 1))(variables, x)
  jax.tree.map(assert_close, grad(ours), grad(theirs))


def test_conv_impl_resolution(monkeypatch):
  assert fast_conv.resolve_conv_impl('auto') == 'im2col'  # tests run on CPU
  with pytest.raises(ValueError, match='im2col'):
    fast_conv.check_conv_impl('fft')
  assert isinstance(layers.conv(8, 3, impl='auto'), fast_conv.PatchConv)
  assert isinstance(layers.conv(8, 3, impl='xla'), nn.Conv)
  assert isinstance(layers.conv(8, 1, impl='auto'), layers.Conv1x1)
  # On accelerators 'auto' is the standard graph (and 'im2col' still forces ours).
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert fast_conv.resolve_conv_impl('auto') == 'xla'
  assert isinstance(layers.conv(8, 3, impl='auto'), nn.Conv)
  assert isinstance(layers.conv(8, 3, impl='im2col'), fast_conv.PatchConv)
  x = jnp.ones((1, 4, 4, 2))
  assert fast_conv.materialize(x, 'auto') is x


def test_dense_and_stored_are_exact():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 5, 7, 6)), jnp.float32)
  np.testing.assert_array_equal(jax.jit(fast_conv.stored)(x), x)
  np.testing.assert_array_equal(jax.jit(fast_conv.transposed)(x.reshape(-1, 6)),
                                x.reshape(-1, 6).T)
  for cout in (3, 9):  # transposes x (Cin <= Cout) or dy (Cin > Cout)
    kernel = jnp.asarray(rng.normal(size=(6, cout)), jnp.float32)
    einsum = lambda x, k: jnp.einsum('bhwc,cd->bhwd', x, k)
    assert_close(fast_conv.dense(x, kernel), einsum(x, kernel))
    loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
    got = jax.jit(jax.grad(loss(fast_conv.dense), (0, 1)))(x, kernel)
    want = jax.grad(loss(einsum), (0, 1))(x, kernel)
    jax.tree.map(assert_close, got, want)


@pytest.mark.parametrize('name', ['deeplabv2', 'deeplabv3plus'])
def test_deeplab_loss_and_gradients_match_xla(name):
  """ResNet-18 at width 1/16 (torchvision layout: strided 3x3 convs) on 33x33 images."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 33, 33, 3)), jnp.float32)
  models = {impl: get_model(model_config(name, conv_impl=impl), 3)
            for impl in ('xla', 'im2col')}
  shapes, out = shapes_of(models['xla'], (33, 33))
  variables = random_variables(shapes)
  labels = jnp.asarray(rng.integers(0, 3, out['logits'].shape[:3]), jnp.int32)

  def loss(params, model):
    out = model.apply({**variables, 'params': params}, images, train=True,
                      mutable=['batch_stats'])[0]
    return losses.cross_entropy(out['logits'], labels) + jnp.mean(out['features'] ** 2)

  results = {impl: jax.jit(jax.value_and_grad(loss), static_argnums=1)(
      variables['params'], model) for impl, model in models.items()}
  (loss_xla, grads_xla), (loss_ours, grads_ours) = results['xla'], results['im2col']
  np.testing.assert_allclose(loss_ours, loss_xla, rtol=1e-5)
  jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-4), grads_ours, grads_xla)
