"""model.remat: the rematerialised backbones have the plain one's parameters and numbers."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctt_jax.models.resnet import ResNet


@functools.lru_cache(maxsize=None)  # the plain network is the reference of every case
def _loss_grads_and_stats(remat: str, depth: str):
  model = ResNet(depth, 'caffe', 8, 0.125, freeze_bn=False, conv_impl='xla', remat=remat)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params):
    out, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                               x, train=True, mutable=['batch_stats'])
    return sum(jnp.sum(v ** 2) for v in out.values()), updates

  (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      variables['params'])
  return variables, value, grads, updates


@pytest.mark.parametrize('remat,depth', [('stages', 'resnet18'), ('blocks', 'resnet18')])
def test_remat_keeps_parameters_values_and_gradients(remat, depth):
  plain = _loss_grads_and_stats('', depth)
  rematerialised = _loss_grads_and_stats(remat, depth)
  for a, b in zip(plain, rematerialised):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      # Recomputed activations may be fused and rounded differently: float32 noise only.
      scale = float(np.abs(np.asarray(x)).max()) or 1.0
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5 * scale)


def test_unknown_remat_names_the_choices():
  with pytest.raises(ValueError, match="Unknown model.remat 'layers'; valid: .*'blocks'"):
    ResNet('resnet18', remat='layers').init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
