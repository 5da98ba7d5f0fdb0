"""Pretrained weights: PyTorch state dicts -> Flax variables, loading and merging.

Flax variables here are `{'params': ..., 'batch_stats': ...}` nested dicts. Every Flax
variable has one PyTorch name (`torch_name`):

    backbone/conv1/kernel                 conv1.weight                (OIHW -> HWIO)
    backbone/layer3_5/bn2/scale, bias     layer3.5.bn2.weight, .bias
    backbone/layer3_5/bn2/{mean,var}      layer3.5.bn2.running_mean, .running_var
    backbone/layer2_0/downsample_conv     layer2.0.downsample.0
    backbone/layer2_0/downsample_bn       layer2.0.downsample.1
    backbone/stem_conv1, stem_bn1, ...    v1c: stem.0, stem.1, stem.3, stem.4, stem.6, stem.7
                                          deepbase: conv1.0, conv1.1, conv1.3, conv1.4,
                                          conv1.6, bn1
    <head path> (aspp/b1/conv, ...)       the same path joined by '.' (aspp.b1.conv.weight)
    head/... (DeepLabV2, model.head=aspp_se)  the CTT authors' `layer5` (Classifier_Module2):
      head/branch{i}/conv, gn             layer5.conv2d_list.{i}.0, layer5.conv2d_list.{i}.1
      head/se/fc1, fc2                    layer5.bottleneck.0.se.0, .se.2 (Linear: [out, in]
                                          -> kernel [in, out])
      head/fuse/conv, gn                  layer5.bottleneck.1, layer5.bottleneck.2
      head/classifier                     layer5.head.1 (no bias)

Checkpoint names may carry `module.` (DataParallel), `Scale.` (the DeepLabV2 COCO
checkpoint) or `backbone.` (mmseg/UniMatch segmentors) prefixes; they are stripped.
`num_batches_tracked` entries are ignored.

Heads: with `skip_head` only the backbone is converted and every non-backbone entry of the
checkpoint (`fc.*`, DeepLabV2's `layer5.*`, decoder heads) is ignored; the head keeps its
random init. Without it every variable must be present with the right shape.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

BACKBONE_ROOTS = ('conv1', 'bn1', 'stem', 'layer1', 'layer2', 'layer3', 'layer4')
STRIP_PREFIXES = ('module.', 'Scale.', 'backbone.')
_STEM_NAMES = {
    'v1c': {'stem_conv1': 'stem.0', 'stem_bn1': 'stem.1', 'stem_conv2': 'stem.3',
            'stem_bn2': 'stem.4', 'stem_conv3': 'stem.6', 'stem_bn3': 'stem.7'},
    'deepbase': {'stem_conv1': 'conv1.0', 'stem_bn1': 'conv1.1', 'stem_conv2': 'conv1.3',
                 'stem_bn2': 'conv1.4', 'stem_conv3': 'conv1.6', 'stem_bn3': 'bn1'},
}
# The CTT authors' head: our module path under `head` -> their name (branches: torch_name).
_CTT_HEAD_NAMES = {('se', 'fc1'): 'layer5.bottleneck.0.se.0',
                   ('se', 'fc2'): 'layer5.bottleneck.0.se.2',
                   ('fuse', 'conv'): 'layer5.bottleneck.1',
                   ('fuse', 'gn'): 'layer5.bottleneck.2',
                   ('classifier',): 'layer5.head.1'}
_LEAF_NAMES = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
               ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
               ('batch_stats', 'var'): 'running_var'}
_MAX_LISTED = 40  # names listed per kind of problem in one error message


def torch_name(collection: str, path: tuple[str, ...], layout: str) -> str:
  """The PyTorch state-dict name of the Flax variable `collection`/`path`."""
  *modules, leaf = path
  if modules[0] == 'backbone':
    renamed = []
    for m in modules[1:]:
      m = _STEM_NAMES.get(layout, {}).get(m, m)
      m = re.sub(r'^(layer\d)_(\d+)$', r'\1.\2', m)
      m = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(m, m)
      renamed.append(m)
    modules = renamed
  elif modules[0] == 'head':  # the CTT authors' DeepLabV2 head
    branch = re.fullmatch(r'branch(\d+)', modules[1])
    if branch:
      index = {'conv': 0, 'gn': 1}[modules[2]]
      modules = [f'layer5.conv2d_list.{branch.group(1)}.{index}']
    else:
      modules = [_CTT_HEAD_NAMES[tuple(modules[1:])]]
  return '.'.join(modules + [_LEAF_NAMES[(collection, leaf)]])


def is_backbone_name(name: str) -> bool:
  """Whether a (prefix-stripped) checkpoint name belongs to a ResNet backbone."""
  return name.split('.')[0] in BACKBONE_ROOTS


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Strips known prefixes, drops `num_batches_tracked`, converts values to numpy."""
  out = {}
  for name, value in state_dict.items():
    if name.endswith('num_batches_tracked'):
      continue
    stripped = name
    while stripped.startswith(STRIP_PREFIXES):
      stripped = stripped.split('.', 1)[1]
    if stripped in out:
      raise ValueError(f'Checkpoint names {name!r} and another entry both map to '
                       f'{stripped!r} once prefixes {STRIP_PREFIXES} are stripped.')
    if hasattr(value, 'detach'):  # a torch.Tensor passed directly
      value = value.detach().cpu()
      value = value.float() if value.is_floating_point() else value
      value = value.numpy()
    out[stripped] = np.asarray(value)
  return out


