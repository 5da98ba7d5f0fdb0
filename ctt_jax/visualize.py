"""Class maps to colour images, and the per-evaluation image summaries (numpy, host side)."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def colorize(class_map, palette, ignore_label: int = 255) -> np.ndarray:
  """int [...] class ids -> uint8 [..., 3] colours from `palette` uint8 [C, 3].

  `ignore_label`, and any id outside [0, C), is black.
  """
  class_map = np.asarray(class_map)
  palette = np.asarray(palette, np.uint8)
  known = (class_map >= 0) & (class_map < len(palette)) & (class_map != ignore_label)
  colours = palette[np.where(known, class_map, 0)]
  colours[~known] = 0
  return colours


def summary_grid(images, labels, predictions_by_network: Mapping[str, np.ndarray],
                 palette, ignore_label: int = 255, max_panel_width: int = 512,
                 gap: int = 2) -> np.ndarray:
  """One row of panels per image, for clu `writer.write_images`.

  Args:
    images: uint8 [B, H, W, 3] inputs.
    labels: int [B, H, W] ground truth (ignore -> black).
    predictions_by_network: name -> int [B, H, W], in display order (e.g. student_0,
      student_1, teacher_0, teacher_1[, ensemble]).
    palette: uint8 [C, 3].
    max_panel_width: panels wider than this are subsampled by an integer stride (nearest
      neighbour, so label colours stay exact), which keeps full-resolution summaries
      from bloating the event files.
    gap: width of the white separators between panels.

  Returns:
    uint8 [B, h, (2 + N) * w + (1 + N) * gap, 3]: input | ground truth | prediction of
    each network, left to right.
  """
  images = np.asarray(images, np.uint8)
  panels = [images, colorize(labels, palette, ignore_label)]
  panels += [colorize(p, palette, ignore_label) for p in predictions_by_network.values()]
  stride = max(1, math.ceil(images.shape[2] / max_panel_width))
  panels = [p[:, ::stride, ::stride] for p in panels]
  separator = np.full((*panels[0].shape[:2], gap, 3), 255, np.uint8)
  row = [panels[0]]
  for panel in panels[1:]:
    row += [separator, panel]
  return np.concatenate(row, axis=2)
