"""Data-parallel sharding: a ('data',) mesh, the batch sharded, the train state replicated.

The step is jitted once with explicit in/out shardings (the modern form of pjit); XLA
inserts the collectives, so batch-norm statistics, the ClassMix batch roll and the
memory-bank selection are all over the global batch.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  """A 1-D ('data',) mesh over all (global) devices.

  Auto axis types keep GSPMD propagation (jax.make_mesh now defaults to Explicit types,
  which would require every op on a sharded batch to name its output sharding).
  """
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ('data',), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Per-process numpy batch (this host's slice) -> global jax.Arrays sharded on 'data'."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def jit_train_step(step_fn: Callable, mesh: Mesh, donate: bool = True) -> Callable:
  """jit(step) with the batch sharded over 'data' and state, rng, metrics replicated."""
  rep, data = replicated(mesh), batch_sharded(mesh)
  return jax.jit(step_fn, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,) if donate else ())
