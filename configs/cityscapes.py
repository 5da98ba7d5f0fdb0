r"""Cityscapes: the paper's Table 1, and the setting of its ablations (Tables 4-9).

Trains CTT, two student-teacher pairs of DeepLabV2-ResNet101, on the labeled images of a
split of the 2975 training images (the rest unlabeled): images downsampled to 512x1024,
random 256x512 crops, 2 labeled + 2 unlabeled crops a step, 80k SGD steps. Scores the
networks on the 500 val images at 512x1024.

The paper's mIoU (%) of CTT on Cityscapes val (Table 1, DeepLabV2-ResNet101; its
supervised baseline in brackets). No paper-scale run of ctt-jax exists yet, so there is no
mIoU, hardware or run time of ours to set beside them:

  split  labeled  CTT    supervised
  1_30     100    59.53  (48.36)
  1_16     186    -      -        not in the paper
  1_8      372    64.04  (57.74)  the split of the ablations, Tables 4-9
  1_4      744    65.83  (61.63)
  1_2     1488    67.83  (63.13)  the paper counts 1487 images
  full    2975    -      (66.76)  full supervision: method=supervised,num_pairs=1

Commands. DATA holds leftImg8bit/ and gtFine/ (docs/DATA.md). COCO and IMAGENET are the
two ResNet-101 files the authors' code starts its students from, converted without
--bgr-to-rgb; COCO_RGB is the COCO file converted with it (docs/MODELS.md). The default
recipe, `authors`, trains as the authors' released code does:

  python main.py --workdir=runs/city_1_30 \
    --config='configs/cityscapes.py:1_30,data.data_dir=DATA,model.pretrained=(COCO,IMAGENET)'

`recipe=paper` trains the paper's text as this project reads it (docs/FIDELITY.md lists
the 15 rows where the two differ):

  python main.py --workdir=runs/city_1_30_paper \
    --config=configs/cityscapes.py:1_30,recipe=paper,data.data_dir=DATA,model.pretrained=COCO_RGB

An ablation is a few overrides after the split, e.g. Table 4's L_sup + L_ct row (add
data.data_dir and model.pretrained as above; the README lists every row of Tables 4-9):

  python main.py --workdir=runs/city_1_8_ct \
    --config=configs/cityscapes.py:1_8,use_hc=false,use_lc=false

Splits: 1_30, 1_16, 1_8, 1_4, 1_2, full (UniMatch's labeled lists, shipped in
ctt_jax/data/splits/cityscapes; the authors' own cannot be recovered).
"""
from configs import common

# Training steps per split: the paper trains every split for 80k iterations (section 4.1).
# (The authors' shipped configCityscapes.json says 16k; both recipes keep the paper's 80k.)
TOTAL_STEPS = {'1_30': 80_000, '1_16': 80_000, '1_8': 80_000, '1_4': 80_000,
               '1_2': 80_000, 'full': 80_000}
SPLITS = tuple(TOTAL_STEPS)

# The authors' Cityscapes rows, on top of the authors' recipe of configs/common.py.
# Input: their loader (data/cityscapes_loader.py, `transform`) reverses the RGB image to
# BGR, then subtracts its mean (73.158, 82.909, 72.392) position by position: B - 73.158,
# G - 82.909, R - 72.392, on 0..255, no std. In image_mean's R, G, B order that is
# (72.392, 82.909, 73.158) / 255, read by the network as B, G, R.
AUTHORS = {
    'image_channel_order': 'bgr',
    'image_mean': (72.39239876 / 255, 82.90891754 / 255, 73.15835921 / 255),
    # cross_teacher_contr.py: `if epoch % 10 == 0`, an epoch being ceil(N_L / batch_size)
    # steps: every 500 steps at 1_30, every 1860 at 1_8.
    'eval_every_epochs': 10,
}


def get_config(arg=None):
  split, recipe, overrides = common.parse_arg(arg, 'cityscapes', SPLITS, '1_30', 'authors')
  c = common.base_config()  # every key; the ones not set here keep the method's defaults
  c.data.name = 'cityscapes'
  c.data.split = split
  c.num_classes = 19

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
  c.phi = 0.75  # confidence that sends an anchor to HC (above) or LC (below), Table 8
  # L_ct weights every pixel by the batch's fraction of pseudo-labels at least this
  # confident (ClassMix's rule, which the authors' code keeps).
  c.ct_confidence_threshold = 0.968
  c.bank_size = 128  # N, features per class and pair (Table 7); recipe=authors: 256
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
  c.batch_size = 2  # labeled crops per step; the unlabeled batch has as many
  c.scaling.base_batch_size = c.batch_size  # the batch these numbers are for
  c.lr = 2.5e-4
  c.head_lr_mult = 10.0  # the authors' code: the head learns 10x faster
  c.momentum = 0.9
  c.weight_decay = 5e-4  # the authors' code; the paper gives none
  c.poly_power = 0.9
  c.total_steps = TOTAL_STEPS[split]

  # Data: 512x1024 images, random 256x512 crops, flipped half the time (recipe=authors: never).
  c.data.data_dir = ''  # leftImg8bit/ + gtFine/ ('' = $CTT_CITYSCAPES_DIR), or tfds' manual_dir
  c.data.source = 'auto'  # the folder when it exists, else tensorflow-datasets
  c.data.tfds_data_dir = ''  # '' = tfds' default
  c.data.splits_dir = ''  # '' = the shipped labeled lists
  c.data.resize = (512, 1024)
  c.data.crop_size = (256, 512)
  c.data.scale_range = (1.0, 1.0)  # no random scale
  c.data.hflip = True

  # Evaluation at 512x1024 as the paper's numbers were made ('full': at 1024x2048); every
  # student and teacher is scored (recipe=authors: the students, every 10 labeled epochs).
  c.data.eval_protocol = 'paper'
  c.data.eval_size = (0, 0)  # (0, 0): pad to data.resize
  c.data.eval_batch_size = 1
  c.eval_every = 4000
  c.checkpoint_every = 2000

  common.apply_recipe(c, recipe, {'authors': AUTHORS})
  return common.apply_overrides(c, overrides)
