"""Classic PASCAL VOC 2012 (PseudoSeg protocol), the paper's Table 3: DeepLabV3+-ResNet101;
labeled = part of the 1464 train images, unlabeled = the rest of train_aug. Backbone
layout `deepbase` (the 64-64-128 deep stem of UniMatch's / CTT's ResNet-101 weights).

Partitions: 1_16 (92 labeled), 1_8 (183), 1_4 (366), 1_2 (732).
"""
from configs import common

SPLITS = ('1_16', '1_8', '1_4', '1_2')


def get_config(arg=None):
  return common.dataset_config('voc_classic', arg, SPLITS, '1_16', {
      'model.name': 'deeplabv3plus', 'model.layout': 'deepbase', 'model.output_stride': 16},
      default_recipe='authors',
      # Their DeepLabV3+ script feeds the VOC loader's 0..255 images minus the Caffe mean
      # (data/voc_off_dataset_labeled.py), not the ImageNet scaling its backbone was
      # trained with.
      # Their DeepLabV3+ script evaluates every 20 epochs (`if epoch % 20 == 0`).
      recipe_settings={'authors': {**common.CAFFE_INPUT, **common.VOC_AUTHORS,
                                   'eval_every_epochs': 20}})
