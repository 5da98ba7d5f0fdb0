"""Dilated ResNet-18/34/50/101 backbones in the weight layouts users hold.

Layouts (`model.layout`), each matching one family of published PyTorch checkpoints:
- `torchvision`: 7x7 stem, floor-mode max pool, bottleneck stride on the 3x3 conv.
  In a dilated stage the first block keeps the previous stage's dilation
  (torchvision's `replace_stride_with_dilation`).
- `caffe`: the DeepLabV2 `Res_Deeplab` of AdvSemiSeg/ClassMix/CTT: 7x7 stem, ceil-mode max
  pool, bottleneck stride on the first 1x1 conv, every block of a dilated stage at the
  full dilation.
- `v1c`: mmseg `ResNetV1c`: deep stem of three 3x3 convs 32-32-64, then as `torchvision`
  (mmseg's `contract_dilation=True` gives the same first-block dilations).
- `deepbase`: the same deep stem at 64-64-128 (PSPNet "deep base"; the `resnet*_v1c.pth`
  of TorchSemSeg/CPS and CTT's DeepLabV3+, UniMatch's `resnet101.pth`).

Output stride 8: layer3/4 have stride 1 and dilation 2/4; 16: layer4 stride 1, dilation 2;
32: no dilation. Flax module names follow the PyTorch ones (`layer3_5/conv2` is
`layer3.5.conv2`); `weights.py` holds the exact mapping.

`ResNet(...)(x, train)` maps [B, H, W, 3] to a dict of the four stages
`{'layer1': [B, H/4, W/4, 64m*e], ..., 'layer4': [B, H/os, W/os, 512m*e]}` (sizes rounded
up; e = 4 for bottleneck nets, 1 otherwise; m = `width_multiplier`).

Rematerialisation (`model.remat`, flax `nn.remat`): '' stores every activation the backward
pass needs; 'blocks' stores only each block's input and recomputes the block's inside in
the backward pass (about one more forward pass of the backbone, a fraction of the memory);
'stages' stores only each stage's input (least stored, but the backward pass of a stage
holds all of that stage's recomputed activations at once). Parameter names and values are
the same in every mode.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ctt_jax.models import fast_conv
from ctt_jax.models.layers import batch_norm, conv, max_pool_3x3_s2

LAYOUTS = ('torchvision', 'caffe', 'v1c', 'deepbase')
REMAT_MODES = ('', 'blocks', 'stages')
# name -> (block type, blocks per stage)
DEPTHS = {
    'resnet18': ('basic', (2, 2, 2, 2)),
    'resnet34': ('basic', (3, 4, 6, 3)),
    'resnet50': ('bottleneck', (3, 4, 6, 3)),
    'resnet101': ('bottleneck', (3, 4, 23, 3)),
}
# Deep-stem channel widths per layout; None = the 7x7 stem of 64 channels.
STEM_WIDTHS = {'torchvision': None, 'caffe': None, 'v1c': (32, 32, 64),
               'deepbase': (64, 64, 128)}
# output stride -> (strides, dilations) of layer1..layer4
STAGE_GEOMETRY = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
}


def scale_width(channels: int, multiplier: float) -> int:
  """Channel count scaled by `model.width_multiplier` (at least 1)."""
  return max(1, int(round(channels * multiplier)))


def check_backbone_config(backbone: str, layout: str, output_stride: int):
  """Raises a ValueError naming the valid choices for an unknown setting."""
  if backbone not in DEPTHS:
    raise ValueError(f'Unknown model.backbone {backbone!r}; valid: {", ".join(DEPTHS)}.')
  if layout not in LAYOUTS:
    raise ValueError(f'Unknown model.layout {layout!r}; valid: {", ".join(LAYOUTS)}.')
  if output_stride not in STAGE_GEOMETRY:
    raise ValueError(f'model.output_stride must be 8, 16 or 32, got {output_stride}.')


def check_remat(remat: str) -> str:
  """Returns `remat` if it is a valid `model.remat`, else a ValueError naming the choices."""
  if remat not in REMAT_MODES:
    raise ValueError(f"Unknown model.remat {remat!r}; valid: '' (none), 'blocks', 'stages'.")
  return remat


class BasicBlock(nn.Module):
  """Two 3x3 convs (both dilated in a dilated stage) + identity or 1x1 projection."""
  planes: int
  stride: int
  dilation: int
  first_dilation: int
  downsample: bool
  use_running_average: bool
  dtype: Any
  conv_impl: str = 'xla'
  expansion = 1

  @nn.compact
  def __call__(self, x):
    bn = lambda name: batch_norm(self.use_running_average, self.dtype, name)
    out = conv(self.planes, 3, stride=self.stride, dilation=self.first_dilation,
               dtype=self.dtype, impl=self.conv_impl, name='conv1')(x)
    out = nn.relu(bn('bn1')(out))
    out = conv(self.planes, 3, dilation=self.dilation, dtype=self.dtype,
               impl=self.conv_impl, name='conv2')(out)
    out = bn('bn2')(out)
    if self.downsample:
      x = conv(self.planes, 1, stride=self.stride, dtype=self.dtype,
               impl=self.conv_impl, name='downsample_conv')(x)
      x = bn('downsample_bn')(x)
    return fast_conv.materialize(nn.relu(out + x), self.conv_impl)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 channels) + identity or strided 1x1 projection.

  `stride_on_1x1` is the caffe layout: the first 1x1 conv subsamples, not the 3x3.
  """
  planes: int
  stride: int
  dilation: int
  first_dilation: int
  downsample: bool
  stride_on_1x1: bool
  use_running_average: bool
  dtype: Any
  conv_impl: str = 'xla'
  expansion = 4

  @nn.compact
  def __call__(self, x):
    bn = lambda name: batch_norm(self.use_running_average, self.dtype, name)
    s1, s3 = (self.stride, 1) if self.stride_on_1x1 else (1, self.stride)
    out = conv(self.planes, 1, stride=s1, dtype=self.dtype, impl=self.conv_impl,
               name='conv1')(x)
    out = nn.relu(bn('bn1')(out))
    out = conv(self.planes, 3, stride=s3, dilation=self.first_dilation, dtype=self.dtype,
               impl=self.conv_impl, name='conv2')(out)
    out = nn.relu(bn('bn2')(out))
    out = conv(self.planes * 4, 1, dtype=self.dtype, impl=self.conv_impl,
               name='conv3')(out)
    out = bn('bn3')(out)
    if self.downsample:
      x = conv(self.planes * 4, 1, stride=self.stride, dtype=self.dtype,
               impl=self.conv_impl, name='downsample_conv')(x)
      x = bn('downsample_bn')(x)
    return fast_conv.materialize(nn.relu(out + x), self.conv_impl)


