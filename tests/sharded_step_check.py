"""Run as a script with 8 fake CPU devices: the CTT step on 1 device vs 8 devices.

    python tests/sharded_step_check.py [tiny|deeplab_im2col]

`tiny`: the CTT step of the tiny test net. `deeplab_im2col`: the supervised step of a
DeepLabV2 on a ResNet-18 at width 1/16 with `model.conv_impl='im2col'` (the CPU path's
custom-VJP convolutions and stored block outputs) and trained BN (global-batch statistics).

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
from tests.train_helpers import IMAGE, counting, make_batch, tiny_config, tiny_model


def make_config(kind):
  if kind == 'tiny':
    return tiny_config(batch_size=8)
  if kind == 'deeplab_im2col':
    return tiny_config(**{
        'batch_size': 8, 'method': 'supervised', 'num_pairs': 1, 'model.name': 'deeplabv2',
        'model.backbone': 'resnet18', 'model.layout': 'torchvision',
        'model.output_stride': 8, 'model.width_multiplier': 0.0625,
        'model.conv_impl': 'im2col'})
  raise ValueError(f'Unknown kind {kind!r}; valid: tiny, deeplab_im2col.')


def run(devices, kind, steps=3):
  config = make_config(kind)
  model = tiny_model(config)
  mesh = sharding.make_mesh(devices)
  state = train_state.init_train_state(config, model, jax.random.key(0), IMAGE)
  state = sharding.replicate(state, mesh)
  step_fn = counting(train_step.make_train_step(config, model, num_labeled=8))
  step = sharding.jit_train_step(step_fn, mesh)
  for i in range(steps):
    batch = sharding.global_batch(make_batch(i, batch=8), mesh)
    state, metrics = step(state, batch, jax.random.key(i))
  assert batch['labeled']['image'].sharding.num_devices == len(devices)
  return jax.device_get(state), step_fn.calls


def main(kind):
  assert jax.device_count() == 8, jax.devices()
  one, _ = run(jax.devices()[:1], kind)
  eight, traces = run(jax.devices(), kind)
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - b))),
                       one.params, eight.params)
  bank_diff = float(np.max(np.abs(one.banks.feats - eight.banks.feats)))
  assert np.array_equal(one.banks.count, eight.banks.count)
  print(f'max_param_diff={max(jax.tree.leaves(diffs))} max_bank_diff={bank_diff} '
        f'traces={traces}')


if __name__ == '__main__':
  main(sys.argv[1] if len(sys.argv) > 1 else 'tiny')
