r"""Classic PASCAL VOC 2012 (the PseudoSeg protocol): the paper's Table 3.

Trains CTT, two student-teacher pairs of DeepLabV3+-ResNet101 (output stride 16), on the
labeled images of a split of the 1464 classic training images; the unlabeled images are
the rest of the 10582 aug training images. Random rescale by 0.5-1.5, random 321x321
crops, 10 labeled + 10 unlabeled crops a step, 80k SGD steps (the paper gives one set of
VOC settings, which this config applies to Table 3 too). Scores the networks on the 1449
val images.

The paper's mIoU (%) of CTT on VOC 2012 val (Table 3, DeepLabV3+-ResNet101; its
supervised baseline in brackets). No paper-scale run of ctt-jax exists yet, so there is no
mIoU, hardware or run time of ours to set beside them:

  split  labeled  CTT    supervised
  1_16      92    64.00  (41.22)
  1_8      183    71.05  (50.82)
  1_4      366    72.36  (60.37)
  1_2      732    76.13  (66.29)

Commands. DATA holds JPEGImages/ and SegmentationClassAug/ (docs/DATA.md). DEEPBASE is
the deep-stem ResNet-101 (the 64-64-128 stem of TorchSemSeg's and UniMatch's files) the
authors' DeepLabV3+ script starts both students from, converted with --layout deepbase
(docs/MODELS.md). The default recipe, `authors`, trains as the authors' released code does:

  python main.py --workdir=runs/voc_classic_1_16 \
    --config=configs/voc_classic.py:1_16,data.data_dir=DATA,model.pretrained=DEEPBASE

`recipe=paper` trains the paper's text as this project reads it (docs/FIDELITY.md):

  python main.py --workdir=runs/voc_classic_1_16_paper \
    --config=configs/voc_classic.py:1_16,recipe=paper,data.data_dir=DATA,model.pretrained=DEEPBASE

Any key can follow the split, e.g. the supervised baseline (add data.data_dir and
model.pretrained as above):

  python main.py --workdir=runs/voc_classic_1_16_sup \
    --config=configs/voc_classic.py:1_16,method=supervised,num_pairs=1

Splits: 1_16, 1_8, 1_4, 1_2 (UniMatch's PseudoSeg lists, shipped in
ctt_jax/data/splits/voc_classic; the authors' 1_16 list is the same 92 images).
"""
from configs import common

# Training steps per split: the paper trains every split for 80k iterations (section 4.1).
TOTAL_STEPS = {'1_16': 80_000, '1_8': 80_000, '1_4': 80_000, '1_2': 80_000}
SPLITS = tuple(TOTAL_STEPS)

# The authors' rows, on top of the authors' recipe of configs/common.py. Their DeepLabV3+
# script feeds the VOC loader's 0..255 images minus the Caffe mean
# (data/voc_off_dataset_labeled.py, in R, G, B), not divided by a std, and not the
# ImageNet scaling its backbone was trained with; the weak view and evaluation are those of
# voc_aug.py's authors' rows.
AUTHORS = {
    'image_std': (1 / 255,) * 3,
    'image_channel_order': 'rgb',
    'image_mean': (122.67891434 / 255, 116.66876762 / 255, 104.00698793 / 255),
    'data.scale_range': (0.5, 1.6), 'data.scale_step': 0.1,  # 0.5, 0.6, ..., 1.6
    'data.eval_size': (505, 505),  # evaluateSSL.py pads val images to 505x505
    'eval_every_epochs': 20,  # their DeepLabV3+ script: `if epoch % 20 == 0`
}


def get_config(arg=None):
  split, recipe, overrides = common.parse_arg(arg, 'voc_classic', SPLITS, '1_16', 'authors')
  c = common.base_config()  # every key; the ones not set here keep the method's defaults
  c.data.name = 'voc_classic'
  c.data.split = split
  c.num_classes = 21

  # CTT (Eq. 10): L_sup + L_ct, and HC + LC once every queue of the banks is full.
  c.method = 'ctt'
  c.num_pairs = 2
  c.lambda_sup = 1.0
  c.lambda_ct = 1.0
  c.lambda_hc = 0.1
  c.lambda_lc = 0.1
  c.ema_decay = 0.99  # alpha: teacher = EMA of its student
  c.hc_temperature = 0.5  # tau; recipe=authors: 0.1
  c.lc_temperature = 0.5
  c.phi = 0.75  # confidence that sends an anchor to HC (above) or LC (below)
  # L_ct weights every pixel by the batch's fraction of pseudo-labels at least this
  # confident (ClassMix's rule, which the authors' code keeps).
  c.ct_confidence_threshold = 0.968
  c.bank_size = 128  # N, features per class and pair; recipe=authors: 256
  c.contrastive_start_step = -1  # -1: HC and LC start when every queue is full

  # DeepLabV3+ on a dilated ResNet-101, output stride 16; features and logits at 1/4.
  c.model.name = 'deeplabv3plus'
  c.model.backbone = 'resnet101'
  c.model.layout = 'deepbase'  # the 64-64-128 deep stem of the authors' ResNet-101 weights
  c.model.output_stride = 16
  c.model.feature_dim = 256
  c.model.freeze_bn = True  # recipe=authors: batch-norm trained
  c.model.pretrained = ''  # converted weights, see the commands above; '' = from scratch
  # The ImageNet scaling the deep-stem weights were trained with (recipe=authors: AUTHORS).
  c.image_mean = (0.485, 0.456, 0.406)
  c.image_std = (0.229, 0.224, 0.225)

  # Optimisation (section 4.1): SGD with momentum, poly decay.
  c.batch_size = 10  # labeled crops per step; the unlabeled batch has as many
  c.scaling.base_batch_size = c.batch_size  # the batch these numbers are for
  c.lr = 2.5e-4
  c.head_lr_mult = 10.0  # the authors' code: the head learns 10x faster
  c.momentum = 0.9
  c.weight_decay = 5e-4  # the authors' code; the paper gives none
  c.poly_power = 0.9
  c.total_steps = TOTAL_STEPS[split]

  # Data: images at their size (at most 500x500), rescaled by U(0.5, 1.5), random 321x321
  # crops, flipped half the time (recipe=authors: never).
  c.data.data_dir = ''  # JPEGImages/ + SegmentationClassAug/ ('' = $CTT_VOC_DIR)
  c.data.splits_dir = ''  # '' = the shipped labeled lists
  c.data.resize = (0, 0)  # no resize
  c.data.scale_range = (0.5, 1.5)
  c.data.crop_size = (321, 321)
  c.data.hflip = True

  # Evaluation: each val image whole, padded to 512x512; every student and teacher is
  # scored (recipe=authors: the students, every 20 labeled epochs).
  c.data.eval_size = (512, 512)
  c.data.eval_batch_size = 1
  c.eval_every = 4000
  c.checkpoint_every = 2000

  common.apply_recipe(c, recipe, {'authors': AUTHORS})
  return common.apply_overrides(c, overrides)
