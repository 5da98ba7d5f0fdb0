"""Per-dataset settings (SPEC "Optimisation and data") for configs/<dataset>.py to apply.

`apply_dataset_defaults(config, name)` sets config.data.name, the dataset's data.* keys
and its top-level keys (num_classes, batch_size); configs may override them afterwards.
"""
from __future__ import annotations

DATASET_DEFAULTS = {
    'cityscapes': dict(
        num_classes=19, batch_size=2,
        data=dict(split='1_30', resize=(512, 1024), crop_size=(256, 512),
                  scale_range=(1.0, 1.0), eval_protocol='paper')),
    'voc_aug': dict(
        num_classes=21, batch_size=10,
        data=dict(split='1_50', resize=(0, 0), crop_size=(321, 321),
                  scale_range=(0.5, 1.5), eval_size=(512, 512))),
    'voc_classic': dict(
        num_classes=21, batch_size=10,
        data=dict(split='1_16', resize=(0, 0), crop_size=(321, 321),
                  scale_range=(0.5, 1.5), eval_size=(512, 512))),
    # CamVid at the 240x180 of ../shared/data/camvid; use (352, 480) crops at full size.
    'camvid': dict(
        num_classes=11, batch_size=4,
        data=dict(split='1_8', resize=(0, 0), crop_size=(176, 240),
                  scale_range=(0.75, 1.25), eval_size=(0, 0))),
    'synthetic': dict(
        num_classes=5, batch_size=8,
        data=dict(split='1_8', resize=(0, 0), crop_size=(64, 64),
                  scale_range=(1.0, 1.25), synthetic_image_size=(64, 64),
                  eval_size=(0, 0), eval_batch_size=8)),
}


def apply_dataset_defaults(config, name: str):
  """Sets `name`'s defaults on `config` (an ml_collections.ConfigDict); returns it."""
  if name not in DATASET_DEFAULTS:
    raise ValueError(f'Unknown dataset {name!r}; use one of: '
                     + ', '.join(DATASET_DEFAULTS) + '.')
  settings = DATASET_DEFAULTS[name]
  config.data.name = name
  for key, value in settings['data'].items():
    config.data[key] = value
  for key, value in settings.items():
    if key != 'data':
      config[key] = value
  return config
