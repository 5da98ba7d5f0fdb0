"""A tiny segmentation network for tests and CPU demos (output stride 4)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ctt_jax.models import layers


class _Backbone(nn.Module):
  width: int
  use_batch_norm: bool

  @nn.compact
  def __call__(self, x, train: bool):
    for i, (features, stride) in enumerate(
        [(self.width, 2), (self.width * 2, 2), (self.width * 2, 1)]):
      x = nn.Conv(features, (3, 3), strides=stride, use_bias=not self.use_batch_norm,
                  name=f'conv{i}')(x)
      if self.use_batch_norm:
        x = layers.batch_norm(not train, jnp.float32, f'bn{i}')(x)
      x = nn.relu(x)
    return x


class _Head(nn.Module):
  num_classes: int
  feature_dim: int

  @nn.compact
  def __call__(self, x):
    # No activation after the bottleneck: the features are signed (after a ReLU every
    # cosine similarity between features would be >= 0, weakening HC and LC).
    features = nn.Conv(self.feature_dim, (3, 3), name='bottleneck')(x)
    logits = nn.Conv(self.num_classes, (1, 1), name='classifier')(features)
    return logits, features


class TinySegNet(nn.Module):
  """Three strided convs (conv-BN-ReLU) + a 3x3 bottleneck conv whose signed output is the
  features + a 1x1 classifier on them."""
  num_classes: int
  width: int = 16
  feature_dim: int = 32
  use_batch_norm: bool = True

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = _Backbone(self.width, self.use_batch_norm, name='backbone')(images, train)
    logits, features = _Head(self.num_classes, self.feature_dim, name='head')(x)
    return {'logits': logits.astype(jnp.float32), 'features': features.astype(jnp.float32)}