def _run_blocks(module: nn.Module, x, block_class, specs: tuple):
  """Applies one stage's blocks (`specs`: static keyword tuples) as children of `module`.

  A function of the parent module, so that `nn.remat` can wrap a whole stage without adding
  a level to the parameter names (`layer3_5` stays a direct child of the backbone).
  """
  for spec in specs:
    x = block_class(parent=module, **dict(spec))(x)
  return x


class ResNet(nn.Module):
  """Dilated ResNet; see the module docstring for layouts and output sizes."""
  depth: str = 'resnet101'
  layout: str = 'torchvision'
  output_stride: int = 8
  width_multiplier: float = 1.0
  freeze_bn: bool = True
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'  # k x k convolutions: 'xla' | 'im2col' | 'auto' (layers.conv)
  remat: str = ''  # '' | 'blocks' | 'stages' (module docstring)

  @nn.compact
  def __call__(self, x, train: bool = False) -> dict:
    check_backbone_config(self.depth, self.layout, self.output_stride)
    check_remat(self.remat)
    # Frozen BN uses the running statistics in training too (and never updates them).
    use_running_average = (not train) or self.freeze_bn
    bn = lambda name: batch_norm(use_running_average, self.dtype, name)
    width = lambda c: scale_width(c, self.width_multiplier)
    x = x.astype(self.dtype)

    stem = STEM_WIDTHS[self.layout]
    if stem is None:
      x = conv(width(64), 7, stride=2, dtype=self.dtype, impl=self.conv_impl,
               name='conv1')(x)
      x = nn.relu(bn('bn1')(x))
    else:
      for i, channels in enumerate(stem):
        x = conv(width(channels), 3, stride=2 if i == 0 else 1, dtype=self.dtype,
                 impl=self.conv_impl, name=f'stem_conv{i + 1}')(x)
        x = nn.relu(bn(f'stem_bn{i + 1}')(x))
    x = max_pool_3x3_s2(x, ceil_mode=self.layout == 'caffe')

    block_type, blocks_per_stage = DEPTHS[self.depth]
    strides, dilations = STAGE_GEOMETRY[self.output_stride]
    block_class = Bottleneck if block_type == 'bottleneck' else BasicBlock
    if self.remat == 'blocks':
      # Only the block's input is kept for the backward pass; its inside is recomputed.
      block_class = nn.remat(block_class)
    stages = {}
    previous_dilation = 1
    for stage, (blocks, stride, dilation) in enumerate(
        zip(blocks_per_stage, strides, dilations)):
      planes = width(64 * 2**stage)
      # torchvision/mmseg: the first block of a dilated stage keeps the previous dilation.
      first_dilation = dilation if self.layout == 'caffe' else previous_dilation
      out_channels = planes * block_class.expansion
      specs = []
      for b in range(blocks):
        spec = dict(
            planes=planes,
            stride=stride if b == 0 else 1,
            dilation=dilation,
            first_dilation=first_dilation if b == 0 else dilation,
            downsample=b == 0 and (stride != 1 or x.shape[-1] != out_channels),
            use_running_average=use_running_average,
            dtype=self.dtype,
            conv_impl=self.conv_impl,
            name=f'layer{stage + 1}_{b}')
        if block_type == 'bottleneck':
          spec['stride_on_1x1'] = self.layout == 'caffe'
        specs.append(tuple(sorted(spec.items())))  # hashable: a static argument of remat
      run = _run_blocks
      if self.remat == 'stages':
        # Only the stage's input is kept; the whole stage is recomputed in the backward pass.
        run = nn.remat(_run_blocks, static_argnums=(2, 3))
      x = run(self, x, block_class, tuple(specs))
      stages[f'layer{stage + 1}'] = x
      previous_dilation = dilation
    return stages
