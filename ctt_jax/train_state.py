"""The train state: one pytree holding every pair's student, teacher, optimiser and bank.

Students are stacked on a leading axis of size `num_pairs` (params [n, ...]), so the EMA,
the optimiser and checkpointing are single tree operations whatever n is.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from ctt_jax import memory_bank
from ctt_jax import optim
from ctt_jax.stacked_networks import tree_index, tree_stack

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimiser steps taken
  params: PyTree  # students, stacked [n, ...]
  batch_stats: PyTree  # students' BatchNorm statistics, stacked ({} if none)
  teacher_params: PyTree  # EMA teachers, stacked
  teacher_batch_stats: PyTree
  opt_state: PyTree
  banks: memory_bank.MemoryBank  # feats [n, C, N, D], ptr/count [n, C]


def feature_dim(model, image_shape) -> int:
  """D of the model's `features` output, from shapes only (no compile)."""
  images = jax.ShapeDtypeStruct((1, *image_shape, 3), jnp.float32)
  def forward(rng, x):
    return model.init_with_output(rng, x, train=False)[0]
  out = jax.eval_shape(forward, jax.random.key(0), images)
  return out['features'].shape[-1]


def _stacked_init(model, rng, image_shape, num_pairs: int) -> PyTree:
  images = jnp.zeros((1, *image_shape, 3), jnp.float32)

  def init_one(key):
    variables = model.init(key, images, train=False)
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}

  return jax.vmap(init_one)(jax.random.split(rng, num_pairs))


def init_variables(model, rng, image_shape, num_pairs: int) -> PyTree:
  """Stacked variables {'params', 'batch_stats'} of `num_pairs` differently seeded students."""
  return jax.jit(_stacked_init, static_argnums=(0, 2, 3))(model, rng, image_shape, num_pairs)


def create_train_state(config: ml_collections.ConfigDict, variables: PyTree,
                       feature_dim_: int) -> TrainState:
  """Builds the state from stacked student variables (teachers start as copies)."""
  n = jax.tree.leaves(variables['params'])[0].shape[0]
  tx = optim.make_optimizer(config)
  bank = memory_bank.create(config.num_classes, config.bank_size, feature_dim_)
  banks = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), bank)
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # distinct buffers: the state is donated
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      teacher_params=copy(variables['params']),
      teacher_batch_stats=copy(variables['batch_stats']),
      opt_state=tx.init(variables['params']),
      banks=copy(banks))


def init_train_state(config: ml_collections.ConfigDict, model, rng, image_shape,
                     variables_hook: Optional[Callable[[PyTree, int], PyTree]] = None,
                     ) -> TrainState:
  """Initialises n students (different rng), their teachers, optimiser and banks.

  Args:
    config: the run config (num_pairs, num_classes, bank_size, optimiser keys, model).
    model: a Flax module returning {'logits', 'features'}.
    rng: PRNG key.
    image_shape: (H, W) of the training crops.
    variables_hook: `hook(variables, k)` is applied to student k's variables before
      stacking, e.g. to load its pretrained backbone weights (each its own head init).
  """
  variables = init_variables(model, rng, tuple(image_shape), int(config.num_pairs))
  if variables_hook is not None:
    students = [variables_hook(tree_index(variables, k), k)
                for k in range(config.num_pairs)]
    variables = tree_stack(students)
  return create_train_state(config, variables, feature_dim(model, tuple(image_shape)))


def abstract_train_state(config, model, image_shape) -> TrainState:
  """The state's shapes and dtypes, without allocating or compiling anything."""
  image_shape = tuple(image_shape)
  def build(rng):
    variables = _stacked_init(model, rng, image_shape, int(config.num_pairs))
    return create_train_state(config, variables, feature_dim(model, image_shape))
  return jax.eval_shape(build, jax.random.key(0))