def build_model(model_config: ml_collections.ConfigDict, num_classes: int):
  """The DeepLab of `model_config` (lazy import: deeplab imports nothing from here)."""
  from ctt_jax.models import deeplab  # pylint: disable=g-import-not-at-top
  if model_config.name not in ('deeplabv2', 'deeplabv3plus'):
    raise ValueError(f'Pretrained weights are supported for model.name deeplabv2 and '
                     f'deeplabv3plus, not {model_config.name!r}.')
  return deeplab.build_deeplab(model_config, num_classes)


def variable_shapes(model_config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """`{'params', 'batch_stats'}` of ShapeDtypeStructs, without computing anything."""
  model = build_model(model_config, num_classes)
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda rng, x: model.init(rng, x, train=False),
                        jax.random.key(0), images)


def _infer_num_classes(names: Mapping[str, np.ndarray], model_config) -> int:
  if model_config.name == 'deeplabv3plus':
    key = 'classifier.bias'
  elif model_config.head == 'aspp_se':
    key = 'layer5.head.1.weight'
  else:
    key = 'classifier.conv0.bias'
  if key not in names:
    raise ValueError(f'Cannot infer the number of classes: the checkpoint has no {key!r}. '
                     'Pass num_classes, or skip_head=True to import only the backbone.')
  return int(names[key].shape[0])


def _problems_message(what: str, missing, unexpected, mismatched, hint: str) -> str:
  def listing(title, items):
    if not items:
      return ''
    items = sorted(items)
    shown = '\n    '.join(items[:_MAX_LISTED])
    more = f'\n    ... and {len(items) - _MAX_LISTED} more' if len(items) > _MAX_LISTED else ''
    return f'\n  {title} ({len(items)}):\n    {shown}{more}'
  return (f'{what} does not match the model:'
          + listing('missing from the checkpoint', missing)
          + listing('in the checkpoint but not used by the model', unexpected)
          + listing('shape mismatch (checkpoint vs model)', mismatched)
          + '\n' + hint)


def _hint(skip_head: bool) -> str:
  return ('Check model.backbone, model.layout and model.width_multiplier'
          + ('.' if skip_head else ', or set skip_head=True to import the backbone only.'))


