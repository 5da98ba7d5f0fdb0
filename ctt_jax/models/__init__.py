"""Segmentation networks. Every model maps images [B, H, W, 3] (normalised float) to
`{'logits': [B, h, w, C], 'features': [B, h, w, D]}` at the same (output-stride) size.

Convention the optimiser relies on: parameters under a top-level `backbone` submodule get
the base learning rate; every other top-level submodule is "head" (10x by default).
"""
from __future__ import annotations

import flax.linen as nn
import ml_collections

from ctt_jax.models.tiny import TinySegNet


def get_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds the network named by `model_config.name`."""
  name = model_config.name
  if name == 'tiny':
    return TinySegNet(
        num_classes=num_classes,
        width=int(model_config.width),
        feature_dim=int(model_config.feature_dim),
        use_batch_norm=not model_config.freeze_bn,
    )
  if name in ('deeplabv2', 'deeplabv3plus'):
    from ctt_jax.models import deeplab  # pylint: disable=g-import-not-at-top
    return deeplab.build_deeplab(model_config, num_classes)
  raise ValueError(
      f'Unknown model.name {name!r}; valid names: tiny, deeplabv2, deeplabv3plus.')
