"""Building blocks shared by the ResNet backbones and the DeepLab heads.

Conventions (all chosen so that PyTorch weights import with identical outputs):
- NHWC activations, HWIO kernels.
- Convolutions pad explicitly and symmetrically by `dilation * (k - 1) // 2`, as PyTorch
  does; Flax's 'SAME' would pad asymmetrically for strided convs on even sizes.
- 1x1 convolutions are einsums (`Conv1x1`): XLA:CPU computes their weight gradient ~3x
  faster that way than as a convolution (74 against 24 GFLOP/s on 2 cores). The kernel is
  still stored conv-shaped (1, 1, in, out) so weight import treats every conv alike.
- `model.conv_impl` (`conv(..., impl=...)`): 'xla' is `nn.Conv` / einsum; 'im2col' is
  `fast_conv` (same parameters and forward values, a backward pass that XLA:CPU runs
  faster); 'auto' is 'im2col' on CPU and 'xla' on accelerators.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ctt_jax.models import fast_conv

# He-normal on fan-out, as torchvision initialises ResNet convolutions.
he_normal = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class Conv1x1(nn.Module):
  """1x1 convolution as an einsum. [B, H, W, Cin] -> [B, ceil(H/s), ceil(W/s), features].

  A strided 1x1 convolution (PyTorch: kernel 1, stride s, no padding) reads pixels
  0, s, 2s, ...: that is a subsample followed by the einsum. With `impl` resolving to
  'im2col' (CPU) the einsum is `fast_conv.dense`, whose kernel gradient avoids XLA:CPU's
  slow fused transposes.
  """
  features: int
  stride: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = he_normal
  bias_init: Callable = nn.initializers.zeros
  impl: str = 'xla'

  @nn.compact
  def __call__(self, x):
    if self.stride > 1:
      x = x[:, ::self.stride, ::self.stride, :]
    kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = x.astype(self.dtype), kernel[0, 0].astype(self.dtype)
    if fast_conv.resolve_conv_impl(self.impl) == 'xla':
      y = jnp.einsum('bhwc,cd->bhwd', x, kernel)
    else:
      y = fast_conv.dense(x, kernel)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def conv(features: int, kernel_size: int, *, stride: int = 1, dilation: int = 1,
         use_bias: bool = False, dtype: Any = jnp.float32, name: str | None = None,
         kernel_init: Callable = he_normal, bias_init: Callable = nn.initializers.zeros,
         impl: str = 'xla') -> nn.Module:
  """A k x k convolution padded like PyTorch (`padding=dilation*(k-1)//2`).

  Returns a `Conv1x1` for k == 1 (always undilated, so `dilation` is ignored there).
  `impl` is `model.conv_impl`: 'xla' (`nn.Conv`), 'im2col' (`fast_conv.PatchConv`) or
  'auto' ('im2col' on CPU, 'xla' on accelerators).
  """
  impl = fast_conv.check_conv_impl(impl)
  if kernel_size == 1:
    return Conv1x1(features, stride=stride, use_bias=use_bias, dtype=dtype,
                   kernel_init=kernel_init, bias_init=bias_init, impl=impl, name=name)
  pad = dilation * (kernel_size - 1) // 2
  if fast_conv.resolve_conv_impl(impl) == 'im2col':
    return fast_conv.PatchConv(features, kernel_size, stride=stride, dilation=dilation,
                               padding=pad, use_bias=use_bias, dtype=dtype,
                               kernel_init=kernel_init, bias_init=bias_init, name=name)
  return nn.Conv(features, (kernel_size, kernel_size), strides=stride,
                 padding=((pad, pad), (pad, pad)), kernel_dilation=dilation,
                 use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=kernel_init, bias_init=bias_init, name=name)


def batch_norm(use_running_average: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults; statistics in float32 even for bf16 compute.

  Two-pass variance (mean of (x - mean)^2), as PyTorch: Flax's default E[x^2] - E[x]^2
  cancels catastrophically when |mean| >> std, so the summation order alone (1 vs 8
  devices, or one CPU vs another) changed a trained-BN step's update by ~10%
  (tests/test_sharding.py).
  """
  return nn.BatchNorm(use_running_average=use_running_average, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


class ConvBN(nn.Module):
  """conv -> BN -> optional ReLU, with submodules `conv` and `bn`."""
  features: int
  kernel_size: int = 1
  dilation: int = 1
  relu: bool = True
  use_running_average: bool = True
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x):
    x = conv(self.features, self.kernel_size, dilation=self.dilation, dtype=self.dtype,
             impl=self.conv_impl, name='conv')(x)
    x = batch_norm(self.use_running_average, self.dtype, 'bn')(x)
    return nn.relu(x) if self.relu else x


def max_pool_3x3_s2(x: jax.Array, ceil_mode: bool) -> jax.Array:
  """PyTorch `MaxPool2d(3, stride=2, padding=1, ceil_mode=...)` on NHWC.

  In ceil mode the output has ceil((n - 1) / 2) + 1 pixels per axis; the extra windows
  hang over the bottom/right edge and are padded with -inf, as in PyTorch (which also
  drops a last window that would start in the padding, impossible for k=3, s=2, p=1).
  """
  pads = [(0, 0)]
  for n in x.shape[1:3]:
    out = (n - 1) // 2 + 1 if not ceil_mode else -(-(n - 1) // 2) + 1
    pads.append((1, max(0, (out - 1) * 2 + 3 - n - 1)))
  pads.append((0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               pads)


def _interp_axis(x: jax.Array, out_size: int, axis: int, align_corners: bool):
  """Linear interpolation of one axis, matching `torch.nn.functional.interpolate`."""
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    coords = np.arange(out_size) * scale
  else:  # half-pixel centres; PyTorch clamps negative source coordinates to 0.
    coords = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
  lo = np.minimum(np.floor(coords).astype(np.int32), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = jnp.asarray((coords - lo).reshape(shape), x.dtype)
  return jnp.take(x, lo, axis=axis) * (1 - frac) + jnp.take(x, hi, axis=axis) * frac


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool = True):
  """Bilinear resize of [B, H, W, C] to [B, size[0], size[1], C], without antialiasing.

  Equal to PyTorch's `F.interpolate(x, size, mode='bilinear', align_corners=...)`.
  """
  x = _interp_axis(x, size[0], 1, align_corners)
  return _interp_axis(x, size[1], 2, align_corners)