def from_torch_state_dict(state_dict: Mapping[str, Any],
                          model_config: ml_collections.ConfigDict,
                          num_classes: int | None = None,
                          *, skip_head: bool | None = None) -> dict:
  """Converts PyTorch names -> arrays into Flax `{'params', 'batch_stats'}` (numpy).

  Args:
    state_dict: PyTorch names -> arrays (numpy or torch tensors), see module docstring.
    model_config: the `model` config (name, backbone, layout, width_multiplier, ...).
    num_classes: classes of the head; inferred from the checkpoint when None.
    skip_head: convert only `backbone` and ignore non-backbone entries; default
      `model_config.skip_head`.
  Returns:
    Nested dicts of float32 numpy arrays: only the backbone subtree when skip_head.
  Raises:
    ValueError listing every missing, unused and mismatched name.
  """
  if skip_head is None:
    skip_head = bool(model_config.skip_head)
  names = normalize_state_dict(state_dict)
  if num_classes is None:
    num_classes = 1 if skip_head else _infer_num_classes(names, model_config)
  template = variable_shapes(model_config, num_classes)

  out, used, missing, mismatched = {}, set(), [], []
  for collection in ('params', 'batch_stats'):
    for path, leaf in flax.traverse_util.flatten_dict(template[collection]).items():
      if skip_head and path[0] != 'backbone':
        continue
      name = torch_name(collection, path, model_config.layout)
      if name not in names:
        missing.append(name)
        continue
      used.add(name)
      value = names[name]
      if path[-1] == 'kernel' and value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
      elif path[-1] == 'kernel' and value.ndim == 2:
        value = value.T  # Linear [out, in] -> Dense [in, out]
      if value.shape != leaf.shape:
        expected = leaf.shape
        if path[-1] == 'kernel' and len(expected) == 4:
          expected = tuple(expected[i] for i in (3, 2, 0, 1))  # in PyTorch's OIHW
        elif path[-1] == 'kernel' and len(expected) == 2:
          expected = expected[::-1]
        mismatched.append(f'{name}: {tuple(names[name].shape)} vs {expected}')
        continue
      out[(collection,) + path] = value.astype(np.float32)
  unexpected = [n for n in names if n not in used and (is_backbone_name(n) or not skip_head)]
  if missing or unexpected or mismatched:
    raise ValueError(_problems_message('The PyTorch state dict', missing, unexpected,
                                       mismatched, _hint(skip_head)))
  variables = flax.traverse_util.unflatten_dict(out)
  variables.setdefault('batch_stats', {})
  return variables


def flatten_variables(variables: Mapping) -> dict[str, np.ndarray]:
  """{'params': {'backbone': {...}}} -> {'params/backbone/...': array} (numpy)."""
  flat = flax.traverse_util.flatten_dict(dict(variables), sep='/')
  return {k: np.asarray(v) for k, v in flat.items()}


def unflatten_variables(flat: Mapping[str, Any]) -> dict:
  """Inverse of `flatten_variables`."""
  return flax.traverse_util.unflatten_dict({k: np.asarray(v) for k, v in flat.items()},
                                           sep='/')


def _check_meta(meta: Mapping[str, str], model_config, path: str):
  """Converted files record backbone and layout: the same shapes with another layout
  (torchvision vs caffe) would load silently but compute something else."""
  for key in ('backbone', 'layout'):
    if key in meta and meta[key] != model_config[key]:
      raise ValueError(
          f'{path} was converted for model.{key}={meta[key]} but the config has '
          f'model.{key}={model_config[key]}. Set model.{key}={meta[key]} or convert the '
          f'original checkpoint again with --{key} {model_config[key]}.')


def _from_named_arrays(arrays: Mapping[str, np.ndarray], model_config, path: str,
                       num_classes: int | None, skip_head: bool | None) -> dict:
  """Arrays keyed either by flattened Flax paths ('params/...') or by PyTorch names."""
  meta = {k[len('meta/'):]: str(v) for k, v in arrays.items() if k.startswith('meta/')}
  arrays = {k: v for k, v in arrays.items() if not k.startswith('meta/')}
  if any(k.startswith(('params/', 'batch_stats/')) for k in arrays):
    _check_meta(meta, model_config, path)
    return unflatten_variables(arrays)
  return from_torch_state_dict(arrays, model_config, num_classes, skip_head=skip_head)


