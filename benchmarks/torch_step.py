"""PyTorch side of benchmarks/step_benchmark.py: the reference DeepLab of
tests/torch_reference_nets.py (the net the weight-import parity tests compare against)
trained with the same loss and optimiser as ctt-jax's supervised step."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.bench_utils import BATCH, make_batch
from tests import torch_reference_nets as ref


def reference_net(config) -> torch.nn.Module:
  """The torch.nn DeepLab of `config.model` with random weights and BN statistics."""
  m = config.model
  net = ref.DeepLab(m.name, config.num_classes, m.backbone, m.layout, int(m.output_stride),
                    float(m.width_multiplier), int(m.feature_dim), int(m.projection_dim))
  return ref.randomize_(net)


def freeze_batch_norm_(net: torch.nn.Module):
  """Frozen BN as in the paper config: running statistics, no affine updates."""
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.eval()
      for p in module.parameters():
        p.requires_grad_(False)


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
    batch = make_batch(size, config.num_classes)['labeled']
    mean = np.asarray(config.image_mean, np.float32) * 255.0
    std = np.asarray(config.image_std, np.float32) * 255.0
    images = (batch['image'].astype(np.float32) - mean) / std
    self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    self.labels = torch.from_numpy(batch['label'].astype(np.int64))
    self.ignore = int(config.ignore_label)
    self.rss_growth = None

  def run(self):
    logits, _ = self.net(self.images)
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
