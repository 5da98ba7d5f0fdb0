"""Small dataset trees in the real on-disk layouts, for the data tests.

Every writer makes its own images (or copies the Cityscapes fixture frame), writes the
ID lists a `data.splits_dir` needs, and returns what it wrote. Nothing is downloaded.
"""
from __future__ import annotations

import io
import os
import shutil
import zipfile

import numpy as np
from PIL import Image

FIXTURE_ID = 'frankfurt_000000_000294'


def class_colours(num_classes: int) -> np.ndarray:
  """uint8 [C, 3] colours far apart, so a pixel's class can be read back from its colour."""
  k = np.arange(num_classes)
  return np.stack([(40 * k + 20) % 256, 255 - (70 * k) % 256, (110 * k + 60) % 256],
                  -1).astype(np.uint8)


def block_scene(rng: np.random.Generator, height: int, width: int, num_classes: int,
                block: int = 8, ignore_values: tuple[int, ...] = ()):
  """(image uint8 [H, W, 3], label uint8 [H, W]): random class blocks, image colour = class.

  The image encodes its label, so after any geometric augmentation the label can be
  checked against the image. `ignore_values` are extra label values (e.g. CamVid's 11),
  drawn in black.
  """
  values = list(range(num_classes)) + list(ignore_values)
  grid = rng.choice(values, size=(-(-height // block), -(-width // block)))
  label = np.kron(grid, np.ones((block, block), int))[:height, :width].astype(np.uint8)
  colours = np.zeros((256, 3), np.uint8)
  colours[:num_classes] = class_colours(num_classes)
  return colours[label], label


def _interior(label: np.ndarray) -> np.ndarray:
  """Pixels whose 3x3 neighbourhood has one label (bilinear images blend at edges)."""
  p = np.pad(label, 1, mode='edge')
  same = np.ones(label.shape, bool)
  for dy in range(3):
    for dx in range(3):
      same &= p[dy:dy + label.shape[0], dx:dx + label.shape[1]] == label
  return same


def colour_agreement(image, label, valid, num_classes: int) -> tuple[float, float]:
  """How well an augmented `block_scene` label still matches its image.

  Args: image uint8 [H, W, 3], label int [H, W], valid bool [H, W].
  Returns: (share of pixels checked: interior, labeled and valid; share of those whose
    colour decodes, by nearest class colour, to their label).
  """
  colours = class_colours(num_classes).astype(int)
  distance = ((image[..., None, :].astype(int) - colours) ** 2).sum(-1)
  check = _interior(label) & (label != 255) & valid
  agree = distance.argmin(-1)[check] == label[check]
  return float(check.mean()), float(agree.mean()) if agree.size else 0.0


def write_list(path: str, ids):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(i + '\n' for i in ids))


def write_voc_tree(root: str, num_train: int = 8, num_val: int = 3, labeled: int = 2,
                   size=(48, 40), seed: int = 0) -> dict:
  """<root>/data/{JPEGImages,SegmentationClassAug} + <root>/splits/{voc_aug,voc_classic}.

  Val images are given varied sizes (as in VOC). Returns {'data_dir', 'splits_dir',
  'train', 'val', 'labeled'} (ID lists). Partition '1_2' of voc_aug and voc_classic
  labels the first `labeled` training IDs; voc_classic's 'full' list is the first half.
  """
  rng = np.random.default_rng(seed)
  data_dir, splits_dir = os.path.join(root, 'data'), os.path.join(root, 'splits')
  os.makedirs(os.path.join(data_dir, 'JPEGImages'), exist_ok=True)
  os.makedirs(os.path.join(data_dir, 'SegmentationClassAug'), exist_ok=True)
  train = [f'2007_{k:06d}' for k in range(num_train)]
  val = [f'2008_{k:06d}' for k in range(num_val)]
  for k, image_id in enumerate(train + val):
    j = max(k - num_train, 0)
    h, w = size if k < num_train else (size[0] + 3 * j, size[1] + 5 * j)
    image, label = block_scene(rng, h, w, 21, ignore_values=(255,))
    Image.fromarray(image).save(os.path.join(data_dir, 'JPEGImages', image_id + '.jpg'),
                                quality=95)
    Image.fromarray(label).save(
        os.path.join(data_dir, 'SegmentationClassAug', image_id + '.png'))
  write_list(os.path.join(splits_dir, 'voc_aug', 'train_aug.txt'), train)
  write_list(os.path.join(splits_dir, 'voc_aug', 'val.txt'), val)
  write_list(os.path.join(splits_dir, 'voc_aug', '1_2.txt'), train[:labeled])
  write_list(os.path.join(splits_dir, 'voc_classic', 'train.txt'), train[:num_train // 2])
  write_list(os.path.join(splits_dir, 'voc_classic', '1_2.txt'), train[:labeled])
  return {'data_dir': data_dir, 'splits_dir': splits_dir, 'train': train, 'val': val,
          'labeled': train[:labeled]}


def write_camvid_tree(root: str, num_train: int = 16, num_val: int = 4, size=(36, 48),
                      seed: int = 0, with_lists: bool = False) -> dict:
  """SegNet layout <root>/{train,trainannot,val,valannot}/*.png (lossless, label 11 = void).

  With `with_lists`, also train.txt / val.txt in the SegNet style (absolute
  /SegNet/CamVid/... paths). Returns {'data_dir', 'train', 'val'} (IDs).
  """
  rng = np.random.default_rng(seed)
  written = {'data_dir': root}
  for split, count in (('train', num_train), ('val', num_val)):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, split + 'annot'), exist_ok=True)
    ids = [f'{split}_{k:04d}' for k in range(count)]
    for image_id in ids:
      image, label = block_scene(rng, *size, 11, ignore_values=(11,))
      Image.fromarray(image).save(os.path.join(root, split, image_id + '.png'))
      Image.fromarray(label).save(os.path.join(root, split + 'annot', image_id + '.png'))
    if with_lists:
      write_list(os.path.join(root, split + '.txt'),
                 [f'/SegNet/CamVid/{split}/{i}.png /SegNet/CamVid/{split}annot/{i}.png'
                  for i in ids])
    written[split] = ids
  return written


def extra_frame_id(k: int) -> str:
  """ID of the k-th extra training frame of the Cityscapes test trees."""
  return f'frankfurt_000001_{k:06d}'


def fixture_frame(fixture_dir: str, k: int = -1) -> tuple[np.ndarray, np.ndarray]:
  """(image uint8 [128, 256, 3], labelIds uint8 [128, 256]) of the fixture frame (k < 0)
  or of extra frame k: the fixture rolled right by 40 (k + 1) columns."""
  city = FIXTURE_ID.split('_')[0]
  stem = os.path.join(fixture_dir, '{}', 'val', city, FIXTURE_ID + '_{}.png')
  image = np.asarray(Image.open(stem.format('leftImg8bit', 'leftImg8bit')).convert('RGB'))
  label = np.asarray(Image.open(stem.format('gtFine', 'gtFine_labelIds')))
  shift = 0 if k < 0 else 40 * (k + 1)
  return np.roll(image, shift, axis=1), np.roll(label, shift, axis=1)


def write_cityscapes_tree(root: str, fixture_dir: str, extra_train: int = 0) -> dict:
  """The fixture frame as both the train and the val set of an extracted tree.

  `extra_train` more training frames (`fixture_frame(k)`, IDs `extra_frame_id(k)`) are
  added to train.txt only, so with partition '1_1' they are the unlabeled images.
  Returns {'data_dir', 'splits_dir', 'id', 'extra'}; splits/cityscapes has train, val and
  a '1_1' partition listing the fixture frame.
  """
  data_dir, splits_dir = os.path.join(root, 'data'), os.path.join(root, 'splits')
  for split in ('train', 'val'):
    for top in ('leftImg8bit', 'gtFine'):
      shutil.copytree(os.path.join(fixture_dir, top, 'val'),
                      os.path.join(data_dir, top, split), dirs_exist_ok=True)
  extra = [extra_frame_id(k) for k in range(extra_train)]
  city = FIXTURE_ID.split('_')[0]
  for k, image_id in enumerate(extra):
    image, label = fixture_frame(fixture_dir, k)
    for top, array, suffix in (('leftImg8bit', image, '_leftImg8bit.png'),
                               ('gtFine', label, '_gtFine_labelIds.png')):
      Image.fromarray(array).save(os.path.join(data_dir, top, 'train', city,
                                               image_id + suffix))
  write_list(os.path.join(splits_dir, 'cityscapes', 'train.txt'), [FIXTURE_ID] + extra)
  for name in ('val', '1_1'):
    write_list(os.path.join(splits_dir, 'cityscapes', name + '.txt'), [FIXTURE_ID])
  return {'data_dir': data_dir, 'splits_dir': splits_dir, 'id': FIXTURE_ID, 'extra': extra}


def write_cityscapes_zips(manual_dir: str, fixture_dir: str, extra_train: int = 0):
  """The two official zips, holding the fixture frame (upscaled to the 2048x1024 the tfds
  builder requires) as its train, val and test image, plus `extra_train` more training
  frames (`fixture_frame(k)` upscaled, IDs `extra_frame_id(k)`)."""
  os.makedirs(manual_dir, exist_ok=True)
  city = FIXTURE_ID.split('_')[0]
  frames = [(FIXTURE_ID, fixture_frame(fixture_dir), ('train', 'val', 'test'))] + [
      (extra_frame_id(k), fixture_frame(fixture_dir, k), ('train',))
      for k in range(extra_train)]
  zips = {name: zipfile.ZipFile(os.path.join(manual_dir, zip_name), 'w')
          for name, zip_name in (('leftImg8bit', 'leftImg8bit_trainvaltest.zip'),
                                 ('gtFine', 'gtFine_trainvaltest.zip'))}
  for image_id, (image, label), split_names in frames:
    for name, array, resample, suffix in (
        ('leftImg8bit', image, Image.BILINEAR, '_leftImg8bit.png'),
        ('gtFine', label, Image.NEAREST, '_gtFine_labelIds.png')):
      buffer = io.BytesIO()
      Image.fromarray(array).resize((2048, 1024), resample).save(buffer, 'PNG',
                                                                 compress_level=1)
      for split in split_names:
        zips[name].writestr(f'{name}/{split}/{city}/{image_id}{suffix}', buffer.getvalue())
  for z in zips.values():
    z.close()
