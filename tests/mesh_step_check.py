"""Run as a script with 8 fake CPU devices: the CTT step and the eval step on one device
and on (data, space) meshes of all 8 devices.

    python tests/mesh_step_check.py [tiny|deeplab]

For each mesh (2 x 4 with batch 2 + 2, 4 x 2 with 4 + 4, 1 x 8 with 1 + 1) the same
global batches go through 3 CTT steps on 1 device and on the mesh; prints one JSON line
with, per case, the largest difference of the losses (every step), of the new state
(params, teachers, batch-norm statistics, optimizer state), of the banks' features,
whether the banks' counters and the eval confusion matrices (one image over all 8
devices; on 2 x 4 also two images over 'data', and sliding windows) are equal, and the
trace counts.
Invoked by test_mesh.py in a subprocess because the device count is fixed when jax loads.
"""
import json
import os
import sys

os.environ['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=8 '
                           '--xla_backend_optimization_level=0')
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from ctt_jax import inference, layout, sharding, train_state, train_step
from tests.train_helpers import counting, make_batch, tiny_config, tiny_model

IMAGE = (32, 32)  # 8 feature rows at the tiny net's stride 4: enough for 8 row shards
STEPS = 3
LOSSES = ('loss', 'loss_sup', 'loss_ct', 'loss_hc', 'loss_lc')


def make_config(kind, batch):
  if kind == 'tiny':
    return tiny_config({'data.crop_size': IMAGE}, batch_size=batch)
  if kind == 'deeplab':
    # Strided and dilated convolutions, max-pooling, the ASPP-SE head, trained BN.
    return tiny_config({'model.name': 'deeplabv2', 'model.backbone': 'resnet18',
                        'model.layout': 'caffe', 'model.head': 'aspp_se',
                        'model.output_stride': 8, 'model.width_multiplier': 0.0625,
                        'data.crop_size': (64, 64)}, batch_size=batch)
  raise ValueError(f'Unknown kind {kind!r}; valid: tiny, deeplab.')


def train(config, mesh, batches):
  """(losses per step, final state, traces) of STEPS steps on `mesh`."""
  model = tiny_model(config)
  image = tuple(config.data.crop_size)
  state = sharding.replicate(
      train_state.init_train_state(config, model, jax.random.key(0), image), mesh)
  step_fn = counting(train_step.make_train_step(config, model, num_labeled=8))
  step, losses = None, []
  for i, host_batch in enumerate(batches):
    batch = sharding.global_batch(host_batch, mesh, config.batch_size)
    if step is None:
      step = sharding.jit_train_step(step_fn, mesh, sharding.batch_shardings(batch, mesh))
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append({k: float(metrics[k]) for k in LOSSES if k in metrics})
  assert batch['labeled']['image'].sharding.num_devices == mesh.size
  return losses, jax.device_get(state), step_fn.calls


def confusion(config, state, mesh, eval_batch, sliding):
  config = config.copy_and_resolve_references()
  config.eval_sliding_window = sliding
  fn = counting(inference.make_eval_step(config, tiny_model(config)))
  rng = np.random.default_rng(7)
  h, w = 2 * config.data.crop_size[0], 2 * config.data.crop_size[1]
  host = {'image': rng.integers(0, 256, (eval_batch, h, w, 3), dtype=np.uint8),
          'label': rng.integers(0, config.num_classes, (eval_batch, h, w), dtype=np.int32),
          'valid': np.ones((eval_batch, h, w), bool),
          'index': np.arange(eval_batch, dtype=np.int32)}
  step = sharding.jit_eval_step(fn, mesh, sharding.eval_batch_shardings(mesh, eval_batch))
  matrices = step(sharding.replicate(state, mesh),
                  sharding.global_batch(host, mesh, eval_batch))
  return np.asarray(jax.device_get(matrices)), fn.calls


def max_diff(a, b):
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - y),
                                                  initial=0.0)), a, b)
  return max(jax.tree.leaves(diffs), default=0.0)


def compare(kind, data, space, batch):
  config = make_config(kind, batch)
  image = tuple(config.data.crop_size)
  lay = layout.plan_for_config(config, 8)
  assert (lay.data, lay.space) == (data, space), lay  # the auto rule picks this mesh
  batches = [make_batch(i, batch=batch, image=image) for i in range(STEPS)]
  one = sharding.make_mesh(jax.devices()[:1])
  many = sharding.make_mesh(layout=lay)
  losses_1, state_1, _ = train(config, one, batches)
  losses_8, state_8, traces = train(config, many, batches)
  out = {
      'mesh': f'{data}x{space}', 'batch': batch, 'traces': traces,
      'loss_diff': max(abs(a[k] - b[k]) for a, b in zip(losses_1, losses_8) for k in a),
      'loss_keys': sorted(losses_1[0]),
      'state_diff': max_diff(
          (state_1.params, state_1.teacher_params, state_1.batch_stats,
           state_1.teacher_batch_stats, state_1.opt_state),
          (state_8.params, state_8.teacher_params, state_8.batch_stats,
           state_8.teacher_batch_stats, state_8.opt_state)),
      'params_moved': max_diff(state_1.params, jax.device_get(train_state.init_train_state(
          config, tiny_model(config), jax.random.key(0), image).params)),
      'bank_diff': max_diff(state_1.banks.feats, state_8.banks.feats),
      'bank_counts_equal': bool(np.array_equal(state_1.banks.count, state_8.banks.count)
                                and np.array_equal(state_1.banks.ptr, state_8.banks.ptr)),
      'bank_fill': float(np.mean(state_1.banks.count)),
  }
  # One image over all 8 devices on every mesh; on 2 x 4 also two images over 'data' and
  # sliding windows (one compile each).
  evals = [(1, False)] + ([(1, True), (2, False)] if (data, space) == (2, 4) else [])
  for eval_batch, sliding in evals:
    cm_1, _ = confusion(config, state_1, one, eval_batch, sliding)
    cm_8, eval_traces = confusion(config, state_1, many, eval_batch, sliding)
    name = f'eval_{eval_batch}{"_sliding" if sliding else ""}'
    out[name + '_equal'] = bool(np.array_equal(cm_1, cm_8))
    out[name + '_pixels'] = int(cm_1.sum())
    out['traces'] = max(out['traces'], eval_traces)
  return out


def main(kind):
  assert jax.device_count() == 8, jax.devices()
  cases = [(2, 4, 2), (4, 2, 4), (1, 8, 1)] if kind == 'tiny' else [(2, 4, 2)]
  print(json.dumps([compare(kind, *case) for case in cases]))


if __name__ == '__main__':
  main(sys.argv[1] if len(sys.argv) > 1 else 'tiny')
