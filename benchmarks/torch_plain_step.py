"""A plain PyTorch step of the benchmark's network, written the way the CTT authors' code
writes it, to check how fast the benchmark's PyTorch side (benchmarks/torch_step.py) is.

The network is the authors' `model/deeplabv2.py` (1181110317/SSL_CTT): `ResNet101` with
caffe `Bottleneck`s (stride on the 1x1, `nn.ReLU(inplace=True)`, `out += residual`) and
`Classifier_Module2` as `layer5`, called as `model(x)` is in a training loop that only
needs the logits (`self.head(out)`: no feature normalisation); widths, GroupNorm groups,
depth and the dropout rate are parameters so the tests can build a small one. The step is
what a plain training loop does: bilinear upsampling of the logits to the label size
(align_corners=False), cross-entropy ignoring 255, `zero_grad`, `backward`, and
`torch.optim.SGD` with momentum and weight decay, the head (`layer5`) at `head_lr_mult` x
the backbone's rate, batch norm frozen (running statistics, no affine updates).

The weights are the reference net's (`load_reference`), so the first loss and the first
update are the benchmark's PyTorch side's and ctt-jax's (tests/test_bench_protocol.py).

    python benchmarks/torch_plain_step.py --size 256x512 --steps 8   # both PyTorch steps, alone
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _width(c: int, m: float) -> int:
  return max(1, int(round(c * m)))


class Bottleneck(nn.Module):
  """The authors' caffe bottleneck: stride on conv1, ReLUs in place, residual added in place."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=dilation,
                           bias=False, dilation=dilation)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    residual = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.downsample is not None:
      residual = self.downsample(x)
    out += residual
    return self.relu(out)


