"""Random model variables for tests and benchmarks, drawn in numpy (no `init` compile)."""
from __future__ import annotations

import jax
import numpy as np


def random_variables(shapes, seed: int = 0):
  """Variables of the shapes in `shapes` (e.g. from `jax.eval_shape(model.init, ...)`)
  with O(1) activations: normal kernels scaled by 1/sqrt(fan-in), BN scale and running
  variance in [0.5, 1.5], everything else (biases, means) N(0, 0.1)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = rng.normal(0, 0.1, leaf.shape)
    return value.astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)
