"""Run as a script with 8 fake CPU devices: the CTT step on 1 device vs 8 devices.

Prints 'max_param_diff=<float> max_bank_diff=<float> traces=<int>'. Invoked by
test_sharding.py in a subprocess because the device count must be fixed before jax loads.
"""
import os
import sys

os.environ['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=8 '
                           '--xla_backend_optimization_level=0')
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from ctt_jax import sharding, train_state, train_step
from tests.train_helpers import IMAGE, make_batch, tiny_config, tiny_model


def run(devices, steps=3):
  config = tiny_config(batch_size=8)
  model = tiny_model(config)
  mesh = sharding.make_mesh(devices)
  state = train_state.init_train_state(config, model, jax.random.key(0), IMAGE)
  state = sharding.replicate(state, mesh)
  step_fn = train_step.make_train_step(config, model, num_labeled=8)
  step = sharding.jit_train_step(step_fn, mesh)
  for i in range(steps):
    batch = sharding.global_batch(make_batch(i, batch=8), mesh)
    state, metrics = step(state, batch, jax.random.key(i))
  assert batch['labeled']['image'].sharding.num_devices == len(devices)
  return jax.device_get(state), step_fn.trace_count[0]


def main():
  assert jax.device_count() == 8, jax.devices()
  one, _ = run(jax.devices()[:1])
  eight, traces = run(jax.devices())
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - b))),
                       one.params, eight.params)
  bank_diff = float(np.max(np.abs(one.banks.feats - eight.banks.feats)))
  assert np.array_equal(one.banks.count, eight.banks.count)
  print(f'max_param_diff={max(jax.tree.leaves(diffs))} max_bank_diff={bank_diff} '
        f'traces={traces}')


if __name__ == '__main__':
  main()
