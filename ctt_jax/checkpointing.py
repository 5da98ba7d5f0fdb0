"""Orbax checkpoints of the train state: keep the last K and the best by val mIoU.

A checkpoint holds the state pytree and a small JSON record (step, the data position, the
metrics that ranked it). The data streams are a pure function of (seed, step), so the step
is the whole data position and a restart on the same workdir resumes exactly.
Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
process killed while saving leaves the previous checkpoints intact and the partial one is
never restored.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

BEST_METRIC = 'val_miou'


def make_manager(workdir: str, keep: int, *, asynchronous: bool = True
                 ) -> ocp.CheckpointManager:
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=max(int(keep), 1)),
      checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, enable_async_checkpointing=asynchronous,
      cleanup_tmp_directories=True, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options, item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         metrics: Optional[dict[str, float]] = None) -> None:
  """Saves (asynchronously when the manager is) unless `step` is already saved."""
  if step in manager.all_steps():
    return
  meta = {'step': int(step), 'data_step': int(step), 'metrics': metrics or {}}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)),
               metrics=metrics or None, force=True)


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: Optional[int] = None) -> tuple[Any, int]:
  """Restores `step` (default: the latest complete one) into the shapes and shardings of
  `abstract_state` (a pytree of jax.ShapeDtypeStruct with `.sharding`)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {manager.directory}.')
  if step not in manager.all_steps():
    raise FileNotFoundError(f'No checkpoint for step {step} in {manager.directory}; '
                            f'available steps: {sorted(manager.all_steps())}.')
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored['state'], int(restored['meta']['data_step'])


def read_raw(manager: ocp.CheckpointManager, step: Optional[int] = None) -> tuple[Any, int]:
  """The saved state as a plain tree of arrays (for inspection and tests; no target)."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  return restored['state'], step


def abstract_with_sharding(abstract_state: Any, sharding) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      abstract_state)
