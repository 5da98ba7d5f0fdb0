"""One process of a run on CPU: `--num_processes` of these (gloo collectives,
`--local_devices` fake devices each) train a few CTT steps on the synthetic set on the
mesh the layout rule picks for `--batch_size`, each process reading only the images its
devices hold (with fewer images than processes, processes share an image and each keeps
its rows). Process 0 writes the final params to `--out` (.npz). With --num_processes=1
it is the single-process reference.
"""
import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument('--process_id', type=int, default=0)
parser.add_argument('--num_processes', type=int, default=1)
parser.add_argument('--port', type=int, default=0)
parser.add_argument('--local_devices', type=int, default=4)
parser.add_argument('--steps', type=int, default=3)
parser.add_argument('--batch_size', type=int, default=8)
parser.add_argument('--out', required=True)
args = parser.parse_args()

os.environ['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={args.local_devices} '
                           '--xla_backend_optimization_level=0')
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

jax.config.update('jax_cpu_collectives_implementation', 'gloo')
if args.num_processes > 1:
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{args.port}',
                             num_processes=args.num_processes, process_id=args.process_id)

from configs import demo  # pylint: disable=g-import-not-at-top
from ctt_jax import data, layout, models, sharding, train_state, train_step  # pylint: disable=g-import-not-at-top


def main():
  config = demo.get_config('model.width=4,model.feature_dim=8,bank_size=4,'
                           'data.crop_size=32x32,data.synthetic_image_size=32x32,'
                           f'batch_size={args.batch_size}')
  assert jax.process_count() == args.num_processes
  mesh = sharding.make_mesh(layout=layout.plan_for_config(config, jax.device_count()))
  start, stop = sharding.process_batch_range(mesh, config.batch_size)
  datasets = data.build_datasets(config, train_range=(start, stop))  # this process's images
  model = models.get_model(config.model, config.num_classes)
  state = train_state.init_train_state(config, model, jax.random.key(config.seed),
                                       tuple(config.data.crop_size))
  state = sharding.replicate(state, mesh)
  batches = []
  for _ in range(args.steps):
    local = {'labeled': next(datasets.labeled), 'unlabeled': next(datasets.unlabeled)}
    assert local['labeled']['image'].shape[0] == stop - start
    batches.append(sharding.global_batch(local, mesh, config.batch_size))
  step = sharding.jit_train_step(
      train_step.make_train_step(config, model, datasets.num_labeled), mesh,
      sharding.batch_shardings(batches[0], mesh))
  # Compile ahead of time, then meet at a barrier of the coordination service: gloo gives
  # up connecting if one process reaches the first collective much later than the other
  # (e.g. a slow compile on a loaded machine).
  compiled = step.lower(state, batches[0], jax.random.key(0)).compile()
  if jax.process_count() > 1:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    distributed.global_state.client.wait_at_barrier('ctt_step_compiled', 600_000)
  for i, batch in enumerate(batches):
    state, _ = compiled(state, batch, jax.random.key(i))
  leaves = jax.tree.leaves(state.params) + [state.banks.feats]
  if jax.process_index() == 0:
    # Replicated arrays: every process holds the full value on each of its devices.
    np.savez(args.out, *[np.asarray(x.addressable_data(0)) for x in leaves])
  print(f'process {jax.process_index()}/{jax.process_count()} devices '
        f'{jax.local_device_count()}/{jax.device_count()} mesh {dict(mesh.shape)} images '
        f'[{start}, {stop}) done', flush=True)


if __name__ == '__main__':
  main()