def load_pretrained(path: str, model_config: ml_collections.ConfigDict,
                    num_classes: int | None = None, *,
                    skip_head: bool | None = None) -> dict:
  """Reads pretrained variables for `model_config` from `path`.

  Formats: `.npz` written by `python -m ctt_jax.models.convert` (keys 'params/...',
  'batch_stats/...') or holding PyTorch names; `.safetensors` (PyTorch names); an orbax
  checkpoint directory holding `{'params', 'batch_stats'}`. PyTorch pickles (`.pth`) must
  be converted first. Merge the result into initialised variables with `merge_pretrained`.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'model.pretrained={path!r} does not exist; convert weights '
                            'with `python -m ctt_jax.models.convert` (docs/MODELS.md).')
  if os.path.isdir(path):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    restored = ocp.PyTreeCheckpointer().restore(os.path.abspath(path))
    if not isinstance(restored, Mapping) or 'params' not in restored:
      raise ValueError(f'The orbax checkpoint {path} has no top-level "params"; expected '
                       '{"params": ..., "batch_stats": ...}.')
    return {'params': restored['params'], 'batch_stats': restored.get('batch_stats', {})}
  return _from_named_arrays(read_arrays(path), model_config, path, num_classes, skip_head)


def pretrained_paths(pretrained: str, num_pairs: int) -> list[str]:
  """The checkpoint of each pair from `model.pretrained`: one path for every pair, or one
  per pair, comma-separated (in a config argument inside brackets, `(a.npz,b.npz)`, so
  the comma is not read as the next override). [] when empty."""
  text = pretrained.strip().strip('()[]')
  if not text:
    return []
  paths = [p.strip() for p in text.split(',')]
  if len(paths) == 1:
    return paths * num_pairs
  if len(paths) != num_pairs or not all(paths):
    raise ValueError(f'model.pretrained names {len(paths)} checkpoints for {num_pairs} '
                     'pairs; give one checkpoint for every pair or one per pair, '
                     'comma-separated.')
  return paths


def input_channels_flipped(path: str) -> bool:
  """Whether `path` is a converted .npz whose first conv was flipped by --bgr-to-rgb."""
  if not path.lower().endswith('.npz') or not os.path.isfile(path):
    return False
  with np.load(path, allow_pickle=False) as data:
    return ('meta/input_channels_flipped' in data.files
            and str(data['meta/input_channels_flipped']) == 'true')


def read_arrays(path: str) -> dict[str, np.ndarray]:
  """Name -> numpy array from an `.npz` or `.safetensors` file (clear error otherwise)."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in ('.npz', '.safetensors'):
    raise ValueError(
        f'Cannot read {path!r} directly: convert it to .npz first with `python -m '
        'ctt_jax.models.convert --input ... --output ....npz` (docs/MODELS.md).')
  try:
    if suffix == '.npz':
      with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return load_file(path)
  except Exception as e:  # zipfile, safetensors and OS errors have no common base
    raise ValueError(f'Could not read {path!r} as a {suffix} file: '
                     f'{type(e).__name__}: {e}') from e


def _to_like(value, like):
  """`value` as an array of `like`'s dtype, on `like`'s devices when it is a jax.Array."""
  value = np.asarray(value).astype(like.dtype)
  if isinstance(like, jax.Array) and not isinstance(like, jax.core.Tracer):
    return jax.device_put(value, like.sharding)
  if isinstance(like, jax.ShapeDtypeStruct):
    return value
  return jnp.asarray(value)


def merge_pretrained(init_variables: Mapping, pretrained_variables: Mapping,
                     skip_head: bool) -> dict:
  """`init_variables` with the pretrained values written over them.

  With `skip_head`, only the `backbone` subtree is taken (and required); the head keeps
  its init. Otherwise every variable must be present. Values take the dtype (and, for
  jax.Arrays, the sharding) of the init values. Call it outside jit, so the pretrained
  arrays are not baked into a program as constants.
  Raises a ValueError listing missing, unexpected and mismatched entries.
  """
  selected = lambda path: not skip_head or path[0] == 'backbone'
  merged, missing, unexpected, mismatched = {}, [], [], []
  for collection in pretrained_variables:
    if collection not in init_variables:
      unexpected.append(f'{collection}/ (collection)')
  for collection, tree in init_variables.items():
    init_flat = flax.traverse_util.flatten_dict(dict(tree))
    pre_flat = flax.traverse_util.flatten_dict(dict(pretrained_variables.get(collection, {})))
    for path in pre_flat:
      if selected(path) and path not in init_flat:
        unexpected.append(f'{collection}/{"/".join(path)}')
    out = {}
    for path, leaf in init_flat.items():
      key = f'{collection}/{"/".join(path)}'
      if not selected(path):
        out[path] = leaf
      elif path not in pre_flat:
        missing.append(key)
      elif np.shape(pre_flat[path]) != tuple(leaf.shape):
        mismatched.append(f'{key}: {np.shape(pre_flat[path])} vs {tuple(leaf.shape)}')
      else:
        out[path] = _to_like(pre_flat[path], leaf)
    merged[collection] = flax.traverse_util.unflatten_dict(out)
  if missing or unexpected or mismatched:
    raise ValueError(_problems_message('The pretrained variables', missing, unexpected,
                                       mismatched, _hint(skip_head)))
  return merged
