"""PyTorch (torch.nn only) reference networks for the weight-import parity tests.

They are written independently of the Flax code, after the published PyTorch models:
torchvision's ResNet (`replace_stride_with_dilation`), the DeepLabV2 `Res_Deeplab` of
AdvSemiSeg/ClassMix (caffe layout), mmseg's ResNetV1c, the TorchSemSeg/UniMatch deep
stem, and the CTT authors' DeepLabV2 head (`SEBlock`, `Classifier_Module2` of
1181110317/SSL_CTT `model/deeplabv2.py`, widths and GroupNorm groups made parameters).
Module names are the checkpoint names `ctt_jax.models.weights` maps. ReLUs and residual
additions work in place, as in torchvision's and the authors' code (benchmarks/torch_step.py
trains these nets and is compared with a plain step of the authors' code).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

DEPTHS = {'resnet18': ('basic', (2, 2, 2, 2)), 'resnet34': ('basic', (3, 4, 6, 3)),
          'resnet50': ('bottleneck', (3, 4, 6, 3)),
          'resnet101': ('bottleneck', (3, 4, 23, 3))}
GEOMETRY = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 16: ((1, 2, 2, 1), (1, 1, 1, 2)),
            32: ((1, 2, 2, 2), (1, 1, 1, 1))}


def width(c, m):
  return max(1, int(round(c * m)))


class ConvBN(nn.Module):
  def __init__(self, cin, cout, k, dilation=1, relu=True):
    super().__init__()
    pad = dilation * (k - 1) // 2
    self.conv = nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False)
    self.bn = nn.BatchNorm2d(cout)
    self.relu = relu

  def forward(self, x):
    x = self.bn(self.conv(x))
    return F.relu_(x) if self.relu else x


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride, dilation, first_dilation, downsample, _):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=first_dilation,
                           dilation=first_dilation, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes, 1, stride, bias=False),
        nn.BatchNorm2d(planes)) if downsample else None

  def forward(self, x):
    out = F.relu_(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    out += self.downsample(x) if self.downsample is not None else x
    return F.relu_(out)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride, dilation, first_dilation, downsample,
               stride_on_1x1):
    super().__init__()
    s1, s3 = (stride, 1) if stride_on_1x1 else (1, stride)
    self.conv1 = nn.Conv2d(inplanes, planes, 1, s1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, s3, padding=first_dilation,
                           dilation=first_dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
        nn.BatchNorm2d(planes * 4)) if downsample else None

  def forward(self, x):
    out = F.relu_(self.bn1(self.conv1(x)))
    out = F.relu_(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    out += self.downsample(x) if self.downsample is not None else x
    return F.relu_(out)


class ResNet(nn.Module):
  """Returns (layer1, layer4) outputs."""

  def __init__(self, depth='resnet50', layout='torchvision', output_stride=8, m=1.0):
    super().__init__()
    self.layout = layout
    if layout in ('torchvision', 'caffe'):
      self.conv1 = nn.Conv2d(3, width(64, m), 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width(64, m))
      inplanes = width(64, m)
    elif layout == 'v1c':  # mmseg: stem.0/1/3/4/6/7 (ReLUs at 2, 5, 8)
      a, b = width(32, m), width(64, m)
      self.stem = nn.Sequential(
          nn.Conv2d(3, a, 3, 2, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
          nn.Conv2d(a, a, 3, 1, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
          nn.Conv2d(a, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU())
      inplanes = b
    else:  # deepbase: conv1 = Sequential(conv, bn, relu, conv, bn, relu, conv), then bn1
      a, b = width(64, m), width(128, m)
      self.conv1 = nn.Sequential(
          nn.Conv2d(3, a, 3, 2, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
          nn.Conv2d(a, a, 3, 1, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
          nn.Conv2d(a, b, 3, 1, 1, bias=False))
      self.bn1 = nn.BatchNorm2d(b)
      inplanes = b
    self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=layout == 'caffe')
    kind, counts = DEPTHS[depth]
    block = Bottleneck if kind == 'bottleneck' else BasicBlock
    strides, dilations = GEOMETRY[output_stride]
    previous = 1
    for i, (n, s, d) in enumerate(zip(counts, strides, dilations)):
      planes = width(64 * 2**i, m)
      first = d if layout == 'caffe' else previous
      blocks = []
      for j in range(n):
        down = j == 0 and (s != 1 or inplanes != planes * block.expansion)
        blocks.append(block(inplanes, planes, s if j == 0 else 1, d,
                            first if j == 0 else d, down, layout == 'caffe'))
        inplanes = planes * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
      previous = d
    self.out_channels = inplanes

  def forward(self, x):
    if self.layout == 'v1c':
      x = self.stem(x)
    else:
      x = F.relu_(self.bn1(self.conv1(x)))
    x = self.maxpool(x)
    c1 = self.layer1(x)
    c4 = self.layer4(self.layer3(self.layer2(c1)))
    return c1, c4


class Projection(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cin, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv2 = nn.Conv2d(cin, cout, 1, bias=True)

  def forward(self, x):
    return self.conv2(F.relu_(self.bn1(self.conv1(x))))


class ASPPV2(nn.Module):
  def __init__(self, cin, num_classes, rates=(6, 12, 18, 24)):
    super().__init__()
    for i, r in enumerate(rates):
      setattr(self, f'conv{i}', nn.Conv2d(cin, num_classes, 3, padding=r, dilation=r))
    self.n = len(rates)

  def forward(self, x):
    return sum(getattr(self, f'conv{i}')(x) for i in range(self.n))


class ASPP(nn.Module):
  def __init__(self, cin, cout, rates):
    super().__init__()
    self.b0 = ConvBN(cin, cout, 1)
    self.b1, self.b2, self.b3 = (ConvBN(cin, cout, 3, r) for r in rates)
    self.pool = ConvBN(cin, cout, 1)
    self.project = ConvBN(5 * cout, cout, 1)

  def forward(self, x):
    pooled = self.pool(F.adaptive_avg_pool2d(x, 1))
    pooled = F.interpolate(pooled, x.shape[2:], mode='bilinear', align_corners=True)
    outs = [self.b0(x), self.b1(x), self.b2(x), self.b3(x), pooled]
    return self.project(torch.cat(outs, 1))


class Decoder(nn.Module):
  def __init__(self, c_low, c_high, low, features):
    super().__init__()
    self.reduce = ConvBN(c_low, low, 1)
    self.fuse1 = ConvBN(low + c_high, features, 3)
    self.fuse2 = ConvBN(features, features, 3, relu=False)  # signed features

  def forward(self, high, low):
    low = self.reduce(low)
    high = F.interpolate(high, low.shape[2:], mode='bilinear', align_corners=True)
    return self.fuse2(self.fuse1(torch.cat([low, high], 1)))


class DeepLab(nn.Module):
  """Returns (logits, features), NCHW."""

  def __init__(self, head, num_classes, depth='resnet50', layout='torchvision',
               output_stride=8, m=1.0, feature_dim=256, projection_dim=0):
    super().__init__()
    self.head = head
    self.backbone = ResNet(depth, layout, output_stride, m)
    c4 = self.backbone.out_channels
    if head == 'deeplabv2':
      self.bottleneck = ConvBN(c4, feature_dim, 1)
      self.classifier = ASPPV2(feature_dim, num_classes)
    else:
      c1 = c4 // 8  # layer1 width = layer4 width / 8 for both block types
      rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
      self.aspp = ASPP(c4, width(256, m), rates)
      self.decoder = Decoder(c1, width(256, m), width(48, m), feature_dim)
      self.classifier = nn.Conv2d(feature_dim, num_classes, 1)
    self.projection = Projection(feature_dim, projection_dim) if projection_dim else None

  def forward(self, x):
    c1, c4 = self.backbone(x)
    if self.head == 'deeplabv2':
      features = self.bottleneck(c4)
    else:
      features = self.decoder(self.aspp(c4), c1)
    logits = self.classifier(features)
    if self.projection is not None:
      features = self.projection(features)
    return logits, features


class SEBlock(nn.Module):
  """The authors' SEBlock: x * sigmoid(Linear(ReLU(Linear(avgpool(x)))))."""

  def __init__(self, inplanes, r=16):
    super().__init__()
    self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
    self.se = nn.Sequential(nn.Linear(inplanes, inplanes // r), nn.ReLU(inplace=True),
                            nn.Linear(inplanes // r, inplanes), nn.Sigmoid())

  def forward(self, x):
    xx = self.global_pool(x).view(x.size(0), x.size(1))
    return x.mul(self.se(xx).unsqueeze(-1).unsqueeze(-1))


class Classifier_Module2(nn.Module):  # pylint: disable=invalid-name
  """The authors' head; their 256 -> `branch_width` (branches) and `feature_dim` (fuse),
  GroupNorm(32) -> GroupNorm(`branch_groups` / `feature_groups`). forward(x) returns
  {'feat': normalize(dropout(fuse)), 'out': classifier(dropout(fuse))} (their get_feat);
  with get_feat=False only 'out' (a step that needs only the logits)."""

  def __init__(self, inplanes, dilation_series, padding_series, num_classes,
               branch_width=256, feature_dim=256, branch_groups=32, feature_groups=32,
               droprate=0.1):
    super().__init__()
    self.conv2d_list = nn.ModuleList()
    self.conv2d_list.append(nn.Sequential(
        nn.Conv2d(inplanes, branch_width, kernel_size=1, stride=1, padding=0, dilation=1,
                  bias=True),
        nn.GroupNorm(num_groups=branch_groups, num_channels=branch_width, affine=True),
        nn.ReLU(inplace=True)))
    for dilation, padding in zip(dilation_series, padding_series):
      self.conv2d_list.append(nn.Sequential(
          nn.Conv2d(inplanes, branch_width, kernel_size=3, stride=1, padding=padding,
                    dilation=dilation, bias=True),
          nn.GroupNorm(num_groups=branch_groups, num_channels=branch_width, affine=True),
          nn.ReLU(inplace=True)))
    concat = branch_width * (len(dilation_series) + 1)
    self.bottleneck = nn.Sequential(
        SEBlock(concat),
        nn.Conv2d(concat, feature_dim, kernel_size=3, stride=1, padding=1, dilation=1,
                  bias=True),
        nn.GroupNorm(num_groups=feature_groups, num_channels=feature_dim, affine=True))
    self.head = nn.Sequential(
        nn.Dropout2d(droprate),
        nn.Conv2d(feature_dim, num_classes, kernel_size=1, padding=0, dilation=1,
                  bias=False))

  def forward(self, x, get_feat=True):
    out = self.conv2d_list[0](x)
    for i in range(len(self.conv2d_list) - 1):
      out = torch.cat((out, self.conv2d_list[i + 1](x)), 1)
    out = self.head[0](self.bottleneck(out))
    logits = self.head[1](out)
    return {'feat': F.normalize(out, dim=1), 'out': logits} if get_feat else {'out': logits}


class CTTDeepLabV2(ResNet):
  """The authors' `ResNet101` (caffe layout) with `layer5 = Classifier_Module2`: the
  state dict has their names (conv1.*, layer1.* .. layer4.*, layer5.*).
  forward(x) -> {'feat', 'out'} as theirs."""

  def __init__(self, num_classes, depth='resnet101', m=1.0, feature_dim=256,
               branch_groups=32, feature_groups=32):
    super().__init__(depth, 'caffe', 8, m)
    self.layer5 = Classifier_Module2(self.out_channels, [6, 12, 18, 24], [6, 12, 18, 24],
                                     num_classes, width(256, m), feature_dim,
                                     branch_groups, feature_groups)

  def forward(self, x):
    return self.layer5(super().forward(x)[1])


def randomize_(net: nn.Module, seed: int = 0):
  """Random weights AND random BN running statistics, scaled to keep activations O(1)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for mod in net.modules():
      if isinstance(mod, nn.Conv2d):
        fan_in = mod.weight[0].numel()
        mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (1.0 / fan_in)**0.5)
        if mod.bias is not None:
          mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
      elif isinstance(mod, nn.BatchNorm2d):
        n = mod.num_features
        mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
        mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
        mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        mod.num_batches_tracked.fill_(7)
      elif isinstance(mod, (nn.GroupNorm, nn.Linear)):
        if isinstance(mod, nn.GroupNorm):
          mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
        else:
          fan_in = mod.weight.shape[1]
          mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (1.0 / fan_in)**0.5)
        mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
  return net


def state_dict_numpy(net: nn.Module, prefix: str = '') -> dict[str, np.ndarray]:
  """The state dict as numpy arrays (names optionally prefixed, e.g. 'Scale.')."""
  return {prefix + k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
