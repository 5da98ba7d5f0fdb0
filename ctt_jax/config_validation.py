"""The whole config checked before anything is built, and which keys a resume may change.

    config_validation.validate(config, device_count=jax.device_count(),
                               process_count=jax.process_count())   # raises ConfigError
    unsafe, safe = config_validation.compare_for_resume(stored_json, config.to_dict())

`SCHEMA` is the single table of keys: every key of `configs.common.base_config()` has one
rule (its type and range or choices) and the tests fail when a key is added to one and not
the other. `CROSS_CHECKS` hold the rules between keys. Importing this module loads neither
TensorFlow nor jax.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from ctt_jax import layout  # the mesh rule: plain Python, no jax
from ctt_jax import methods  # the method table: plain Python, no jax

METHODS = methods.METHOD_NAMES
DATASETS = ('cityscapes', 'voc_aug', 'voc_classic', 'camvid', 'synthetic')
MODEL_NAMES = ('tiny', 'deeplabv2', 'deeplabv3plus')
BACKBONES = ('resnet18', 'resnet34', 'resnet50', 'resnet101')
LAYOUTS = ('torchvision', 'caffe', 'v1c', 'deepbase')


class ConfigError(ValueError):
  """The config is invalid; the message is one sentence naming the keys and the fix."""

  def __init__(self, message: str, problems: Sequence[str] = ()):
    super().__init__(message)
    self.problems = list(problems)


# --------------------------------------------------------------------------- rules


@dataclasses.dataclass(frozen=True)
class Rule:
  """`test(value)` is True for a valid value; `expect` completes 'must be ...'."""
  test: Callable[[Any], bool]
  expect: str
  choices: tuple = ()  # for enums: the valid values, to suggest the closest


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(float(v)))


def _interval(lo, hi, lo_open, hi_open) -> tuple[Callable[[Any], bool], str]:
  def inside(v):
    return ((lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi)))
  if lo is not None and hi is not None:
    text = f'in {"(" if lo_open else "["}{lo}, {hi}{")" if hi_open else "]"}'
  elif lo is not None:
    text = f'{">" if lo_open else ">="} {lo}'
  elif hi is not None:
    text = f'{"<" if hi_open else "<="} {hi}'
  else:
    text = ''
  return inside, text


def integer(lo=None, hi=None, *, also: tuple = ()) -> Rule:
  inside, text = _interval(lo, hi, False, False)
  extra = ''.join(f' or {a}' for a in also)
  return Rule(lambda v: _is_int(v) and (v in also or inside(v)),
              f'an integer {text}{extra}'.replace('  ', ' ').rstrip())


def number(lo=None, hi=None, *, lo_open=False, hi_open=False) -> Rule:
  inside, text = _interval(lo, hi, lo_open, hi_open)
  return Rule(lambda v: _is_number(v) and inside(v), f'a number {text}'.rstrip())


def boolean() -> Rule:
  return Rule(lambda v: isinstance(v, bool), 'true or false')


def string() -> Rule:
  return Rule(lambda v: isinstance(v, str), 'a string')


def one_of(*choices: str) -> Rule:
  return Rule(lambda v: v in choices, 'one of ' + ', '.join(repr(c) for c in choices),
              choices)


def pair(kind: str, lo, *, lo_open: bool) -> Rule:
  """A 2-tuple of ints (kind 'int') or numbers, each above `lo`."""
  ok = _is_int if kind == 'int' else _is_number
  inside, text = _interval(lo, None, lo_open, False)
  noun = 'integers' if kind == 'int' else 'numbers'
  return Rule(lambda v: (isinstance(v, (tuple, list)) and len(v) == 2
                         and all(ok(x) and inside(x) for x in v)),
              f'two {noun} {text} (e.g. 256x512)')


def triple(lo_open: bool) -> Rule:
  inside, text = _interval(0, None, lo_open, False)
  return Rule(lambda v: (isinstance(v, (tuple, list)) and len(v) == 3
                         and all(_is_number(x) and inside(x) for x in v)),
              f'three numbers {text} (R, G, B)')


PROBABILITY = number(0, 1)
POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
PERIOD = integer(1)

# One rule per key of configs.common.base_config(); see that function for their meaning.
SCHEMA: dict[str, Rule] = {
    'seed': integer(),
    'recipe': one_of('paper', 'authors'),
    # method
    'method': one_of(*METHODS),
    'num_pairs': integer(1),
    'use_ct': boolean(),
    'use_hc': boolean(),
    'use_lc': boolean(),
    'directional_mask': boolean(),
    'unlabeled_aug': one_of('classmix', 'cutmix', 'none'),
    'ct_weighting': one_of('batch_confident_fraction', 'confidence_power', 'none'),
    'ct_confidence_threshold': PROBABILITY,
    'ct_confidence_power': POSITIVE,
    'phi': PROBABILITY,  # [0, 1]: the paper's Table 8 uses 0.0 and 1.0
    'hc_temperature': POSITIVE,
    'lc_temperature': POSITIVE,
    'contrastive_anchors': one_of('student', 'teacher'),
    'lc_class': one_of('pseudo_label', 'peer_student'),
    'teacher_mode': one_of('eval', 'train'),
    'classmix_mask': one_of('shared', 'per_student'),
    'classmix_classes': one_of('half_up', 'half_down'),
    'lambda_sup': NON_NEGATIVE,
    'lambda_ct': NON_NEGATIVE,
    'lambda_hc': NON_NEGATIVE,
    'lambda_lc': NON_NEGATIVE,
    'bank_size': integer(1),
    'k_per_step': integer(1, also=(-1,)),
    'bank_k_rule': one_of('per_labeled', 'authors'),
    'bank_score': one_of('softmax', 'logit'),
    'bank_min_score': number(),
    'contrastive_start_step': integer(0, also=(-1,)),
    'bank_push': one_of(*methods.BANK_PUSH_MODES),
    'ema_decay': number(0, 1, hi_open=True),
    'supervised_ema': boolean(),
    'student_bn_passes': one_of('separate', 'joint'),
    'vmap_pairs': boolean(),
    'strong_aug.color_jitter_prob': PROBABILITY,
    'strong_aug.brightness': NON_NEGATIVE,
    'strong_aug.contrast': NON_NEGATIVE,
    'strong_aug.saturation': NON_NEGATIVE,
    'strong_aug.hue': number(0, 0.5),
    'strong_aug.blur_prob': PROBABILITY,
    'strong_aug.blur_sigma_min': POSITIVE,
    'strong_aug.blur_sigma_max': POSITIVE,
    'strong_aug.cutmix_area': number(0, 1, lo_open=True, hi_open=True),
    'strong_aug.coin': one_of('image', 'batch'),
    'strong_aug.order': one_of('jitter_then_mix', 'mix_then_jitter'),
    'self_training_teacher_workdir': string(),
    # optimisation
    'lr': POSITIVE,
    'head_lr_mult': NON_NEGATIVE,
    'momentum': number(0, 1, hi_open=True),
    'weight_decay': NON_NEGATIVE,
    'poly_power': NON_NEGATIVE,
    'total_steps': integer(1),
    'batch_size': integer(1),
    # images
    'num_classes': integer(1, 255),
    'ignore_label': integer(),
    'image_mean': triple(lo_open=False),
    'image_std': triple(lo_open=True),
    'resize_convention': one_of('half_pixel', 'align_corners'),
    'image_channel_order': one_of('rgb', 'bgr'),
    # model
    'model.name': one_of(*MODEL_NAMES),
    'model.backbone': one_of(*BACKBONES),
    'model.layout': one_of(*LAYOUTS),
    'model.output_stride': Rule(lambda v: _is_int(v) and v in (8, 16, 32), '8, 16 or 32'),
    'model.width_multiplier': POSITIVE,
    'model.width': integer(1),
    'model.feature_dim': integer(1),
    'model.projection_dim': integer(0),
    'model.freeze_bn': boolean(),
    'model.dtype': one_of('float32', 'bfloat16'),
    'model.remat': one_of('', 'blocks', 'stages'),
    'model.head': one_of('bottleneck', 'aspp_se'),  # DeepLabV2's head
    'model.head_init': one_of('paper', 'authors'),
    'model.conv_impl': one_of('auto', 'xla', 'im2col'),
    'model.pretrained': string(),
    'model.skip_head': boolean(),
    # data
    'data.name': one_of(*DATASETS),
    'data.data_dir': string(),
    'data.split': Rule(lambda v: isinstance(v, str) and bool(v), 'a partition name'),
    'data.labeled_fraction': PROBABILITY,
    'data.crop_size': pair('int', 0, lo_open=True),
    'data.resize': pair('int', 0, lo_open=False),
    'data.scale_range': pair('float', 0, lo_open=True),
    'data.scale_step': NON_NEGATIVE,
    'data.hflip': boolean(),
    'data.rotation_degrees': number(0, 180),
    'data.translate_fraction': number(0, 1, hi_open=True),
    'data.eval_protocol': one_of('paper', 'full'),
    'data.eval_batch_size': integer(1),
    'data.source': one_of('auto', 'tfds', 'folder'),
    'data.eval_size': pair('int', 0, lo_open=False),
    'data.splits_dir': string(),
    'data.partition_source': one_of('standard', 'authors'),
    'data.partition_seed': integer(),
    'data.tfds_data_dir': string(),
    'data.unlabeled_labels': boolean(),
    'data.synthetic_image_size': pair('int', 0, lo_open=True),
    'data.synthetic_num_train': integer(1),
    'data.synthetic_num_val': integer(1),
    'data.synthetic_seed': integer(),
    # the mesh (ctt_jax/layout.py) and the opt-in recipe scaling (ctt_jax/scaling.py)
    'mesh.data': integer(0),
    'mesh.space': integer(0),
    'scaling.rule': one_of('none', 'linear', 'sqrt'),
    'scaling.base_batch_size': integer(1),
    # the training program
    'log_every': PERIOD,
    'eval_every': PERIOD,
    'eval_every_epochs': integer(0),
    'eval_networks': one_of(*methods.EVAL_NETWORKS),
    'checkpoint_every': PERIOD,
    'keep_checkpoints': integer(1),
    'image_summaries': integer(0),
    'eval_sliding_window': boolean(),
    'eval_window_stride_fraction': number(0, 1, lo_open=True),
    'stop_at_step': integer(1, also=(-1,)),
}


def _ordered_pair(key: str, what: str) -> Callable[[dict], Optional[str]]:
  def check(c):
    lo, hi = c[key]
    return None if lo <= hi else f'{key} is {tuple(c[key])} but its {what}'
  return check


def scale_grid_problem(scale_range, step: float) -> Optional[str]:
  """A problem unless `step` (0: no grid) cuts `scale_range` into whole steps."""
  count = (scale_range[1] - scale_range[0]) / step if step else 0
  if abs(count - round(count)) < 1e-6:
    return None
  return (f'data.scale_step ({step}) must divide the width of data.scale_range '
          f'{tuple(scale_range)} into whole steps, or be 0')


def _mesh_problem(c) -> Optional[str]:
  """Whether batch_size and the crop lay out over the run's devices (layout.plan); the
  processes need no rule: they share images when the batch has fewer (sharding.py)."""
  rows = c['data.crop_size'][0]
  try:
    layout.plan(c['_device_count'], c['batch_size'], rows,
                layout.feature_rows(rows, c['model.name'], c['model.output_stride']),
                c['mesh.data'], c['mesh.space'])
  except layout.LayoutError as e:
    return str(e).rstrip('.')
  return None


# Rules between keys; each returns a problem phrase or None. `_device_count` and
# `_process_count` are the run's, added by `validate`.
CROSS_CHECKS: list[Callable[[dict], Optional[str]]] = [
    lambda c: _mesh_problem(c),  # the batch and crop over the devices (layout.py)
    _ordered_pair('data.scale_range', 'first value must not exceed the second'),
    lambda c: scale_grid_problem(c['data.scale_range'], c['data.scale_step']),
    lambda c: (None if c['strong_aug.blur_sigma_min'] <= c['strong_aug.blur_sigma_max']
               else f'strong_aug.blur_sigma_min ({c["strong_aug.blur_sigma_min"]}) must not '
               f'exceed strong_aug.blur_sigma_max ({c["strong_aug.blur_sigma_max"]})'),
    lambda c: (None if not 0 <= c['ignore_label'] < c['num_classes']
               else f'ignore_label is {c["ignore_label"]} but that is one of the '
               f'{c["num_classes"]} classes (use 255)'),
    lambda c: (None if (c['data.resize'][0] > 0) == (c['data.resize'][1] > 0)
               else f'data.resize is {tuple(c["data.resize"])} but must be two positive '
               'sizes or (0, 0) for no resize'),
    lambda c: (None if not methods.TABLE[c['method']].stage1_teacher
               or c['self_training_teacher_workdir']
               else f'method={c["method"]} needs self_training_teacher_workdir=<workdir of a '
               'finished method=supervised run>'),
    lambda c: (None if c['stop_at_step'] == -1 or c['stop_at_step'] <= c['total_steps']
               else f'stop_at_step ({c["stop_at_step"]}) is beyond total_steps '
               f'({c["total_steps"]}), so it would never stop the run'),
]


# --------------------------------------------------------------------------- validate


def flatten(config: Any, prefix: str = '') -> dict[str, Any]:
  """A ConfigDict or nested dict as {'model.width': 16, ...}."""
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items') and not isinstance(value, (str, bytes)):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def suggest(key: str, valid_keys: Sequence[str], n: int = 3) -> list[str]:
  """Valid keys close to `key`: by spelling of the whole key or of its last part."""
  valid_keys = list(valid_keys)
  leaf = key.rsplit('.', 1)[-1]
  by_key = difflib.get_close_matches(key, valid_keys, n=n, cutoff=0.6)
  leaves = {}
  for k in valid_keys:
    leaves.setdefault(k.rsplit('.', 1)[-1], []).append(k)
  by_leaf = [k for close in difflib.get_close_matches(leaf, list(leaves), n=n, cutoff=0.75)
             for k in leaves[close]]
  return list(dict.fromkeys(by_key + by_leaf))[:n]


def _show(value: Any) -> str:
  return repr(tuple(value)) if isinstance(value, list) else repr(value)


def problems(config: Any, *, device_count: int, process_count: int) -> list[str]:
  """Every problem of `config` as a phrase (empty if valid)."""
  flat = flatten(config)
  found = []
  for key in flat:
    if key not in SCHEMA:
      close = suggest(key, list(SCHEMA))
      found.append(f'{key} is not a config key'
                   + (f' (did you mean {" or ".join(close)}?)' if close else ''))
  for key, rule in SCHEMA.items():
    if key not in flat:
      found.append(f'{key} is missing (start from configs.common.base_config())')
    elif not rule.test(flat[key]):
      close = (difflib.get_close_matches(str(flat[key]), rule.choices, n=1, cutoff=0.6)
               if rule.choices else [])
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      found.append(f'{key} is {_show(flat[key])}{hint} but must be {rule.expect}')
  if found:  # the rules between keys assume each key is valid on its own
    return found
  flat = dict(flat, _device_count=int(device_count), _process_count=int(process_count))
  for check in CROSS_CHECKS:
    problem = check(flat)
    if problem:
      found.append(problem)
  return found


def validate(config: Any, *, device_count: int, process_count: int) -> None:
  """Raises ConfigError with one sentence listing every problem of `config`."""
  found = problems(config, device_count=device_count, process_count=process_count)
  if found:
    raise ConfigError(f'Invalid config: {"; ".join(found)}; fix the config file or its '
                      'overrides.', found)


def warnings(config: Any) -> list[str]:
  """Valid but probably unintended settings, each one sentence for the log at start."""
  found = []
  model = config.model
  if model.name != 'tiny' and not model.pretrained and model.backbone in ('resnet50',
                                                                          'resnet101'):
    found.append(
        f'WARNING: model.pretrained is empty, so the {model.name} on {model.backbone} '
        'trains FROM SCRATCH and will land far below the paper\'s numbers; convert the '
        'weights the paper starts from (docs/MODELS.md) and pass model.pretrained=<file>.')
  return found


# --------------------------------------------------------------------------- resume

# Keys a resumed run may change: they decide when things are logged, evaluated or saved,
# how evaluation is done, where files are, or how the same function is computed; none
# changes the state's shapes, the data order or the objective. total_steps is among them
# because extending a run is what resuming is for, but it stretches the poly learning-rate
# schedule from the resume point on. Keys read only when a state is initialised
# (pretrained weights, stage-1 teacher) are ignored on resume and so are safe too.
SAFE_ON_RESUME = frozenset({
    'total_steps', 'stop_at_step', 'log_every', 'eval_every', 'eval_every_epochs',
    'eval_networks', 'checkpoint_every',
    'keep_checkpoints', 'image_summaries',
    'data.eval_batch_size', 'data.eval_protocol', 'data.eval_size', 'eval_sliding_window',
    'eval_window_stride_fraction',
    'data.data_dir', 'data.tfds_data_dir',
    'data.unlabeled_labels',  # diagnostics only, never trained on
    'model.conv_impl', 'model.remat', 'vmap_pairs',
    'model.pretrained', 'model.skip_head', 'self_training_teacher_workdir',
    'mesh.data', 'mesh.space',  # the same program laid over another slice (layout.py)
})


class Diff(NamedTuple):
  key: str
  stored: Any  # ABSENT if the stored config lacks the key
  current: Any  # ABSENT if the current config lacks it


ABSENT = '<absent>'


def _normal(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_normal(v) for v in value)
  return value


def compare_for_resume(stored: Mapping[str, Any], current: Mapping[str, Any]
                       ) -> tuple[list[Diff], list[Diff]]:
  """(unsafe, safe) differences between the workdir's config.json (`stored`) and the
  current config, nested dicts or ConfigDicts. Keys in only one of them (added or removed
  by a code update) count as safe: a change of shapes they cause is caught by the
  checkpoint restore (IncompatibleCheckpointError)."""
  old, new = flatten(stored), flatten(current)
  unsafe, safe = [], []
  for key in sorted(set(old) | set(new)):
    a, b = _normal(old.get(key, ABSENT)), _normal(new.get(key, ABSENT))
    if a == b:
      continue
    diff = Diff(key, a, b)
    (safe if key in SAFE_ON_RESUME or ABSENT in (a, b) else unsafe).append(diff)
  return unsafe, safe


def describe(diffs: Sequence[Diff]) -> str:
  """'lr 0.01 -> 0.005, model.width 16 -> 8' (stored -> current)."""
  return ', '.join(f'{d.key} {_show(d.stored)} -> {_show(d.current)}' for d in diffs)


def resume_error(workdir: str, unsafe: Sequence[Diff]) -> ConfigError:
  """The one-sentence refusal of a resume with `unsafe` differences."""
  return ConfigError(
      f'--workdir={workdir} holds a run with another config (stored -> current: '
      f'{describe(unsafe)}); rerun with the stored values (see {workdir}/config.json) or '
      'pass a new workdir.', [describe([d]) for d in unsafe])
