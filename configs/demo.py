r"""The built-in demo: CTT on the procedural synthetic scenes, a tiny CNN, CPU-sized.

Trains two pairs of the `tiny` network from scratch (no weights to download) on 1/8 of
512 generated 64x64 scenes (the rest unlabeled), 8 + 8 images a step, 1500 steps;
evaluates every student and teacher on the 64 synthetic val scenes and prints the mIoU
table. Measured (README, 2-core CPU shared with other jobs): about 7 minutes, ending near
60.5 mIoU for each network (the best colour-only classifier scores 26).

    python main.py --config=configs/demo.py --workdir=runs/demo
    python main.py --config=configs/demo.py:method=supervised,total_steps=200 \
      --workdir=runs/demo_supervised

Splits: 1_8, 1_4, 1_2, full.
"""
from configs import common

SPLITS = ('1_8', '1_4', '1_2', 'full')

# The demo's small bank stays under the authors' recipe too.
AUTHORS = {'bank_size': 32}


def get_config(arg=None):
  split, recipe, overrides = common.parse_arg(arg, 'synthetic', SPLITS, '1_8', 'paper')
  c = common.base_config()  # every key; the ones not set here keep the method's defaults
  c.data.name = 'synthetic'
  c.data.split = split
  c.num_classes = 5
  c.data.synthetic_image_size = (64, 64)

  # CTT with the paper's weights and thresholds (base_config), a small bank.
  c.method = 'ctt'
  c.num_pairs = 2
  c.bank_size = 32

  c.model.name = 'tiny'
  c.model.width = 16
  c.model.feature_dim = 32
  c.model.freeze_bn = False

  # From scratch: a larger rate than the paper's fine-tuning one, one rate everywhere.
  c.batch_size = 8
  c.scaling.base_batch_size = c.batch_size
  c.lr = 0.02
  c.head_lr_mult = 1.0
  c.weight_decay = 1e-4
  c.total_steps = 1500

  c.data.resize = (0, 0)
  c.data.crop_size = (64, 64)
  c.data.scale_range = (1.0, 1.25)
  c.data.eval_size = (0, 0)
  c.data.eval_batch_size = 8
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.image_summaries = 4

  common.apply_recipe(c, recipe, {'authors': AUTHORS})
  return common.apply_overrides(c, overrides)
