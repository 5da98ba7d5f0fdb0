"""SGD with momentum, weight decay, poly learning-rate decay and a 10x head rate."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

_BATCH_NORM_NAME = re.compile(r'(^|_)(bn|batchnorm|norm)', re.IGNORECASE)


def poly_schedule(config: ml_collections.ConfigDict, base_lr: float) -> optax.Schedule:
  """lr * (1 - step / total_steps) ** power: the paper's poly decay (section 4.1)."""
  return optax.polynomial_schedule(
      init_value=base_lr, end_value=0.0, power=config.poly_power,
      transition_steps=max(int(config.total_steps), 1))


def param_groups(params, freeze_bn: bool):
  """Labels each leaf 'backbone', 'head' or 'frozen' (BatchNorm scale/bias when frozen).

  The top-level key names the group: `backbone` gets the base rate, the rest the head rate.
  Stacked (per-student) params keep the same tree structure, so this works for both.
  """
  def label(path, _):
    names = [getattr(p, 'key', str(p)) for p in path]
    if freeze_bn and any(_BATCH_NORM_NAME.search(n) for n in names[:-1]):
      return 'frozen'
    return 'backbone' if names and names[0] == 'backbone' else 'head'
  return jax.tree_util.tree_map_with_path(label, params)


def trained_grad_norm(grads, freeze_bn: bool):
  """Global L2 norm of the gradients the optimiser uses. Frozen leaves are left out, so
  XLA never computes their gradients (nothing else reads them)."""
  groups = jax.tree.leaves(param_groups(grads, freeze_bn))
  squares = [jnp.sum(g.astype(jnp.float32) ** 2)
             for g, group in zip(jax.tree.leaves(grads), groups) if group != 'frozen']
  return jnp.sqrt(sum(squares)) if squares else jnp.zeros((), jnp.float32)


def _sgd(config, lr):
  return optax.chain(
      # PyTorch's SGD(weight_decay=...) adds wd * param to the gradient before momentum.
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(learning_rate=poly_schedule(config, lr), momentum=config.momentum))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The paper's optimiser; the param tree must follow `param_groups`' naming."""
  freeze_bn = bool(config.model.freeze_bn)
  return optax.multi_transform(
      {'backbone': _sgd(config, config.lr),
       'head': _sgd(config, config.lr * config.head_lr_mult),
       'frozen': optax.set_to_zero()},
      lambda params: param_groups(params, freeze_bn))