class SEBlock(nn.Module):
  def __init__(self, inplanes, r=16):
    super().__init__()
    self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
    self.se = nn.Sequential(nn.Linear(inplanes, inplanes // r), nn.ReLU(inplace=True),
                            nn.Linear(inplanes // r, inplanes), nn.Sigmoid())

  def forward(self, x):
    xx = self.global_pool(x)
    xx = xx.view(xx.size(0), xx.size(1))
    return x.mul(self.se(xx).unsqueeze(-1).unsqueeze(-1))


class Classifier_Module2(nn.Module):  # pylint: disable=invalid-name
  """The authors' head, called without get_feat: branches concatenated one by one, SE,
  3x3 conv + GroupNorm, Dropout2d, 1x1 classifier."""

  def __init__(self, inplanes, rates, num_classes, branch=256, features=256,
               branch_groups=32, feature_groups=32, droprate=0.0):
    super().__init__()
    self.conv2d_list = nn.ModuleList()
    self.conv2d_list.append(nn.Sequential(
        nn.Conv2d(inplanes, branch, kernel_size=1, bias=True),
        nn.GroupNorm(branch_groups, branch), nn.ReLU(inplace=True)))
    for rate in rates:
      self.conv2d_list.append(nn.Sequential(
          nn.Conv2d(inplanes, branch, kernel_size=3, padding=rate, dilation=rate, bias=True),
          nn.GroupNorm(branch_groups, branch), nn.ReLU(inplace=True)))
    concat = branch * (len(rates) + 1)
    self.bottleneck = nn.Sequential(
        SEBlock(concat), nn.Conv2d(concat, features, kernel_size=3, padding=1, bias=True),
        nn.GroupNorm(feature_groups, features))
    self.head = nn.Sequential(nn.Dropout2d(droprate),
                              nn.Conv2d(features, num_classes, kernel_size=1, bias=False))

  def forward(self, x):
    out = self.conv2d_list[0](x)
    for i in range(len(self.conv2d_list) - 1):
      out = torch.cat((out, self.conv2d_list[i + 1](x)), 1)
    return self.head(self.bottleneck(out))


class ResNetDeepLab(nn.Module):
  """The authors' `ResNet101` (caffe stem, ceil-mode max pool, layer3 and layer4 dilated 2
  and 4) with `layer5 = Classifier_Module2`; forward(x) -> logits, NCHW."""

  def __init__(self, num_classes, layers=(3, 4, 23, 3), m=1.0, rates=(6, 12, 18, 24),
               feature_dim=256, branch_groups=32, feature_groups=32, droprate=0.0):
    super().__init__()
    self.inplanes = _width(64, m)
    self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(self.inplanes)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    self.layer1 = self._make_layer(_width(64, m), layers[0])
    self.layer2 = self._make_layer(_width(128, m), layers[1], stride=2)
    self.layer3 = self._make_layer(_width(256, m), layers[2], dilation=2)
    self.layer4 = self._make_layer(_width(512, m), layers[3], dilation=4)
    self.layer5 = Classifier_Module2(self.inplanes, rates, num_classes, _width(256, m),
                                     feature_dim, branch_groups, feature_groups, droprate)

  def _make_layer(self, planes, blocks, stride=1, dilation=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * 4 or dilation in (2, 4):
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
          nn.BatchNorm2d(planes * 4))
    layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
    self.inplanes = planes * 4
    layers += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.layer5(x)

  def backbone_parameters(self):
    return [p for name, p in self.named_parameters()
            if not name.startswith('layer5.') and p.requires_grad]

  def head_parameters(self):
    return [p for p in self.layer5.parameters() if p.requires_grad]


def freeze_batch_norm_(net: nn.Module):
  """Running statistics, no affine updates (the paper config's frozen BN)."""
  for module in net.modules():
    if isinstance(module, nn.BatchNorm2d):
      module.eval()
      for p in module.parameters():
        p.requires_grad_(False)


def reference_state_dict(reference: nn.Module) -> dict:
  """The state dict of the benchmark's reference net (torch_step.CTTDeepLab: `backbone.*`
  and `head.*`) under this module's names (the authors': `conv1.*` .. `layer5.*`)."""
  out = {}
  for name, value in reference.state_dict().items():
    out[name.replace('backbone.', '', 1) if name.startswith('backbone.')
        else 'layer5.' + name.removeprefix('head.')] = value
  return out


def _unsupported(model_config) -> str:
  """Why the plain step cannot build `model_config` ('' if it can)."""
  # pylint: disable-next=g-import-not-at-top
  from ctt_jax.models import resnet
  m = model_config
  kind = resnet.DEPTHS.get(m.backbone, ('?',))[0]
  if (m.name, m.head, m.layout, int(m.output_stride), kind, int(m.projection_dim)) != (
      'deeplabv2', 'aspp_se', 'caffe', 8, 'bottleneck', 0):
    return ('The plain step is the authors\' DeepLabV2 (caffe bottleneck ResNet, output '
            'stride 8, model.head=aspp_se, no projection), not '
            f'{m.name}/{m.head}/{m.layout}/{m.output_stride}/{m.backbone}.')
  return ''


def supports(config) -> bool:
  return not _unsupported(config.model)


def plain_net(config, reference: nn.Module | None = None, droprate: float = 0.0):
  """The plain net of `config.model` (DeepLabV2, caffe, output stride 8, 'aspp_se' head,
  a bottleneck ResNet), with the reference net's weights when given."""
  # pylint: disable-next=g-import-not-at-top
  from ctt_jax.models import ctt_head, resnet
  m = config.model
  if _unsupported(m):
    raise ValueError(_unsupported(m))
  layers = resnet.DEPTHS[m.backbone][1]
  wm = float(m.width_multiplier)
  branch, features = _width(256, wm), int(m.feature_dim)
  net = ResNetDeepLab(config.num_classes, layers, wm, tuple(ctt_head.RATES), features,
                      ctt_head.group_norm_groups(branch),
                      ctt_head.group_norm_groups(features), droprate)
  if reference is not None:
    net.load_state_dict(reference_state_dict(reference))
  return net


class PlainStep:
  """One plain supervised step (see the module docstring), same batch as TorchStep."""

  def __init__(self, config, size, seed: int = 0, droprate: float = 0.0,
               reference: nn.Module | None = None):
    # pylint: disable-next=g-import-not-at-top
    from benchmarks import torch_step
    torch.manual_seed(seed)
    if reference is None:
      reference = torch_step.reference_net(config)
    self.net = plain_net(config, reference, droprate).train()
    freeze_batch_norm_(self.net)
    self.optimizer = torch.optim.SGD(
        [{'params': self.net.backbone_parameters(), 'lr': config.lr},
         {'params': self.net.head_parameters(), 'lr': config.lr * config.head_lr_mult}],
        lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    self.images, self.labels = torch_step.torch_batch(config, size)
    self.ignore = int(config.ignore_label)
    self.rss_growth = None
    self.trainable_params = sum(p.numel() for p in self.net.parameters() if p.requires_grad)

  def run(self):
    logits = self.net(self.images)
    logits = F.interpolate(logits, self.labels.shape[-2:], mode='bilinear',
                           align_corners=False)
    loss = F.cross_entropy(logits, self.labels, ignore_index=self.ignore)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss.item()


def main(argv=None):
  """Both PyTorch steps alone (no jax in the process), alternating under the load
  protocol: median wall time, user and system CPU time and minor page faults per step."""
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import resource  # pylint: disable=g-import-not-at-top
  import statistics  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks import bench_utils as bu  # pylint: disable=g-import-not-at-top
  from benchmarks import load_guard as lg  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=main.__doc__.split('\n')[0])
  parser.add_argument('--size', default='256x512')
  parser.add_argument('--steps', type=int, default=8, help='rounds (even)')
  parser.add_argument('--threads', type=int, default=0, help='0: every CPU it may use')
  parser.add_argument('--out', default='', help='JSON path (optional)')
  lg.add_protocol_args(parser)
  args = parser.parse_args(argv)
  if args.threads:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
  guard = lg.LoadGuard(args.others_threshold, args.priority)
  guard.enforce_priority('start')
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  config = bu.make_config({'backbone': 'resnet101', 'width_multiplier': 1.0,
                           'head': 'aspp_se'}, 'supervised', 1, 'auto', supervised_ema=False)
  size = bu.parse_size(args.size)
  reference = torch_step.TorchStep(config, size)
  runners = {'reference': reference, 'plain': PlainStep(config, size, reference=reference.net)}
  for runner in runners.values():
    runner.run()
  guard.enforce_priority('after the warm-up')
  records = {name: [] for name in runners}
  for i in range(args.steps):
    for name in bu.round_order(['', *runners], i)[1:]:  # the two swap places every round
      runner = runners[name]
      before, usage, start = guard.sample(), resource.getrusage(resource.RUSAGE_SELF), \
          time.perf_counter()
      runner.run()
      wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
      records[name].append({'wall_s': wall, 'user_s': after.ru_utime - usage.ru_utime,
                            'sys_s': after.ru_stime - usage.ru_stime,
                            'minor_faults': after.ru_minflt - usage.ru_minflt,
                            **guard.shares(before, guard.sample())})
  result = {'when': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'size': size,
            'threads': torch.get_num_threads(), 'torch': torch.__version__,
            'cpu': bu.cpu_name(), 'protocol': guard.summary(), 'steps': records}
  for name, steps in records.items():
    median = {k: statistics.median(s[k] for s in steps)
              for k in ('wall_s', 'user_s', 'sys_s', 'minor_faults', 'others_share')}
    result[name] = median
    print(f'{name:9s} wall {median["wall_s"]:.3f} s, user {median["user_s"]:.3f} s, '
          f'system {median["sys_s"]:.3f} s, {median["minor_faults"]:,.0f} minor faults, '
          f'others {median["others_share"]:.1%} (medians of {len(steps)} steps)')
  for timing in ('wall', 'user'):
    paired = bu.paired_ratio(records['reference'], records['plain'], timing)
    result[f'reference_over_plain_{timing}_paired'] = paired
    medians = result['reference'][f'{timing}_s'] / result['plain'][f'{timing}_s']
    print(f'reference / plain, {timing} time: {medians:.3f} (medians), '
          f'{bu.pairs_note(paired)}')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1, default=bu.json_default)


if __name__ == '__main__':
  main()
