r"""PASCAL VOC 2012 aug: the paper's Table 2.

Trains CTT, two student-teacher pairs of DeepLabV2-ResNet101, on the labeled images of a
split of the 10582 aug training images (VOC 2012 + SBD; the rest unlabeled): random
rescale by 0.5-1.5, random 321x321 crops, 10 labeled + 10 unlabeled crops a step, 80k SGD
steps. Scores the networks on the 1449 val images.

The paper's mIoU (%) of CTT on VOC 2012 val (Table 2, DeepLabV2-ResNet101; its supervised
baseline in brackets). No paper-scale run of ctt-jax exists yet, so there is no mIoU,
hardware or run time of ours to set beside them:

  split  labeled  CTT    supervised
  1_50     212    69.24  (55.69)
  1_20     529    72.02  (61.36)
  1_8     1322    73.66  (67.14)
  1_4     2645    75.07  (70.20)
  full   10582    -      (74.26)  full supervision: method=supervised,num_pairs=1

Commands. DATA holds JPEGImages/ and SegmentationClassAug/ (docs/DATA.md). COCO and
IMAGENET are the two ResNet-101 files the authors' code starts its students from,
converted without --bgr-to-rgb; COCO_RGB is the COCO file converted with it
(docs/MODELS.md). The default recipe, `authors`, trains as the authors' released code does:

  python main.py --workdir=runs/voc_1_50 \
    --config='configs/voc_aug.py:1_50,data.data_dir=DATA,model.pretrained=(COCO,IMAGENET)'

`recipe=paper` trains the paper's text as this project reads it (docs/FIDELITY.md):

  python main.py --workdir=runs/voc_1_50_paper \
    --config=configs/voc_aug.py:1_50,recipe=paper,data.data_dir=DATA,model.pretrained=COCO_RGB

Any key can follow the split, e.g. CTT without the contrastive terms (add data.data_dir
and model.pretrained as above):

  python main.py --workdir=runs/voc_1_50_ct \
    --config=configs/voc_aug.py:1_50,use_hc=false,use_lc=false

Splits: 1_50, 1_20, 1_8, 1_4 (ClassMix's split 0, shipped in ctt_jax/data/splits/voc_aug;
recipe=authors reads the authors' split 1 instead), full.
"""
from configs import common

# Training steps per split: the paper trains every split for 80k iterations (section 4.1).
# (The authors' shipped configVOC.json says 160k; both recipes keep the paper's 80k.)
TOTAL_STEPS = {'1_50': 80_000, '1_20': 80_000, '1_8': 80_000, '1_4': 80_000,
               'full': 80_000}
SPLITS = tuple(TOTAL_STEPS)

# The authors' VOC rows, on top of the authors' recipe of configs/common.py. Their loader
# (data/voc_dataset.py) draws the scale `0.5 + random.randint(0, 11) / 10`, subtracts the
# Caffe mean from the BGR image and reverses it to RGB: the network reads R, G, B minus
# the mean below (the unrounded Caffe mean).
AUTHORS = {
    'data.scale_range': (0.5, 1.6), 'data.scale_step': 0.1,
    'image_channel_order': 'rgb',
    'image_mean': (122.67891434 / 255, 116.66876762 / 255, 104.00698793 / 255),
    'data.eval_size': (505, 505),  # evaluateSSL.py pads val images to 505x505
    'eval_every_epochs': 10,  # their `epoch % 10 == 0`: every 220 steps at 1_50
    # configVOC.json: split_id_list 1 (ctt_jax/data/splits/README.md)
    'data.partition_source': 'authors',
}


def get_config(arg=None):
  split, recipe, overrides = common.parse_arg(arg, 'voc_aug', SPLITS, '1_50', 'authors')
  c = common.base_config()  # every key; the ones not set here keep the method's defaults
  c.data.name = 'voc_aug'
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

  # DeepLabV2 on a dilated ResNet-101, output stride 8.
  c.model.name = 'deeplabv2'
  c.model.backbone = 'resnet101'
  c.model.layout = 'caffe'  # the ResNet of the DeepLabV2 checkpoints
  c.model.output_stride = 8
  c.model.head = 'aspp_se'  # the authors' head: ASPP + squeeze-excitation, signed features
  c.model.feature_dim = 256
  c.model.freeze_bn = True  # recipe=authors: batch-norm trained
  c.model.pretrained = ''  # converted weights, see the commands above; '' = from scratch
  # The Caffe DeepLabV2 weights read 0..255 images minus the Caffe mean, not divided by a
  # std: the mean in R, G, B on [0, 1], and a std of 1/255.
  c.image_mean = (0.48108, 0.45753, 0.40787)
  c.image_std = (1 / 255,) * 3

  # Optimisation (section 4.1): SGD with momentum, poly decay.
  c.batch_size = 10  # labeled crops per step; the unlabeled batch has as many
  c.scaling.base_batch_size = c.batch_size  # the batch these numbers are for
  c.lr = 2.5e-4
  c.head_lr_mult = 10.0  # the authors' code: the head learns 10x faster
  c.momentum = 0.9
  c.weight_decay = 5e-4  # the authors' code; the paper gives none
  c.poly_power = 0.9
  c.total_steps = TOTAL_STEPS[split]

  # Data: images at their size (at most 500x500), rescaled by U(0.5, 1.5) (recipe=authors:
  # one of 0.5, 0.6, ..., 1.6), random 321x321 crops, flipped half the time (recipe=authors:
  # never).
  c.data.data_dir = ''  # JPEGImages/ + SegmentationClassAug/ ('' = $CTT_VOC_DIR)
  c.data.splits_dir = ''  # '' = the shipped labeled lists
  c.data.resize = (0, 0)  # no resize
  c.data.scale_range = (0.5, 1.5)
  c.data.crop_size = (321, 321)
  c.data.hflip = True

  # Evaluation: each val image whole, padded to 512x512 (recipe=authors: 505x505); every
  # student and teacher is scored (recipe=authors: the students, every 10 labeled epochs).
  c.data.eval_size = (512, 512)
  c.data.eval_batch_size = 1
  c.eval_every = 4000
  c.checkpoint_every = 2000

  common.apply_recipe(c, recipe, {'authors': AUTHORS})
  return common.apply_overrides(c, overrides)
