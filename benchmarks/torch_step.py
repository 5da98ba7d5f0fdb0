"""PyTorch side of benchmarks/step_benchmark.py: the reference DeepLab of
tests/torch_reference_nets.py (the nets the weight-import parity tests compare against)
trained with the same loss and optimiser as ctt-jax's supervised step.

`model.head='aspp_se'` (the Cityscapes config's) is the CTT authors' `Classifier_Module2`
on the caffe ResNet (the torch copy tests/test_ctt_head.py checks ctt-jax against);
'bottleneck' is the reference `DeepLab`'s 1x1 conv-BN-ReLU + ASPP-V2.
`assert_same_network` compares the trainable parameter counts of both sides."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import bench_utils
from benchmarks.bench_utils import BATCH, make_batch
from ctt_jax.models import ctt_head
from tests import torch_reference_nets as ref


class CTTDeepLab(torch.nn.Module):
  """DeepLabV2 with the authors' head: `backbone` (reference ResNet) and `head`
  (`Classifier_Module2`, widths and GroupNorm groups as ctt_jax/models/ctt_head.py), the
  split of ctt-jax's learning-rate groups. forward(x) -> (logits, features), NCHW."""

  def __init__(self, m, num_classes: int):
    super().__init__()
    self.backbone = ref.ResNet(m.backbone, m.layout, int(m.output_stride),
                               float(m.width_multiplier))
    branch, features = ref.width(256, float(m.width_multiplier)), int(m.feature_dim)
    rates = list(ctt_head.RATES)
    self.head = ref.Classifier_Module2(
        self.backbone.out_channels, rates, rates, num_classes, branch, features,
        ctt_head.group_norm_groups(branch), ctt_head.group_norm_groups(features))
    self.projection = (ref.Projection(features, int(m.projection_dim))
                       if m.projection_dim else None)

  def forward(self, x, features: bool = True):
    out = self.head(self.backbone(x)[1], get_feat=features)
    if not features:  # the supervised step: ctt-jax's compiled step drops the features too
      return out['out'], None
    features = out['feat'] if self.projection is None else self.projection(out['feat'])
    return out['out'], features


def reference_net(config) -> torch.nn.Module:
  """The torch.nn DeepLab of `config.model` with random weights and BN statistics."""
  m = config.model
  if m.name == 'deeplabv2' and m.head == 'aspp_se':
    net = CTTDeepLab(m, config.num_classes)
  elif m.name == 'deeplabv2' and m.head != 'bottleneck':
    raise ValueError(f'No PyTorch reference for model.head={m.head!r}.')
  else:  # the reference DeepLab's 'deeplabv2' is the bottleneck head
    net = ref.DeepLab(m.name, config.num_classes, m.backbone, m.layout,
                      int(m.output_stride), float(m.width_multiplier), int(m.feature_dim),
                      int(m.projection_dim))
  return ref.randomize_(net)


def trainable_parameter_count(net: torch.nn.Module) -> int:
  return sum(p.numel() for p in net.parameters() if p.requires_grad)


def assert_same_network(config, torch_net: torch.nn.Module) -> int:
  """Raises AssertionError (one sentence) unless ctt-jax's student and `torch_net` (frozen
  BN already applied) train the same number of parameters; returns that number."""
  jax_count = bench_utils.trainable_parameter_count(config)
  torch_count = trainable_parameter_count(torch_net)
  if jax_count != torch_count:
    m = config.model
    raise AssertionError(
        f'ctt-jax and PyTorch would benchmark different networks: {jax_count:,} vs '
        f'{torch_count:,} trainable parameters for {m.name}/{m.head} on {m.backbone} '
        f'x{m.width_multiplier} (freeze_bn={m.freeze_bn}).')
  return jax_count


def freeze_batch_norm_(net: torch.nn.Module):
  """Frozen BN as in the paper config: running statistics, no affine updates."""
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.eval()
      for p in module.parameters():
        p.requires_grad_(False)


def torch_batch(config, size, seed: int = 0):
  """(images [B, 3, H, W] float32, labels [B, H, W] int64): bench_utils.make_batch's
  labeled half, normalised as ctt-jax's step does (x / 255 - mean) / std, channels in
  `config.image_channel_order`."""
  batch = make_batch(size, config.num_classes, seed)['labeled']
  mean = np.asarray(config.image_mean, np.float32)
  std = np.asarray(config.image_std, np.float32)
  images = (batch['image'].astype(np.float32) / np.float32(255.0) - mean) / std
  if config.image_channel_order == 'bgr':
    images = images[..., ::-1]
  return (torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
          torch.from_numpy(batch['label'].astype(np.int64)))


class TorchStep:
  """One supervised step: forward [B, 3, H, W], logits upsampled bilinearly to the label
  size (align_corners=False, as ctt-jax), cross-entropy ignoring 255, backward, and SGD
  with momentum and weight decay, the head at `head_lr_mult` x the backbone's rate."""

  def __init__(self, config, size, seed: int = 0):
    torch.manual_seed(seed)
    self.net = reference_net(config).train()
    if config.model.freeze_bn:
      freeze_batch_norm_(self.net)
    trainable = lambda module: [p for p in module.parameters() if p.requires_grad]
    head = [p for name, module in self.net.named_children() if name != 'backbone'
            for p in trainable(module)]
    self.optimizer = torch.optim.SGD(
        [{'params': trainable(self.net.backbone), 'lr': config.lr},
         {'params': head, 'lr': config.lr * config.head_lr_mult}],
        lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    self.images, self.labels = torch_batch(config, size)
    self.ignore = int(config.ignore_label)
    self.rss_growth = None
    self.trainable_params = trainable_parameter_count(self.net)

  def run(self):
    logits, _ = (self.net(self.images, features=False) if isinstance(self.net, CTTDeepLab)
                 else self.net(self.images))
    logits = F.interpolate(logits, self.labels.shape[-2:], mode='bilinear',
                           align_corners=False)
    loss = F.cross_entropy(logits, self.labels, ignore_index=self.ignore)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss.item()


class TorchEval:
  """Forward pass in eval mode (no autograd), batch 2."""

  def __init__(self, config, size):
    self.net = reference_net(config).eval()
    self.batch_size = BATCH
    rng = np.random.default_rng(0)
    self.images = torch.from_numpy(rng.normal(size=(BATCH, 3, *size)).astype(np.float32))
    self.rss_growth = None

  def run(self):
    with torch.inference_mode():
      self.net(self.images)
