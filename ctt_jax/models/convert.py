"""Converts pretrained PyTorch weights into the `.npz` of Flax variables `load_pretrained`
reads (`model.pretrained=FILE.npz`).

    python -m ctt_jax.models.convert --input DeepLab_resnet_pretrained_init-f81d91e8.pth \\
        --output deeplabv2_r101_coco.npz --backbone resnet101 --layout caffe

Inputs: `.pth`/`.pt`/`.bin`/`.ckpt` (PyTorch pickles; torch is imported only for these,
loaded with `weights_only=True`), `.safetensors` and `.npz` with PyTorch names. Without
`--head` only the backbone is converted (non-backbone entries such as `fc.*` or DeepLabV2's
`layer5.*` are ignored); with `--head NAME` the whole network is, and the checkpoint must
hold this project's head names (docs/MODELS.md), or with `--head deeplabv2
--deeplabv2-head aspp_se` the CTT authors' `layer5.*` (Classifier_Module2) names:

    python -m ctt_jax.models.convert --input checkpoint-iter80000.pth --output ctt.npz \\
        --backbone resnet101 --layout caffe --head deeplabv2 --deeplabv2-head aspp_se \\
        --bgr-to-rgb

(their checkpoints hold the student under 'model', which is what is read, and the teacher
under 'ema_model'). The output keys are flattened Flax paths
('params/backbone/conv1/kernel', ...) plus 'meta/backbone' and 'meta/layout', which
`load_pretrained` checks against the config.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

import ml_collections
import numpy as np

from ctt_jax.models import weights
from ctt_jax.models.resnet import DEPTHS, LAYOUTS

TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt')
# Checkpoint dicts often wrap the state dict under one of these keys.
WRAPPER_KEYS = ('state_dict', 'model', 'model_state', 'model_state_dict')


def read_torch_pickle(path: str) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch checkpoint as numpy float32 arrays, unwrapped."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f'Reading {path!r} needs PyTorch (`pip install torch`), or convert '
                     'it to .safetensors elsewhere.') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pickle, zip and weights_only errors have no common base
    raise ValueError(f'Could not read {path!r} as a PyTorch checkpoint: '
                     f'{type(e).__name__}: {e}') from e
  while isinstance(obj, Mapping):
    wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
    if wrapper is None:
      break
    obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path!r} holds a {type(obj).__name__}, not a state dict.')
  arrays = {}
  for name, value in obj.items():
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      arrays[name] = (value.float() if value.is_floating_point() else value).numpy()
  if not arrays:
    raise ValueError(f'{path!r} contains no tensors (top-level keys: {list(obj)[:10]}).')
  return arrays


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Name -> array from a PyTorch pickle, `.safetensors` or `.npz` file."""
  if not os.path.isfile(path):
    raise ValueError(f'Input file {path!r} does not exist.')
  if path.lower().endswith(TORCH_SUFFIXES):
    return read_torch_pickle(path)
  if path.lower().endswith(('.safetensors', '.npz')):
    return weights.read_arrays(path)
  raise ValueError(f'Unknown input format {path!r}: expected one of '
                   f'{", ".join(TORCH_SUFFIXES)}, .safetensors, .npz.')


def model_config_for(backbone: str, layout: str, head: str | None, width_multiplier: float,
                     feature_dim: int, projection_dim: int,
                     deeplabv2_head: str = 'bottleneck') -> ml_collections.ConfigDict:
  """The `model` config keys conversion needs (a subset of configs/common.py)."""
  return ml_collections.ConfigDict(dict(
      name=head or 'deeplabv2', head=deeplabv2_head, head_init='paper', backbone=backbone,
      layout=layout,
      output_stride=8,
      width_multiplier=width_multiplier, feature_dim=feature_dim,
      projection_dim=projection_dim, freeze_bn=True, dtype='float32', conv_impl='xla',
      remat='',
      skip_head=head is None))


def flip_input_channels(variables: dict) -> dict:
  """Reverses the input channels of the first convolution (BGR <-> RGB), in place.

  Exact: the network then computes on RGB images what it computed on BGR ones.
  """
  backbone = variables['params']['backbone']
  first = backbone['conv1'] if 'conv1' in backbone else backbone['stem_conv1']
  first['kernel'] = np.ascontiguousarray(first['kernel'][:, :, ::-1, :])
  return variables


