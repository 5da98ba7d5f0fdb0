"""Behaviour pin for the train step: 20 demo-config steps of every method, recorded once.

    python -m tests.step_regression --record   # writes tests/fixtures/step_regression.json

`tests/test_step_regression.py` reruns the same steps and compares every loss and a digest
of the final state with the recording: bitwise when run on the CPU (model name and vector
extensions) and jax version that recorded it; elsewhere, where XLA:CPU sums in another
order, the first steps to a tight tolerance and the rest to a measured drift bound. Re-record
only in a commit that changes behaviour on purpose, or moves the recording to another CPU,
and says so.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'step_regression.json')
STEPS = 20
# Every method, plus the switches that change the step's structure. contrastive_start_step=0
# so HC and LC act from the first step (the banks of the demo do not fill in 20 steps).
CASES = {
    'supervised': 'method=supervised',
    'mean_teacher': 'method=mean_teacher',
    'mutual': 'method=mutual',
    'dual_teacher': 'method=dual_teacher',
    'ctt': 'method=ctt',
    'ensemble': 'method=ensemble',
    'self_training': 'method=self_training',
    'ctt_3pairs_cutmix': 'method=ctt,num_pairs=3,unlabeled_aug=cutmix',
    'ctt_before_update': 'method=ctt,bank_push=before_update,ct_weighting=none',
}
COMMON = 'contrastive_start_step=0,batch_size=4'


def cpu_model() -> str:
  """Model name and vector extensions: the name alone is shared by VMs on different CPUs."""
  sys.path.insert(0, ROOT)
  from benchmarks import bench_utils  # pylint: disable=g-import-not-at-top
  return f'{bench_utils.cpu_name()} [{" ".join(bench_utils.cpu_vector_features())}]'


def _batches(config, count):
  """Deterministic demo batches: synthetic scenes, labeled and unlabeled halves."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ctt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  b = int(config.batch_size)
  height, width = config.data.crop_size
  images, labels = synthetic.make_split(7, 0, 2 * b * count, height, width)
  valid = np.ones((b, height, width), bool)
  valid[:, -5:, :] = False  # a padded border, as crops of small images have
  out = []
  for i in range(count):
    lo = 2 * b * i
    out.append({'labeled': {'image': images[lo:lo + b], 'label': labels[lo:lo + b]},
                'unlabeled': {'image': images[lo + b:lo + 2 * b], 'valid': valid}})
  return out


def _digest(tree) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def _sums(tree) -> list[float]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return [float(np.sum(np.asarray(x, np.float64))) for x in jax.tree.leaves(
      jax.device_get(tree))]


def build(arg: str):
  """(config, initial state, un-jitted step) of the demo config with overrides `arg`."""
  import jax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from configs import demo  # pylint: disable=g-import-not-at-top
  from ctt_jax import models, train_state, train_step  # pylint: disable=g-import-not-at-top
  config = demo.get_config(arg)
  model = models.get_model(config.model, config.num_classes)
  state = train_state.init_train_state(config, model, jax.random.key(0),
                                       tuple(config.data.crop_size))
  step = train_step.make_train_step(config, model, num_labeled=64)
  return config, state, step


def run_case(overrides: str) -> dict:
  """Losses of each step and digests of the final state for one config."""
  import jax  # pylint: disable=g-import-not-at-top
  config, state, step = build(f'{COMMON},{overrides}')
  jitted = jax.jit(step)
  losses = []
  for i, batch in enumerate(_batches(config, STEPS)):
    state, metrics = jitted(state, batch, jax.random.fold_in(jax.random.key(1), i))
    m = jax.device_get(metrics)
    losses.append({k: float(m[k]) for k in sorted(m) if k.startswith('loss')})
  final = {'students': state.params, 'student_stats': state.batch_stats,
           'teachers': state.teacher_params, 'teacher_stats': state.teacher_batch_stats,
           'banks': state.banks}
  return {'losses': losses,
          'digest': {k: _digest(v) for k, v in final.items()},
          'sums': {k: _sums(v) for k, v in final.items()}}


def record():
  import jax  # pylint: disable=g-import-not-at-top
  out = {'cpu': cpu_model(), 'jax': jax.__version__, 'steps': STEPS, 'common': COMMON,
         'cases': {name: run_case(o) for name, o in CASES.items()}}
  os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
  with open(FIXTURE, 'w') as f:
    json.dump(out, f, indent=1)
  print(f'wrote {FIXTURE}')


if __name__ == '__main__':
  # The same environment as the test suite (tests/conftest.py): values depend on it.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')
  parser = argparse.ArgumentParser()
  parser.add_argument('--record', action='store_true')
  if parser.parse_args().record:
    record()
