"""Cityscapes, the paper's Table 1 / ablation setting: DeepLabV2-ResNet101, 256x512 crops of
512x1024 images, batch 2 labeled + 2 unlabeled, 80k steps.

    python main.py --config=configs/cityscapes.py:1_30 --workdir=DIR
    python main.py --config=configs/cityscapes.py:1_8,method=mean_teacher,num_pairs=1 ...

Partitions: 1_30 (100 labeled), 1_16 (186), 1_8 (372), 1_4 (744), 1_2 (1488), full.
Data: data.data_dir holding leftImg8bit/ + gtFine/ (or the tfds manual_dir zips).
"""
from configs import common

SPLITS = ('1_30', '1_16', '1_8', '1_4', '1_2', 'full')

# The authors' Cityscapes rows. Input: their loader (data/cityscapes_loader.py, `transform`)
# reverses the RGB image to BGR, then subtracts its mean (73.158, 82.909, 72.392) position
# by position: B - 73.158, G - 82.909, R - 72.392, on 0..255, no std. In image_mean's
# R, G, B order that is (72.392, 82.909, 73.158) / 255, read by the network as B, G, R.
AUTHORS = {
    'image_channel_order': 'bgr',
    'image_mean': (72.39239876 / 255, 82.90891754 / 255, 73.15835921 / 255),
    'eval_every_epochs': 10,  # cross_teacher_contr.py: `if epoch % 10 == 0`
}


def get_config(arg=None):
  return common.dataset_config('cityscapes', arg, SPLITS, '1_30',
                               {**common.CAFFE_INPUT, 'model.head': 'aspp_se'},
                               default_recipe='authors', recipe_settings={'authors': AUTHORS})