def convert(input_path: str, output_path: str, model_config: ml_collections.ConfigDict,
            num_classes: int | None = None, bgr_to_rgb: bool = False) -> dict:
  """Converts `input_path` and writes `output_path` (.npz). Returns the variables.

  `bgr_to_rgb`: the checkpoint was trained on BGR images (the Caffe-converted DeepLabV2
  files); flip its first conv so it reads this project's RGB images.
  """
  if not output_path.endswith('.npz'):
    raise ValueError(f'--output must end in .npz, got {output_path!r}.')
  arrays = read_checkpoint(input_path)
  flat_keys = [k for k in arrays if k.startswith(('params/', 'batch_stats/'))]
  if flat_keys:
    raise ValueError(f'{input_path!r} already holds Flax variables ({flat_keys[0]}, ...); '
                     'use it directly as model.pretrained.')
  variables = weights.from_torch_state_dict(arrays, model_config, num_classes,
                                            skip_head=model_config.skip_head)
  if bgr_to_rgb:
    variables = flip_input_channels(variables)
  flat = weights.flatten_variables(variables)
  flat['meta/input_channels_flipped'] = np.array(str(bool(bgr_to_rgb)).lower())
  flat['meta/backbone'] = np.array(model_config.backbone)
  flat['meta/layout'] = np.array(model_config.layout)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  np.savez(output_path, **flat)
  return variables


def main(argv: list[str] | None = None):
  parser = argparse.ArgumentParser(
      prog='python -m ctt_jax.models.convert',
      description='Convert PyTorch ResNet/DeepLab weights to a Flax .npz (docs/MODELS.md).')
  parser.add_argument('--input', required=True, help='.pth/.pt/.bin/.ckpt, .safetensors '
                      'or .npz with PyTorch names')
  parser.add_argument('--output', required=True, help='output .npz')
  parser.add_argument('--backbone', required=True, choices=list(DEPTHS))
  parser.add_argument('--layout', required=True, choices=list(LAYOUTS))
  parser.add_argument('--head', choices=['deeplabv2', 'deeplabv3plus'], default=None,
                      help='also convert this head (default: backbone only)')
  parser.add_argument('--deeplabv2-head', choices=['bottleneck', 'aspp_se'],
                      default='bottleneck',
                      help='with --head deeplabv2: this project\'s bottleneck head, or ctt '
                      '(the CTT authors\' layer5 names; model.head=aspp_se)')
  parser.add_argument('--num-classes', type=int, default=None,
                      help='head classes (default: read from the checkpoint)')
  parser.add_argument('--width-multiplier', type=float, default=1.0)
  parser.add_argument('--feature-dim', type=int, default=256)
  parser.add_argument('--projection-dim', type=int, default=0)
  parser.add_argument('--bgr-to-rgb', action='store_true',
                      help='the checkpoint expects BGR input (Caffe DeepLabV2 files): flip '
                      'the first conv to read RGB (see docs/MODELS.md on input scaling)')
  args = parser.parse_args(argv)
  config = model_config_for(args.backbone, args.layout, args.head, args.width_multiplier,
                            args.feature_dim, args.projection_dim, args.deeplabv2_head)
  try:
    variables = convert(args.input, args.output, config, args.num_classes, args.bgr_to_rgb)
  except ValueError as e:
    sys.exit(f'error: {e}')
  count = sum(v.size for v in weights.flatten_variables(variables).values())
  print(f'Wrote {args.output}: {count:,} values ('
        f'{"backbone and " + args.head if args.head else "backbone only"}). Use it with '
        f'model.pretrained={args.output},model.backbone={args.backbone},'
        f'model.layout={args.layout}'
        + (',model.skip_head=false' if args.head else ',model.skip_head=true')
        + (',model.head=aspp_se' if args.head == 'deeplabv2' and args.deeplabv2_head == 'aspp_se'
           else ''))


if __name__ == '__main__':
  main()
