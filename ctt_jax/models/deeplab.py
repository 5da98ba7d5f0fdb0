"""DeepLabV2 and DeepLabV3+ on the dilated ResNets of `resnet.py`.

Both follow the paper's split f = g(h(x)): `features` are the last
representation before the classifier, so a pixel's confidence is a function of the
features there. Top-level submodules: `backbone` (base learning rate) and the head
modules below (head learning rate).

DeepLabV2 (`model.name=deeplabv2`), logits at the output stride (1/8 by default), with
one of two heads (`model.head`):
- 'aspp_se', the CTT authors' head (`ctt_head.py`): layer4 -> `head` (ASPP of five conv-GN-ReLU
  branches, squeeze-excitation, 3x3 conv-GN, dropout 0.1) = signed, L2-normalised
  features -> `head/classifier` (1x1) = logits.
- 'bottleneck' (this project's earlier head, kept as an option):
  layer4 -> `bottleneck` (1x1 conv, BN, ReLU to `feature_dim`)       = features
         -> `classifier` (ASPP-V2: four 3x3 convs, dilation 6/12/18/24, with bias,
                          summed)                                     = logits
  The original DeepLabV2 applies the ASPP-V2 to the 2048-d layer4 output directly; the
  1x1 bottleneck gives the 256-d features the contrastive losses need at little cost.
  Its features are non-negative (after the ReLU the classifier reads), so every cosine
  similarity between them is >= 0, which weakens both contrastive terms.

DeepLabV3+ (`model.name=deeplabv3plus`), logits at 1/4 (the resolution of layer1):
  layer4 -> `aspp` (1x1, three 3x3 at dilation 6/12/18 (x2 at output stride 8), image
                    pooling; each conv-BN-ReLU at 256 ch; concat -> 1x1 conv-BN-ReLU)
         -> bilinear upsampling to layer1's size (align_corners=True)
  layer1 -> `decoder.reduce` (1x1 conv-BN-ReLU, 48 ch)
  concat -> `decoder.fuse1` (3x3 conv-BN-ReLU), `decoder.fuse2` (3x3 conv-BN, no ReLU;
            `feature_dim` ch) = features (signed: no ReLU)
         -> `classifier` (1x1 conv with bias)                                     = logits

`model.projection_dim > 0` adds `projection` (1x1 conv-BN-ReLU-1x1 conv) on the features;
its output is returned as `features` (the logits are unchanged; with the 'aspp_se' head it
reads the normalised features).
`model.width_multiplier` scales the backbone and the internal head widths (ASPP 256,
low-level 48, the 'aspp_se' head's branches 256) but not `feature_dim` / `projection_dim`,
which are set directly.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from ctt_jax.models import fast_conv
from ctt_jax.models.ctt_head import CTTHead
from ctt_jax.models.layers import ConvBN, batch_norm, conv, resize_bilinear
from ctt_jax.models.resnet import ResNet, check_backbone_config, check_remat, scale_width

ASPP_V2_RATES = (6, 12, 18, 24)
DEEPLABV2_HEADS = ('bottleneck', 'aspp_se')  # model.head
# Classifier init of DeepLab: small normal weights.
classifier_init = nn.initializers.normal(0.01)


class ASPPV2(nn.Module):
  """DeepLabV2 classifier: sum of four dilated 3x3 convs (`conv0..conv3`, with bias)."""
  num_classes: int
  rates: tuple[int, ...] = ASPP_V2_RATES
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x):
    return sum(
        conv(self.num_classes, 3, dilation=r, use_bias=True, dtype=self.dtype,
             kernel_init=classifier_init, impl=self.conv_impl, name=f'conv{i}')(x)
        for i, r in enumerate(self.rates))


class ASPP(nn.Module):
  """DeepLabV3 ASPP: branches `b0` (1x1), `b1..b3` (dilated 3x3), `pool` (image pooling),
  concatenated and fused by `project` (1x1). [B, h, w, Cin] -> [B, h, w, features]."""
  features: int
  rates: tuple[int, int, int]
  use_running_average: bool
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x):
    branch = lambda k, d, name: ConvBN(self.features, k, d, True, self.use_running_average,
                                       self.dtype, self.conv_impl, name=name)
    outs = [branch(1, 1, 'b0')(x)]
    outs += [branch(3, r, f'b{i + 1}')(x) for i, r in enumerate(self.rates)]
    pooled = branch(1, 1, 'pool')(jnp.mean(x, axis=(1, 2), keepdims=True))
    outs.append(jnp.broadcast_to(pooled, outs[0].shape))  # = upsampling a 1x1 map
    return branch(1, 1, 'project')(jnp.concatenate(outs, axis=-1))


class Decoder(nn.Module):
  """DeepLabV3+ decoder: `reduce` (1x1, low_level ch) on layer1, concat with the upsampled
  ASPP output, then `fuse1` (3x3 conv-BN-ReLU) and `fuse2` (3x3 conv-BN without ReLU:
  features are taken before any activation, so they are signed).
  Returns [B, H1, W1, features]."""
  features: int
  low_level: int
  use_running_average: bool
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, high, low):
    low = ConvBN(self.low_level, 1, 1, True, self.use_running_average, self.dtype,
                 self.conv_impl, name='reduce')(low)
    high = resize_bilinear(high, low.shape[1:3], align_corners=True)
    x = jnp.concatenate([low, high], axis=-1)
    for name, relu in (('fuse1', True), ('fuse2', False)):
      x = ConvBN(self.features, 3, 1, relu, self.use_running_average, self.dtype,
                 self.conv_impl, name=name)(x)
    return x


class ProjectionHead(nn.Module):
  """`conv1` (1x1) -> `bn1` -> ReLU -> `conv2` (1x1, with bias) to `features` channels."""
  hidden: int
  features: int
  use_running_average: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv(self.hidden, 1, dtype=self.dtype, name='conv1')(x)
    x = nn.relu(batch_norm(self.use_running_average, self.dtype, 'bn1')(x))
    return conv(self.features, 1, use_bias=True, dtype=self.dtype, name='conv2')(x)


class DeepLab(nn.Module):
  """DeepLabV2 or DeepLabV3+ (`head`); see the module docstring. `v2_head` is DeepLabV2's
  head ('bottleneck' | 'aspp_se', `model.head`); DeepLabV3+ ignores it.

  __call__(images [B, H, W, 3] float32, train) -> {'logits': [B, h, w, num_classes],
  'features': [B, h, w, D]} in float32, D = projection_dim or feature_dim.
  """
  num_classes: int
  head: str = 'deeplabv2'  # deeplabv2 | deeplabv3plus
  v2_head: str = 'bottleneck'  # DeepLabV2 only: bottleneck | aspp_se
  head_init: str = 'paper'  # the aspp_se head's initialisation (ctt_head.py)
  backbone_name: str = 'resnet101'
  layout: str = 'caffe'
  output_stride: int = 8
  width_multiplier: float = 1.0
  feature_dim: int = 256
  projection_dim: int = 0
  freeze_bn: bool = True
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'  # k x k convolutions: 'xla' | 'im2col' | 'auto' (layers.conv)
  remat: str = ''  # backbone rematerialisation: '' | 'blocks' | 'stages' (resnet.py)

  @nn.compact
  def __call__(self, images, train: bool = False):
    use_running_average = (not train) or self.freeze_bn
    stages = ResNet(self.backbone_name, self.layout, self.output_stride,
                    self.width_multiplier, self.freeze_bn, self.dtype, self.conv_impl,
                    remat=self.remat, name='backbone')(images, train)
    if self.head == 'deeplabv2' and self.v2_head == 'aspp_se':
      logits, features = CTTHead(self.num_classes, scale_width(256, self.width_multiplier),
                                 self.feature_dim, self.dtype, self.conv_impl,
                                 self.head_init, name='head')(stages['layer4'], train)
    elif self.head == 'deeplabv2':
      check_deeplabv2_head(self.v2_head)
      features = ConvBN(self.feature_dim, 1, 1, True, use_running_average, self.dtype,
                        self.conv_impl, name='bottleneck')(stages['layer4'])
      logits = ASPPV2(self.num_classes, dtype=self.dtype, conv_impl=self.conv_impl,
                      name='classifier')(features)
    elif self.head == 'deeplabv3plus':
      rates = tuple(r * 16 // self.output_stride for r in (6, 12, 18))
      high = ASPP(scale_width(256, self.width_multiplier), rates, use_running_average,
                  self.dtype, self.conv_impl, name='aspp')(stages['layer4'])
      features = Decoder(self.feature_dim, scale_width(48, self.width_multiplier),
                         use_running_average, self.dtype, self.conv_impl,
                         name='decoder')(high, stages['layer1'])
      logits = conv(self.num_classes, 1, use_bias=True, dtype=self.dtype,
                    kernel_init=classifier_init, impl=self.conv_impl,
                    name='classifier')(features)
    else:
      raise ValueError(f'Unknown DeepLab head {self.head!r}; valid: deeplabv2, '
                       'deeplabv3plus.')
    if self.projection_dim > 0:
      features = ProjectionHead(self.feature_dim, self.projection_dim, use_running_average,
                                self.dtype, name='projection')(features)
    return {'logits': logits.astype(jnp.float32), 'features': features.astype(jnp.float32)}


def check_deeplabv2_head(head: str) -> str:
  if head not in DEEPLABV2_HEADS:
    raise ValueError(f'Unknown model.head {head!r}; valid: {", ".join(DEEPLABV2_HEADS)}.')
  return head


def build_deeplab(model_config: ml_collections.ConfigDict, num_classes: int) -> DeepLab:
  """The DeepLab of `model_config` (keys of `configs/common.py` `model`)."""
  check_backbone_config(model_config.backbone, model_config.layout,
                        int(model_config.output_stride))
  if model_config.dtype not in ('float32', 'bfloat16'):
    raise ValueError(f'model.dtype must be float32 or bfloat16, got {model_config.dtype!r}.')
  return DeepLab(
      num_classes=num_classes,
      head=model_config.name,
      v2_head=check_deeplabv2_head(model_config.head),
      head_init=model_config.head_init,
      backbone_name=model_config.backbone,
      layout=model_config.layout,
      output_stride=int(model_config.output_stride),
      width_multiplier=float(model_config.width_multiplier),
      feature_dim=int(model_config.feature_dim),
      projection_dim=int(model_config.projection_dim),
      freeze_bn=bool(model_config.freeze_bn),
      dtype=jnp.bfloat16 if model_config.dtype == 'bfloat16' else jnp.float32,
      conv_impl=fast_conv.check_conv_impl(model_config.conv_impl),
      remat=check_remat(model_config.remat),
  )
