"""Running the n stacked networks (students or teachers): the one way training,
evaluation and prediction do it.

Variables of n networks are stacked on a leading axis (`{'params': [n, ...],
'batch_stats': [n, ...]}`). `how` says how the n calls are laid out:
- 'unroll': n calls in the graph (training's default: XLA schedules them freely);
- 'vmap': one batched call (config `vmap_pairs`);
- 'scan': one compiled call run n times, holding one network's activations at a time
  (evaluation, where images are large).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any
LAYOUTS = ('unroll', 'vmap', 'scan')


def tree_index(tree: PyTree, k) -> PyTree:
  """Network k of a stacked tree (k may be traced)."""
  return jax.tree.map(lambda x: x[k], tree)


def tree_stack(trees: list[PyTree]) -> PyTree:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def num_networks(variables: PyTree) -> int:
  return jax.tree.leaves(variables)[0].shape[0]


def map_networks(fn: Callable[[PyTree], PyTree], variables: PyTree, how: str) -> PyTree:
  """[fn(variables of network k) for k < n], stacked on a leading axis."""
  if how == 'vmap':
    return jax.vmap(fn)(variables)
  if how == 'scan':
    return jax.lax.scan(lambda carry, v: (carry, fn(v)), None, variables)[1]
  if how == 'unroll':
    return tree_stack([fn(tree_index(variables, k)) for k in range(num_networks(variables))])
  raise ValueError(f'Unknown layout {how!r}; valid: {", ".join(LAYOUTS)}.')


def apply(model, params: PyTree, batch_stats: PyTree, images, *, train: bool, how: str,
          dropout_rng=None, images_per_network: bool = False):
  """Every network on the same images, or network k on images[k] with
  `images_per_network`: (outputs [n, ...], batch_stats [n, ...]).

  In train mode batch-norm uses batch statistics and the returned statistics are the
  updated running averages, and with `dropout_rng` each network draws its own dropout
  masks; in eval mode the statistics are returned unchanged and nothing is dropped.
  """
  def one(variables):
    x = variables['images'] if images_per_network else images
    network = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
    if train:
      rngs = {'dropout': variables['rng']} if 'rng' in variables else {}
      out, updates = model.apply(network, x, train=True, mutable=['batch_stats'], rngs=rngs)
      return out, updates.get('batch_stats', variables['batch_stats'])
    return model.apply(network, x, train=False), variables['batch_stats']

  tree = {'params': params, 'batch_stats': batch_stats}
  if images_per_network:
    tree['images'] = images
  if train and dropout_rng is not None:
    tree['rng'] = jax.random.split(dropout_rng, num_networks(params))
  return map_networks(one, tree, how)
