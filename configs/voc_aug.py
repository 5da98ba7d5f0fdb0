"""PASCAL VOC 2012 aug (10582 train, 1449 val), the paper's Table 2: DeepLabV2-ResNet101,
random scale 0.5-1.5, 321x321 crops, batch 10 + 10, 80k steps.

Partitions: 1_50 (212 labeled), 1_20 (529), 1_8 (1322), 1_4 (2645), full.
"""
from configs import common

SPLITS = ('1_50', '1_20', '1_8', '1_4', 'full')


def get_config(arg=None):
  return common.dataset_config('voc_aug', arg, SPLITS, '1_50',
                               {**common.CAFFE_INPUT, 'model.head': 'aspp_se'},
                               default_recipe='authors',
                               recipe_settings={'authors': {
                                   **common.VOC_AUTHORS,
                                   'eval_every_epochs': 10,  # their `epoch % 10 == 0`
                                   # configVOC.json: split_id_list 1 (splits/README.md)
                                   'data.partition_source': 'authors'}})
