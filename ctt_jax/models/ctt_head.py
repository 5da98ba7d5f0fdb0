"""The CTT authors' DeepLabV2 head (`model.head='aspp_se'`): `Classifier_Module2` of their
`model/deeplabv2.py` (1181110317/SSL_CTT): signed, GroupNorm'd features for HC and LC.

  layer4 -> `branch0` (1x1) and `branch1..4` (3x3, dilation 6/12/18/24): conv with bias,
            GroupNorm, ReLU; `width` channels each (256 x width_multiplier)
         -> concat (5 x width) -> `se` (squeeze-excitation: global average pool,
            `fc1` to 5 x width / 16, ReLU, `fc2` back, sigmoid, channel scaling)
         -> `fuse` (3x3 conv with bias to `feature_dim`, GroupNorm; no activation)
         -> channel dropout 0.1 (PyTorch's Dropout2d; train mode with a 'dropout' rng)
         -> features = L2-normalise(that)      (signed: the tensor the classifier reads)
         -> `classifier` (1x1 conv, no bias)    = logits

Initialisation (`model.head_init`): 'paper', the init the head's own code writes:
classifier N(0, 0.001), other convs Kaiming-normal on fan-in with zero biases, SE linears
Kaiming-normal on fan-out with zero biases, GroupNorm scale 1 / bias 0. 'authors', what
their network ends up with: their ResNet's constructor re-draws every conv weight of the
model N(0, 0.01) after the head is built (deeplabv2.py:235-238), the head's own loops miss
the branch convs (wrapped in nn.Sequential) and the SE linears, which keep PyTorch's
default U(+-1/sqrt(fan_in)) biases and weights; the fuse conv's bias stays 0.

GroupNorm groups: 32 at the authors' 256 channels, i.e. 8 channels per group. Narrower
layers (`width_multiplier < 1`, a small `feature_dim`) keep at least 8 channels per group:
the group count is the largest divisor of the width that is <= min(32, width // 8), so it
always divides the width (16 channels -> 2 groups, 64 -> 8, 256 -> 32, 1 group below 16).

Module names are ours; `weights.py` maps them to the authors' `layer5.*` checkpoint names.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctt_jax.models.layers import conv

RATES = (6, 12, 18, 24)
SE_REDUCTION = 16  # SEBlock(r=16): 1280 -> 80 at full width
DROPOUT_RATE = 0.1
MAX_GROUPS = 32
MIN_GROUP_SIZE = 8  # channels per group at the authors' width (256 / 32)

kaiming_fan_in = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
kaiming_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
classifier_init = nn.initializers.normal(0.001)
authors_conv_init = nn.initializers.normal(0.01)
# PyTorch's default Linear / Conv init: weights and biases U(+-1/sqrt(fan_in)) (its
# kaiming_uniform with a=sqrt(5) gives the same bound for the weights).
torch_default_kernel_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
HEAD_INITS = ('paper', 'authors')


def torch_default_bias_init(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default bias of a conv or linear."""
  bound = 1.0 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)


def group_norm_groups(channels: int) -> int:
  """GroupNorm groups for `channels` (see the module docstring); always divides it."""
  limit = max(1, min(MAX_GROUPS, channels // MIN_GROUP_SIZE))
  return max(g for g in range(1, limit + 1) if channels % g == 0)


def group_norm(channels: int, dtype: Any, name: str) -> nn.GroupNorm:
  """PyTorch's GroupNorm (eps 1e-5), two-pass variance, statistics in float32."""
  return nn.GroupNorm(num_groups=group_norm_groups(channels), epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, use_fast_variance=False, name=name)


def l2_normalize(x, eps: float = 1e-12):
  """`torch.nn.functional.normalize(x, dim=channels)` in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class ConvGN(nn.Module):
  """`conv` (with bias) -> `gn` (GroupNorm) -> optional ReLU."""
  features: int
  kernel_size: int
  dilation: int = 1
  relu: bool = True
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  kernel_init: Callable = kaiming_fan_in
  torch_default_bias: bool = False  # else zero

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1] * self.kernel_size ** 2
    bias_init = (torch_default_bias_init(fan_in) if self.torch_default_bias
                 else nn.initializers.zeros)
    x = conv(self.features, self.kernel_size, dilation=self.dilation, use_bias=True,
             dtype=self.dtype, kernel_init=self.kernel_init, bias_init=bias_init,
             impl=self.conv_impl, name='conv')(x)
    x = group_norm(self.features, self.dtype, 'gn')(x)
    return nn.relu(x) if self.relu else x


class SqueezeExcitation(nn.Module):
  """x * sigmoid(fc2(relu(fc1(mean over pixels of x)))). [B, h, w, C] -> same."""
  hidden: int
  dtype: Any = jnp.float32
  torch_default_init: bool = False  # else Kaiming (fan-out) weights and zero biases

  @nn.compact
  def __call__(self, x):
    def dense(n, fan_in, name):
      if self.torch_default_init:
        inits = dict(kernel_init=torch_default_kernel_init,
                     bias_init=torch_default_bias_init(fan_in))
      else:
        inits = dict(kernel_init=kaiming_fan_out)
      return nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, name=name, **inits)
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # [B, C]
    s = nn.relu(dense(self.hidden, x.shape[-1], 'fc1')(s))
    s = nn.sigmoid(dense(x.shape[-1], self.hidden, 'fc2')(s))
    return x * s[:, None, None, :].astype(x.dtype)


class CTTHead(nn.Module):
  """[B, h, w, Cin] (layer4) -> (logits [B, h, w, C], features [B, h, w, feature_dim]).

  Features are L2-normalised and signed. Dropout acts only with `train=True` and a
  'dropout' rng (`model.apply(..., rngs={'dropout': key})`); without the rng the head is
  deterministic in train mode too.
  """
  num_classes: int
  width: int = 256
  feature_dim: int = 256
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  init_scheme: str = 'paper'  # model.head_init, see the module docstring

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.init_scheme not in HEAD_INITS:
      raise ValueError(f'Unknown model.head_init {self.init_scheme!r}; valid: '
                       f'{", ".join(HEAD_INITS)}.')
    authors = self.init_scheme == 'authors'
    conv_init = authors_conv_init if authors else kaiming_fan_in
    branch = lambda k, d, name: ConvGN(self.width, k, d, True, self.dtype, self.conv_impl,
                                       conv_init, authors, name=name)
    outs = [branch(1, 1, 'branch0')(x)]
    outs += [branch(3, r, f'branch{i + 1}')(x) for i, r in enumerate(RATES)]
    x = jnp.concatenate(outs, axis=-1)
    x = SqueezeExcitation(max(1, x.shape[-1] // SE_REDUCTION), self.dtype, authors,
                          name='se')(x)
    x = ConvGN(self.feature_dim, 3, 1, False, self.dtype, self.conv_impl, conv_init,
               name='fuse')(x)
    # Dropout2d: one draw per image and channel, shared by all pixels.
    deterministic = not (train and self.has_rng('dropout'))
    x = nn.Dropout(DROPOUT_RATE, broadcast_dims=(1, 2), deterministic=deterministic)(x)
    logits = conv(self.num_classes, 1, use_bias=False, dtype=self.dtype,
                  kernel_init=authors_conv_init if authors else classifier_init,
                  impl=self.conv_impl, name='classifier')(x)
    return logits, l2_normalize(x)
