"""The built-in demo: CTT on the procedural synthetic scenes, a tiny CNN, CPU-sized.

    python main.py --config=configs/demo.py --workdir=/tmp/ctt_demo

Trains from scratch (no weights to download), evaluates every student and teacher on the
synthetic val set and prints the mIoU table. Overrides work as everywhere:
`configs/demo.py:method=supervised,total_steps=200`.
"""
from configs import common

SPLITS = ('1_8', '1_4', '1_2', 'full')


def get_config(arg=None):
  return common.dataset_config('synthetic', arg, SPLITS, '1_8', {
      'model.name': 'tiny', 'model.width': 16, 'model.feature_dim': 32,
      'model.freeze_bn': False,
      # From scratch: a larger rate than the paper's fine-tuning one, one rate everywhere.
      'lr': 0.02, 'head_lr_mult': 1.0, 'weight_decay': 1e-4, 'total_steps': 1500,
      'bank_size': 32, 'log_every': 50, 'eval_every': 500, 'checkpoint_every': 500,
      'image_summaries': 4})
