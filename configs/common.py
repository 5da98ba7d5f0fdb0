"""The machinery every config shares: every key with its default, the two recipes, and the
one way to set keys.

A dataset config (`configs/cityscapes.py`, ...) writes the numbers of its experiment
itself, big_vision style:

    def get_config(arg=None):
      split, recipe, overrides = common.parse_arg(arg, 'cityscapes', SPLITS, '1_30', 'authors')
      c = common.base_config()   # every key, with the method's defaults
      c.lr = 2.5e-4              # ... this experiment's numbers
      common.apply_recipe(c, recipe, {'authors': AUTHORS})  # the dataset's rows of a recipe
      return common.apply_overrides(c, overrides)

The argument is the partition and `key=value` overrides:

    configs/cityscapes.py:1_8,method=mean_teacher,num_pairs=3,bank_size=512,phi=0.85

The first comma-separated field without `=` is the partition; `recipe=NAME` chooses the
recipe, applied before the other overrides; every other `key=value` sets a config key
(dotted keys reach nested dicts: `model.backbone=resnet50`). Values are parsed to the type
of the existing key. All of it goes through `update`, which refuses unknown keys with the
closest valid names; tests build their configs with it too.
Importing this module loads neither TensorFlow nor jax (configs load in milliseconds).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Every config key, with CTT's defaults as this project reads the paper's text (its
  losses, teachers, memory bank and the optimiser of section 4.1). A dataset config sets
  its own experiment's numbers on top; tests and benchmarks start from this."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Which reading of the method the config starts from (`RECIPES`, docs/FIDELITY.md):
  # 'paper' (the paper's text as this project reads it: the values below) or 'authors'
  # (the authors' released code). Set it in the config argument (`...:1_30,recipe=paper`),
  # where it is applied before the other overrides; every row stays overridable.
  c.recipe = 'paper'

  # --- method: who teaches whom (the table in ctt_jax/methods.py) ---
  c.method = 'ctt'  # supervised|mean_teacher|mutual|dual_teacher|ctt|ensemble|self_training
  c.num_pairs = 2
  c.use_ct = True
  c.use_hc = True
  c.use_lc = True
  c.directional_mask = True
  c.unlabeled_aug = 'classmix'  # classmix|cutmix|none
  # 'batch_confident_fraction' (ClassMix), 'confidence_power' (conf ** ct_confidence_power
  # per pixel: the authors' code's pixel_weight='threshold') or 'none'.
  c.ct_weighting = 'batch_confident_fraction'
  c.ct_confidence_threshold = 0.968
  c.ct_confidence_power = 6.0
  c.phi = 0.75
  c.hc_temperature = 0.5
  c.lc_temperature = 0.5
  # Which confidence picks the contrastive anchors: 'student' (Eq. 7: HC's anchors are the
  # pixels where student k's own confidence > phi, LC's the others) or 'teacher' (the
  # authors' code: HC takes every labeled pixel and the unlabeled pixels where the teacher
  # supervising student k is confident (>= phi); LC the unlabeled pixels where it is not).
  c.contrastive_anchors = 'student'
  # LC's class of an anchor: 'pseudo_label' (the supervising teacher's, as HC) or
  # 'peer_student' (the authors' code: the argmax of the peer student whose feature is
  # the positive).
  c.lc_class = 'pseudo_label'
  # Teachers make pseudo-labels and bank features in 'eval' mode (running statistics, no
  # dropout) or 'train' mode (the authors' code: batch statistics and dropout on; the
  # teachers' running statistics still follow the students' by EMA).
  c.teacher_mode = 'eval'
  # ClassMix masks: 'shared' (one mask per image from the pseudo-labelling networks' mean
  # softmax, the same for every student, with one jitter/blur draw) or 'per_student' (the
  # authors' code: student k's mask from the argmax of the teachers that supervise it,
  # with its own jitter/blur draws, so each student sees its own mixed input).
  c.classmix_mask = 'shared'
  # How many of an image's n classes ClassMix pastes: 'half_up' ceil(n/2), 'half_down'
  # floor(n/2) (the authors' code).
  c.classmix_classes = 'half_up'
  c.lambda_sup = 1.0
  c.lambda_ct = 1.0
  c.lambda_hc = 0.1
  c.lambda_lc = 0.1
  # Memory bank: one per pair, a FIFO queue of bank_size teacher features per class, filled
  # from the labeled batch.
  c.bank_size = 128
  c.k_per_step = -1  # -1: by `bank_k_rule`
  # k when k_per_step is -1: 'per_labeled' max(1, N_L // N), or 'authors'
  # max(floor(2 N / N_L), batch_size) (their add_to_memory_bank), N_L labeled images.
  c.bank_k_rule = 'per_labeled'
  # Candidates are ranked by the teacher's max 'softmax' or max raw 'logit' (the authors'
  # code) and must score >= bank_min_score (0.95 on the logit in the authors' code).
  c.bank_score = 'softmax'
  c.bank_min_score = 0.0
  c.contrastive_start_step = -1  # -1: contrastive terms start when every queue is full
  # 'after_update': the bank is filled after the optimiser step and the EMA update, from the
  # updated teachers; 'before_update' = the order of the paper's Algorithm 1, cheaper;
  # 'none' = never push (benchmarks/step_benchmark.py: the step without the bank)
  c.bank_push = 'after_update'
  c.ema_decay = 0.99
  # The supervised method keeps an EMA copy of its student as teacher_0 (the network every
  # method is scored by); False: no EMA, no teachers, the student is scored (plain SGD).
  c.supervised_ema = True
  # Students run the labeled and the strong unlabeled batch as two passes ('separate', the
  # authors' code) or one ('joint'); with frozen batch-norm the two give the same result.
  c.student_bn_passes = 'separate'
  # Run the n students as one vmapped network (stacked params) instead of n unrolled calls.
  c.vmap_pairs = False
  # Strong view of the unlabeled images (colour jitter, blur, ClassMix or CutMix), made
  # inside the jitted step: the mix needs the teachers' predictions.
  c.strong_aug = ml_collections.ConfigDict()
  c.strong_aug.color_jitter_prob = 0.8
  c.strong_aug.brightness = 0.4
  c.strong_aug.contrast = 0.4
  c.strong_aug.saturation = 0.4
  c.strong_aug.hue = 0.1
  c.strong_aug.blur_prob = 0.5
  c.strong_aug.blur_sigma_min = 0.1
  c.strong_aug.blur_sigma_max = 2.0
  c.strong_aug.cutmix_area = 0.5
  # 'image': each image draws its own jitter / blur coin and blur sigma; 'batch': one coin
  # and one sigma for the whole batch (the authors' code; jitter factors stay per image).
  c.strong_aug.coin = 'image'
  # 'jitter_then_mix' (each half of a mixed image keeps its own image's jitter) or
  # 'mix_then_jitter' (the authors' code: the mixed image is jittered as one).
  c.strong_aug.order = 'jitter_then_mix'
  # Self-training stage 2 reads its fixed teacher from the stage-1 (`supervised`) workdir.
  c.self_training_teacher_workdir = ''

  # --- optimisation: SGD with momentum and poly decay (paper section 4.1); the weight decay
  # and the head's 10x rate are the authors' code's (the paper does not give them) ---
  c.lr = 2.5e-4
  c.head_lr_mult = 10.0
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.poly_power = 0.9
  c.total_steps = 80_000
  c.batch_size = 2  # labeled images per step; the unlabeled batch has the same size

  # --- images ---
  c.num_classes = 19
  c.ignore_label = 255
  c.image_mean = (0.485, 0.456, 0.406)  # ImageNet, on [0, 1] images
  c.image_std = (0.229, 0.224, 0.225)
  # The order of the channels the network reads: 'rgb', or 'bgr' (networks trained on
  # OpenCV/Caffe images; the authors' Cityscapes loader). image_mean and image_std stay
  # listed for R, G, B; the channels are reversed after normalising (images.normalize).
  c.image_channel_order = 'rgb'
  # Bilinear upsampling of logits and nearest downsampling of labels: 'half_pixel' (pixel
  # centres, jax.image) or 'align_corners' (the authors' code: PyTorch's align_corners=True
  # for logits, its legacy 'nearest' floor(i * in / out) for labels).
  c.resize_convention = 'half_pixel'

  # --- model (ctt_jax.models.get_model) ---
  c.model = ml_collections.ConfigDict()
  c.model.name = 'deeplabv2'  # deeplabv2|deeplabv3plus|tiny
  c.model.backbone = 'resnet101'
  c.model.layout = 'caffe'  # torchvision|caffe|v1c|deepbase (docs/MODELS.md)
  c.model.output_stride = 8
  c.model.width_multiplier = 1.0
  c.model.width = 16  # `tiny` model only: channels of its first conv
  c.model.feature_dim = 256
  c.model.projection_dim = 0  # >0 adds a projection head for the contrastive features
  # DeepLabV2's head (other models ignore it): 'aspp_se' = the CTT authors' Classifier_Module2
  # (ASPP conv-GN-ReLU branches, squeeze-excitation, conv-GN, dropout 0.1; signed
  # features, models/ctt_head.py); 'bottleneck' = 1x1 conv-BN-ReLU features + ASPP-V2.
  c.model.head = 'bottleneck'
  # The 'aspp_se' head's initialisation: 'paper' (Kaiming convs, classifier N(0, 0.001))
  # or 'authors' (their ResNet's constructor re-draws every conv N(0, 0.01)).
  c.model.head_init = 'paper'
  c.model.freeze_bn = True
  c.model.dtype = 'float32'  # or bfloat16 (compute; params stay float32)
  # Backbone rematerialisation: '' (store all activations), 'blocks' or 'stages' (store only
  # each block's / stage's input, recompute the rest in the backward pass: less HBM, about
  # one more backbone forward pass; see models/resnet.py).
  c.model.remat = ''
  # Convolutions: 'xla' (nn.Conv, einsum), 'im2col' (models/fast_conv.py: same forward
  # values, a backward pass of matmuls that XLA:CPU runs faster), 'auto' (im2col on CPU,
  # xla on GPU/TPU, whose graph stays as it is). Same parameters either way.
  c.model.conv_impl = 'auto'
  c.model.pretrained = ''  # converted weights (.npz / orbax dir), see models/convert.py
  c.model.skip_head = True  # when importing weights, leave the classifier head at init

  # --- data (ctt_jax.data.build_datasets) ---
  c.data = ml_collections.ConfigDict()
  c.data.name = 'cityscapes'
  c.data.data_dir = ''
  c.data.split = '1_30'
  c.data.labeled_fraction = 0.0  # datasets without published lists: seeded subset
  c.data.crop_size = (256, 512)
  c.data.resize = (512, 1024)  # Cityscapes: resize before cropping
  c.data.scale_range = (1.0, 1.0)  # VOC: (0.5, 1.5)
  # 0: the rescale factor is uniform on scale_range; > 0: one of lo, lo + step, ..., hi,
  # each as likely (the authors' VOC loader: 0.5, 0.6, ..., 1.6).
  c.data.scale_step = 0.0
  c.data.hflip = True
  c.data.rotation_degrees = 0.0
  c.data.translate_fraction = 0.0
  c.data.eval_protocol = 'paper'  # paper|full
  c.data.eval_batch_size = 1
  c.data.source = 'auto'  # auto|tfds|folder
  c.data.eval_size = (0, 0)  # eval pad size; (0, 0): data.resize (paper) or dataset max
  c.data.splits_dir = ''  # '' = packaged ctt_jax/data/splits; else <dir>/<dataset>/*.txt
  # Which labeled lists: 'standard' (UniMatch's Cityscapes, ClassMix's VOC split 0, the
  # PseudoSeg classic VOC lists) or 'authors' (the lists the CTT authors' code trained with:
  # VOC aug only, splits/README.md says why the others have none).
  c.data.partition_source = 'standard'
  c.data.partition_seed = 0  # labeled subset of datasets without lists (camvid, synthetic)
  c.data.tfds_data_dir = ''  # tensorflow-datasets data_dir ('' = tfds default)
  c.data.unlabeled_labels = True  # unlabeled batches carry ground truth, for diagnostics only
  c.data.synthetic_image_size = (64, 64)
  c.data.synthetic_num_train = 512
  c.data.synthetic_num_val = 64
  c.data.synthetic_seed = 0  # the synthetic scenes themselves (not the training order)

  # --- the training program ---
  c.log_every = 50
  c.eval_every = 4000
  # > 0: evaluate every this many epochs of the labeled set instead (an epoch = ceil(N_L /
  # batch_size) steps, N_L labeled images), as the authors' code does; 0: eval_every.
  c.eval_every_epochs = 0
  # Which networks evaluation scores (and the best checkpoint is ranked by): 'all'
  # (students, teachers and, for `ensemble`, their average) or 'students' (the authors'
  # code scores only its two students).
  c.eval_networks = 'all'
  c.checkpoint_every = 2000
  c.keep_checkpoints = 3
  c.image_summaries = 3
  # Evaluation by crops of data.crop_size slid over the image (stride = this fraction of
  # the crop), softmax averaged where crops overlap: the usual partner of
  # data.eval_protocol='full'. False: one pass over the whole image.
  c.eval_sliding_window = False
  c.eval_window_stride_fraction = 2 / 3
  # Stop (with a checkpoint) once this step is reached, e.g. to fit a time-limited job;
  # rerunning the same command resumes. -1: run to total_steps.
  c.stop_at_step = -1
  # --- how the step is laid over the devices (ctt_jax/layout.py); the program is the same ---
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 0  # devices along the batch; 0: auto, as many as batch_size allows
  c.mesh.space = 0  # devices along each image's rows; 0: auto, the rest
  # --- opt-in: adapt the recipe to a batch_size other than the one it was tuned for
  # (ctt_jax/scaling.py); 'none' runs the config as written ---
  c.scaling = ml_collections.ConfigDict()
  c.scaling.rule = 'none'  # none|linear|sqrt: lr x B/B0 or sqrt(B/B0), steps x B0/B
  c.scaling.base_batch_size = 2  # B0; each config sets its own batch_size here

  # Locked: a key that is not defined above cannot be added by mistake (a typo fails).
  c.lock()
  return c


# The two readings of the method, each a set of rows (docs/FIDELITY.md lists every row with
# the authors' file and line). 'paper' is base_config() itself; 'authors' is what their
# released code (first upload, with HC and LC at 0.1) trains. A dataset config adds its own
# rows of a recipe (input scaling, augmentation, evaluation), applied after these
# (`apply_recipe`).
RECIPES = {
    'paper': {},
    'authors': {
        'model.freeze_bn': False,
        'teacher_mode': 'train',
        'classmix_mask': 'per_student',
        'classmix_classes': 'half_down',
        'strong_aug.coin': 'batch',
        'strong_aug.order': 'mix_then_jitter',
        'strong_aug.brightness': 0.25, 'strong_aug.contrast': 0.25,
        'strong_aug.saturation': 0.25, 'strong_aug.hue': 0.25,
        'strong_aug.blur_sigma_min': 0.15, 'strong_aug.blur_sigma_max': 1.15,
        'contrastive_anchors': 'teacher',
        'hc_temperature': 0.1,
        'directional_mask': False,
        'lc_class': 'peer_student',
        'bank_size': 256,
        'bank_k_rule': 'authors',
        'bank_score': 'logit',
        'bank_min_score': 0.95,
        'model.head_init': 'authors',
        'resize_convention': 'align_corners',
        # Their weak view has no flip (config `flip: false`, loaders `mirror=random_flip`).
        'data.hflip': False,
        'eval_networks': 'students',
    },
}


def _parse_value(text: str, current):
  """Parses `text` to the type of `current` (the key's default)."""
  if isinstance(current, bool):
    if text.lower() in ('true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
    raise ValueError(f'expected true/false, got {text!r}')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, tuple):
    # 128x256, 128:256 or (128, 256)
    for sep in ('x', ',', '(', ')', '[', ']'):
      text = text.replace(sep, ':')
    parts = [p.strip() for p in text.split(':') if p.strip()]
    return tuple(type(current[0])(p) if current else float(p) for p in parts)
  return text


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys += _flat_keys(v, prefix + k + '.')
    else:
      keys.append(prefix + k)
  return keys


def unknown_key_message(key: str, valid: list[str]) -> str:
  """One sentence for an unknown key, with the closest valid names."""
  from ctt_jax import config_validation  # pylint: disable=g-import-not-at-top  (no jax/TF)
  hint = config_validation.suggest(key, valid)
  return (f'Unknown config key {key!r}' + (f'; did you mean {" or ".join(hint)}?' if hint
                                          else '; see configs/common.py for the valid keys.'))


def update(config: ml_collections.ConfigDict, values: Mapping[str, Any]):
  """Sets dotted keys (`{'model.name': 'tiny'}`); an unknown key raises KeyError with the
  closest valid names, a value of the wrong type ml_collections' TypeError. Returns config."""
  valid = _flat_keys(config)
  for key, value in values.items():
    if key not in valid:
      raise KeyError(unknown_key_message(key, valid))
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
  """Applies `key=value` strings, each parsed to the type of the key's default."""
  valid = _flat_keys(config)
  values = {}
  for item in overrides:
    key, _, text = item.partition('=')
    key = key.strip()
    if key not in valid:
      raise KeyError(unknown_key_message(key, valid) + f' (in override {item!r})')
    node = config
    for p in key.split('.'):
      node = node[p]
    try:
      values[key] = _parse_value(text.strip(), node)
    except ValueError as e:
      raise ValueError(f'Bad value for config key {key!r}: {e}') from None
  return update(config, values)


def split_arg(arg: str | None) -> tuple[str | None, list[str]]:
  """'1_8,method=ctt' -> ('1_8', ['method=ctt']). Commas inside brackets belong to the
  value: '1_8,data.crop_size=(128,128)' -> ('1_8', ['data.crop_size=(128,128)'])."""
  if not arg:
    return None, []
  fields, depth, start = [], 0, 0
  for i, ch in enumerate(arg + ','):
    depth += (ch in '([{') - (ch in ')]}')
    if ch == ',' and depth <= 0:
      fields.append(arg[start:i])
      start = i + 1
  fields = [f for f in fields if f.strip()]
  positional = [f.strip() for f in fields if '=' not in f]
  overrides = [f for f in fields if '=' in f]
  if len(positional) > 1:
    raise ValueError(f'Config argument {arg!r} names more than one partition: '
                     f'{positional}.')
  return (positional[0] if positional else None), overrides


# PASCAL VOC 2012, both protocols (aug and classic differ in their partitions only).
_VOC = {'num_classes': 21, 'batch_size': 10, 'data.resize': (0, 0),
        'data.crop_size': (321, 321), 'data.scale_range': (0.5, 1.5),
        'data.eval_size': (512, 512)}
# Each dataset's data settings (and batch size), for code that builds a config without a
# config file: tests and benchmarks (`apply_dataset_defaults`). The config files write
# their own values, the same (tests/test_configs.py checks that they agree).
DATASETS = {
    'cityscapes': {
        'num_classes': 19, 'batch_size': 2, 'data.split': '1_30',
        'data.resize': (512, 1024), 'data.crop_size': (256, 512),
        'data.scale_range': (1.0, 1.0), 'data.eval_protocol': 'paper'},
    'voc_aug': {**_VOC, 'data.split': '1_50'},
    'voc_classic': {**_VOC, 'data.split': '1_16'},
    # CamVid at 240x180 (the SegNet copy); use (352, 480) crops at full size.
    'camvid': {
        'num_classes': 11, 'batch_size': 4, 'data.split': '1_8', 'data.resize': (0, 0),
        'data.crop_size': (176, 240), 'data.scale_range': (0.75, 1.25),
        'data.eval_size': (0, 0)},
    'synthetic': {
        'num_classes': 5, 'batch_size': 8, 'data.split': '1_8', 'data.resize': (0, 0),
        'data.crop_size': (64, 64), 'data.scale_range': (1.0, 1.25),
        'data.synthetic_image_size': (64, 64), 'data.eval_size': (0, 0),
        'data.eval_batch_size': 8},
}


def apply_dataset_defaults(config: ml_collections.ConfigDict, dataset: str):
  """Sets data.name and `dataset`'s settings of `DATASETS` on `config`; returns it."""
  if dataset not in DATASETS:
    raise ValueError(f'Unknown dataset {dataset!r}; use one of: {", ".join(DATASETS)}.')
  config.data.name = dataset
  update(config, DATASETS[dataset])
  config.scaling.base_batch_size = config.batch_size  # the batch the recipe was tuned for
  return config


def parse_arg(arg: str | None, dataset: str, splits, default_split: str,
              default_recipe: str = 'paper') -> tuple[str, str, list[str]]:
  """(split, recipe, overrides) of a config argument: '1_8,recipe=paper,phi=0.8' ->
  ('1_8', 'paper', ['phi=0.8']). An unknown recipe or split raises ValueError naming the
  valid ones (`dataset` names the data in the message)."""
  split, overrides = split_arg(arg)
  recipe = default_recipe
  for item in [o for o in overrides if o.partition('=')[0].strip() == 'recipe']:
    recipe = item.partition('=')[2].strip()
    overrides.remove(item)
  if recipe not in RECIPES:
    raise ValueError(f'Unknown recipe {recipe!r}; valid: {", ".join(RECIPES)}.')
  split = split or default_split
  if split not in splits:
    raise ValueError(f'Unknown partition {split!r} for {dataset}; valid: '
                     f'{", ".join(splits)}.')
  return split, recipe, overrides


def apply_recipe(config: ml_collections.ConfigDict, recipe: str,
                 dataset_rows: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> ml_collections.ConfigDict:
  """Sets config.recipe, then the recipe's rows of `RECIPES`, then the dataset's own rows of
  it (`dataset_rows[recipe]`, dotted keys). Call it after the config's own settings and
  before the overrides of the argument, which win. Returns config."""
  config.recipe = recipe
  update(config, RECIPES[recipe])
  return update(config, (dataset_rows or {}).get(recipe, {}))


def from_file(spec: str, root: str = '.') -> ml_collections.ConfigDict:
  """The config of `spec` = 'FILE[:ARGS]', as main.py's --config reads it (FILE relative
  to `root`), for scripts that take the same argument."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('config_file', os.path.join(root, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
