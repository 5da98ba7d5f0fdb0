"""--mode=predict: segment every image of a folder and write the class maps as PNGs.

    <output_dir>/color/<relative dir>/<stem>_color.png       every dataset
    <output_dir>/labelIds/<relative dir>/<stem>_labelIds.png  Cityscapes only

`_color.png` is a palette ('P' mode) PNG: viewers show the dataset's colours, and reading
it as indices (PIL, no conversion) gives the train ids, which is PASCAL VOC's
SegmentationClass format. `_labelIds.png` holds the official Cityscapes labelIds as a
single-channel uint8 PNG, what cityscapesscripts' evalPixelLevelSemanticLabeling reads:
point CITYSCAPES_RESULTS at <output_dir>/labelIds. The two kinds live in separate folders
because that script walks its results folder recursively and stops if two files match
one image (`<city>_<seq>_<frame>*.png`).

`check_request` checks main.py's --input, --output and --network before anything is built
or loaded; importing this module loads no jax (inference is imported when predicting).
"""
from __future__ import annotations

import difflib
import os
from typing import Sequence

from absl import logging
import ml_collections
import numpy as np
from PIL import Image

from ctt_jax import workdir_lock

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
# Cityscapes trainId (0..18) -> labelId (cityscapesscripts labels.py).
TRAIN_ID_TO_LABEL_ID = np.array(
    [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], np.uint8)


def train_ids_to_label_ids(train_ids) -> np.ndarray:
  """int [...] Cityscapes trainIds -> uint8 labelIds; anything else -> 0 ('unlabeled')."""
  train_ids = np.asarray(train_ids)
  known = (train_ids >= 0) & (train_ids < len(TRAIN_ID_TO_LABEL_ID))
  return np.where(known, TRAIN_ID_TO_LABEL_ID[np.where(known, train_ids, 0)],
                  0).astype(np.uint8)


def find_images(input_dir: str) -> list[str]:
  """Sorted paths, relative to `input_dir`, of its .png/.jpg/.jpeg files (recursively)."""
  if not os.path.isdir(input_dir):
    what = 'is a file, not a folder' if os.path.exists(input_dir) else 'does not exist'
    raise FileNotFoundError(f'--input={input_dir} {what}; pass a folder of .png or .jpg '
                            'images to predict on.')
  found = []
  for root, dirs, files in os.walk(input_dir):
    dirs.sort()
    for name in files:
      if name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(root, name), input_dir))
  if not found:
    raise FileNotFoundError(f'--input={input_dir} holds no .png or .jpg images; pass a '
                            'folder of images to predict on.')
  return sorted(found)


class RequestError(ValueError):
  """--input, --output or --network cannot work; the message names the flag and the fix."""


def check_request(input_dir: str, output_dir: str, network: str,
                  network_names: Sequence[str]) -> None:
  """Raises RequestError unless `input_dir` holds images, `output_dir` is (or can be
  created as) a writable folder and `network` is one of the run's `network_names`.
  Creates nothing."""
  if not input_dir or not output_dir:
    raise RequestError('--mode=predict needs --input=<folder of images> and '
                       '--output=<folder for the PNGs>.')
  if network not in network_names:
    close = difflib.get_close_matches(network, network_names, n=1)
    raise RequestError(
        f'--network={network} is not a network of this run; use one of '
        f'{", ".join(network_names)}' + (f' (did you mean {close[0]}?)' if close else '')
        + '.')
  try:
    find_images(input_dir)
    workdir_lock.check_output_dir(output_dir, '--output')
  except (FileNotFoundError, workdir_lock.WorkdirError) as e:
    raise RequestError(str(e)) from None


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB (greyscale, palette and RGBA images are converted)."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'), np.uint8)
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types)
    raise ValueError(f'Could not read image {path} ({type(e).__name__}: {e}); remove or '
                     'replace this file.') from None


def _output_path(output_dir: str, kind: str, subdir: str, filename: str) -> str:
  folder = os.path.join(output_dir, kind, subdir)
  os.makedirs(folder, exist_ok=True)
  return os.path.join(folder, filename)


def _save_palette_png(class_map: np.ndarray, palette: np.ndarray, path: str):
  image = Image.fromarray(class_map.astype(np.uint8))  # mode L; putpalette makes it P
  flat = np.zeros((256, 3), np.uint8)  # ids without a colour stay black
  flat[:len(palette)] = palette
  image.putpalette(flat.reshape(-1).tolist())
  image.save(path)


def predict_directory(config: ml_collections.ConfigDict, model, state, input_dir: str,
                      output_dir: str, palette, network: str = 'teacher_0') -> list[str]:
  """Predicts every image of `input_dir` at its own size; returns the written paths.

  Args:
    config: the run config (model, num_pairs, image_mean/std, data.name, sliding window).
    model: the Flax module of the checkpoint.
    state: a TrainState (students and teachers stacked).
    input_dir: folder of .png/.jpg images, searched recursively; the relative folders
      are kept in the output.
    output_dir: created if needed; layout in the module docstring.
    palette: uint8 [C, 3] class colours.
    network: 'teacher_k', 'student_k' or 'ensemble'.

  An image that cannot be decoded is skipped with a warning (the others are still
  written); the last line printed says how many files were written, where, and which
  images were skipped.
  """
  from ctt_jax import inference  # pylint: disable=g-import-not-at-top  (jax)
  palette = np.asarray(palette, np.uint8)
  if len(palette) > 256:
    raise ValueError(f'A palette PNG holds at most 256 classes, got {len(palette)}.')
  cityscapes = config.data.name == 'cityscapes'
  relative_paths = find_images(input_dir)
  logging.info('Predicting %d images of %s with %s.', len(relative_paths), input_dir,
               network)
  written, unreadable = [], []
  for i, relative in enumerate(relative_paths):
    try:
      image = read_image(os.path.join(input_dir, relative))
    except ValueError as e:  # one bad file must not cost the predictions of the others
      logging.warning('Skipped: %s', e)
      unreadable.append(relative)
      continue
    # One image at a time at its own size: each new size compiles once (jit cache).
    classes = np.asarray(inference.predict_batch(config, model, state, image[None],
                                                 network=network))[0]
    subdir, name = os.path.split(relative)
    stem = os.path.splitext(name)[0]
    path = _output_path(output_dir, 'color', subdir, f'{stem}_color.png')
    _save_palette_png(classes, palette, path)
    written.append(path)
    if cityscapes:
      path = _output_path(output_dir, 'labelIds', subdir, f'{stem}_labelIds.png')
      Image.fromarray(train_ids_to_label_ids(classes)).save(path)  # uint8 2-D: mode L
      written.append(path)
    if (i + 1) % 50 == 0:
      logging.info('Predicted %d / %d images.', i + 1, len(relative_paths))
  if unreadable and not written:
    raise ValueError(f'None of the {len(unreadable)} images in {input_dir} could be read '
                     f'(e.g. {unreadable[0]}); pass a folder of valid .png or .jpg images.')
  summary = (f'Wrote {len(written)} PNG files for {len(relative_paths) - len(unreadable)} '
             f'images to {output_dir}')
  if unreadable:
    summary += (f'; skipped {len(unreadable)} unreadable images ({", ".join(unreadable[:5])}'
                f'{", ..." if len(unreadable) > 5 else ""})')
  print(summary + '.', flush=True)
  return written
