"""The ('data', 'space') mesh: batch x image rows; the train state replicated.

    layout = layout_lib.plan_for_config(config, jax.device_count())   # ctt_jax/layout.py
    mesh = make_mesh(layout=layout)
    step = jit_train_step(step_fn, mesh, train_batch_shardings(mesh, batch))

The step and eval are the same global-view functions on every mesh: they are jitted once
with explicit in/out shardings and XLA's partitioner inserts the collectives. Per-pixel
arrays [B, H, W, ...] are split over 'data' (images) and 'space' (rows); a convolution then
exchanges its halo rows with the neighbouring shard, and batch-norm statistics, ClassMix's
roll over the batch, the banks' ranking and the losses reduce over both axes, so they keep
their single-device meaning (tests/test_mesh.py checks losses, state and banks).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ctt_jax import layout as layout_lib

DATA, SPACE = 'data', 'space'


def make_mesh(devices=None, layout: Optional[layout_lib.Layout] = None) -> Mesh:
  """A 2-D (data, space) mesh over `devices` (default all global devices); without a
  layout, every device on 'data' (plain data parallelism).

  Auto axis types keep GSPMD propagation (jax.make_mesh now defaults to Explicit types,
  which would require every op on a sharded batch to name its output sharding).
  """
  devices = jax.devices() if devices is None else list(devices)
  if layout is None:
    layout = layout_lib.Layout(len(devices), 1)
  if layout.num_devices != len(devices):
    raise ValueError(f'{layout} needs {layout.num_devices} devices, got {len(devices)}.')
  auto = jax.sharding.AxisType.Auto
  return jax.make_mesh((layout.data, layout.space), (DATA, SPACE), devices=devices,
                       axis_types=(auto, auto))


def mesh_layout(mesh: Mesh) -> layout_lib.Layout:
  return layout_lib.Layout(mesh.shape[DATA], mesh.shape[SPACE])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Split over the batch axis only (every device of a 'space' row holds whole images)."""
  return NamedSharding(mesh, P(DATA))


def pixel_spec(ndim: int, batch: int, mesh: Mesh) -> P:
  """PartitionSpec of a batch array [B, (H, W, ...)]: images over 'data' and rows over
  'space'; a batch that does not split over 'data' (one eval image) has its rows split
  over every device instead. 1-D arrays (an index per image) follow the batch."""
  if batch % mesh.shape[DATA] == 0:
    return P(DATA, SPACE) if ndim >= 2 else P(DATA)
  return P(None, (DATA, SPACE)) if ndim >= 2 else P()


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
  """NamedShardings for a batch pytree of arrays or ShapeDtypeStructs (`pixel_spec`)."""
  return jax.tree.map(lambda x: NamedSharding(mesh, pixel_spec(x.ndim, x.shape[0], mesh)),
                      batch)


def eval_batch_shardings(mesh: Mesh, batch: int) -> dict[str, NamedSharding]:
  """The eval batch's shardings (docs/INTERFACES.md: image, label, valid, index)."""
  ranks = {'image': 4, 'label': 3, 'valid': 3, 'index': 1}
  return {k: NamedSharding(mesh, pixel_spec(r, batch, mesh)) for k, r in ranks.items()}


def process_batch_range(mesh: Mesh, batch: int) -> tuple[int, int]:
  """[start, stop) of the global batch this process's devices hold (images of a batch
  array laid out by `pixel_spec`).

  When a slice has more processes than the batch has images, several processes share an
  image: each reads it whole (same stream position) and keeps the rows its devices hold.
  """
  sharding = NamedSharding(mesh, pixel_spec(2, batch, mesh))
  indices = sharding.addressable_devices_indices_map((batch, mesh.size)).values()
  starts = [i[0].start or 0 for i in indices]
  stops = [batch if i[0].stop is None else i[0].stop for i in indices]
  return min(starts), max(stops)


def global_batch(local_batch: Any, mesh: Mesh, global_size: Optional[int] = None) -> Any:
  """This process's numpy images [stop - start, H, W, ...] of a global batch of
  `global_size` (see `process_batch_range`; default: equal shares of every process) ->
  global jax.Arrays laid out by `pixel_spec`. Every process passes whole images; each
  device takes its rows."""
  def put(x):
    x = np.asarray(x)
    size = x.shape[0] * jax.process_count() if global_size is None else global_size
    shape = (size,) + x.shape[1:]
    spec = NamedSharding(mesh, pixel_spec(x.ndim, size, mesh))
    return jax.make_array_from_process_local_data(spec, x, shape)
  return jax.tree.map(put, local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def jit_train_step(step_fn: Callable, mesh: Mesh, batch_sharding: Any = None,
                   donate: bool = True) -> Callable:
  """jit(step): state, rng and metrics replicated; the batch by `batch_sharding` (a pytree
  of shardings, see `batch_shardings`; default: split over 'data' only)."""
  rep = replicated(mesh)
  batch_sharding = batch_sharded(mesh) if batch_sharding is None else batch_sharding
  return jax.jit(step_fn, in_shardings=(rep, batch_sharding, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,) if donate else ())


def jit_eval_step(eval_fn: Callable, mesh: Mesh, batch_sharding: Any) -> Callable:
  """jit(eval_step): state replicated, the batch by `batch_sharding`, the confusion
  matrices replicated."""
  rep = replicated(mesh)
  return jax.jit(eval_fn, in_shardings=(rep, batch_sharding), out_shardings=rep)
