"""The training program: data, state, the sharded step, CLU metrics, orbax checkpoints,
periodic evaluation; `evaluate_checkpoint` and `predict` for the other modes of main.py.

Read it top to bottom: `train_and_evaluate` is the whole loop.
"""
from __future__ import annotations

import math
import os
import signal
import time
from typing import Any, Optional

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions
import jax
import ml_collections
import numpy as np

from ctt_jax import checkpointing
from ctt_jax import data as data_lib
from ctt_jax import evaluation
from ctt_jax import models
from ctt_jax import predict as predict_lib
from ctt_jax import sharding
from ctt_jax import train_state as state_lib
from ctt_jax import train_step as step_lib
from ctt_jax import visualize


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the last good checkpoint is left untouched."""


class _Preemption:
  """Turns SIGTERM (preemption) into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some test runners): no handler
      self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _variables_hook(config):
  """Loads converted pretrained weights into each student (same backbone, own head)."""
  if not config.model.get('pretrained'):
    return None
  from ctt_jax.models import weights  # pylint: disable=g-import-not-at-top
  pretrained = weights.load_pretrained(config.model.pretrained, config.model)
  return lambda variables: weights.merge_pretrained(
      variables, pretrained, skip_head=bool(config.model.skip_head))


def _self_training_teacher(config, model, image_shape, state):
  """Self-training stage 2: the fixed teachers are stage 1's (supervised) students."""
  stage1 = config.self_training_teacher_workdir
  if not stage1:
    raise ValueError('method=self_training needs self_training_teacher_workdir=<workdir of '
                     'a finished method=supervised run>.')
  manager = checkpointing.make_manager(stage1, keep=1, asynchronous=False)
  if manager.latest_step() is None:
    raise FileNotFoundError(f'self_training_teacher_workdir={stage1!r} has no checkpoint; '
                            'train stage 1 with method=supervised there first.')
  abstract = state_lib.abstract_train_state(config, model, image_shape)
  stage1_state, _ = checkpointing.restore(manager, abstract)
  return state.replace(teacher_params=stage1_state.params,
                       teacher_batch_stats=stage1_state.batch_stats)


def _host_scalars(metrics: dict[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _check_finite(metrics: dict[str, float], step: int, workdir: str, last_saved):
  if metrics.get('loss_finite', 1.0) < 1.0 or not math.isfinite(metrics['loss']):
    raise NonFiniteLossError(
        f'The training loss became {metrics["loss"]} at step {step}; the update was not '
        f'applied and the run stopped. The last good checkpoint (step {last_saved}) in '
        f'{workdir}/checkpoints is intact: lower the learning rate or check the data, '
        'then rerun the same command to resume from it.')


class Trainer:
  """What the three modes share: model, mesh, data, state, jitted functions."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               for_training: bool = True, asynchronous_checkpoints: bool = True):
    self.config, self.workdir = config, workdir
    self.mesh = sharding.make_mesh()
    self.model = models.get_model(config.model, config.num_classes)
    self.image_shape = tuple(config.data.crop_size)
    self.manager = checkpointing.make_manager(workdir, config.keep_checkpoints,
                                              asynchronous=asynchronous_checkpoints)
    abstract = state_lib.abstract_train_state(config, self.model, self.image_shape)
    self.abstract_state = checkpointing.abstract_with_sharding(
        abstract, sharding.replicated(self.mesh))
    self.step = 0
    self.state = None
    if self.manager.latest_step() is not None:
      self.state, self.step = checkpointing.restore(self.manager, self.abstract_state)
      logging.info('Resumed from the checkpoint of step %d in %s.', self.step, workdir)
    self.datasets = data_lib.build_datasets(
        config, start_step=self.step, process_index=jax.process_index(),
        process_count=jax.process_count())
    if for_training and self.state is None:
      self.state = self._init_state()
    eval_fn = evaluation.make_eval_step(config, self.model)
    rep, data = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    self.eval_step = jax.jit(eval_fn, in_shardings=(rep, data), out_shardings=rep)

  def _init_state(self):
    config = self.config
    rng = jax.random.key(config.seed)
    state = state_lib.init_train_state(config, self.model, rng, self.image_shape,
                                       variables_hook=_variables_hook(config))
    if config.method == 'self_training':
      state = _self_training_teacher(config, self.model, self.image_shape, state)
    return sharding.replicate(state, self.mesh)

  def evaluate(self, state) -> dict[str, Any]:
    batches = (sharding.global_batch(b, self.mesh) for b in self.datasets.eval_batches())
    return evaluation.evaluate(self.eval_step, state, batches, self.config)

  def image_summaries(self, state, count: int) -> Optional[np.ndarray]:
    """Input, ground truth and every network's prediction for the first val images."""
    if count <= 0:
      return None
    batch = next(iter(self.datasets.eval_batches()))
    images = batch['image'][:count]
    labels = np.where(batch['valid'][:count], batch['label'][:count],
                      self.config.ignore_label)
    predictions = {name: np.asarray(evaluation.predict_batch(
        self.config, self.model, state, images, network=name))
                   for name in evaluation.network_names(self.config)}
    return visualize.summary_grid(images, labels, predictions, self.datasets.palette)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, returns results."""
  os.makedirs(workdir, exist_ok=True)
  trainer = Trainer(config, workdir)
  datasets, mesh = trainer.datasets, trainer.mesh
  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if is_chief:
    data_lib.write_labeled_ids(datasets, workdir)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  if trainer.step == 0:
    writer.write_hparams({k: v for k, v in _flatten(config).items()
                          if isinstance(v, (int, float, str, bool))})
    parameter_overview.log_parameter_overview(
        state_lib.tree_index(jax.device_get(trainer.state.params), 0),
        msg='Parameters of one student')

  step_fn = step_lib.make_train_step(config, trainer.model, datasets.num_labeled)
  train_step = sharding.jit_train_step(step_fn, mesh)
  bank_k = step_lib.bank_k_per_step(config, datasets.num_labeled)
  logging.info('Method %s, %d pair(s), %d labeled images, bank k_per_step=%d.',
               config.method, config.num_pairs, datasets.num_labeled, bank_k)
  _warn_if_banks_cannot_fill(config)

  total = int(config.total_steps)
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer)
  preemption = _Preemption()
  base_rng = jax.random.key(config.seed + 1)
  state, step = trainer.state, trainer.step
  results = {}
  last_saved = trainer.manager.latest_step()
  pending = None  # metrics of the previous step, read one step late to keep dispatch async
  log_window, window_start = [], time.time()
  kill_at = int(os.environ.get('CTT_DEBUG_SIGKILL_AFTER_SAVE_STEP', '-1'))
  try:
    while step < total:
      batch = {'labeled': next(datasets.labeled), 'unlabeled': next(datasets.unlabeled)}
      batch = sharding.global_batch(batch, mesh)
      state, metrics = train_step(state, batch, jax.random.fold_in(base_rng, step))
      if pending is not None:
        prev_step, prev = pending
        prev = _host_scalars(prev)
        _check_finite(prev, prev_step, workdir, last_saved)
        log_window.append(prev)
      pending = (step, metrics)
      step += 1
      report(step)
      if step % config.log_every == 0 or step == total:
        last = _host_scalars(metrics)
        _check_finite(last, step - 1, workdir, last_saved)
        pending = None
        log_window.append(last)
        scalars = {f'train/{k}': float(np.mean([m[k] for m in log_window]))
                   for k in log_window[-1]}
        scalars['train/steps_per_sec'] = len(log_window) / (time.time() - window_start)
        streams = 1 if config.method == 'supervised' else 2  # labeled (+ unlabeled)
        scalars['train/images_per_sec'] = (scalars['train/steps_per_sec']
                                           * streams * config.batch_size)
        writer.write_scalars(step, scalars)
        log_window, window_start = [], time.time()
      metrics_for_ckpt = None
      if step % config.eval_every == 0 or step == total:
        with report.timed('eval'):
          results = _evaluate_and_write(trainer, state, step, writer)
        metrics_for_ckpt = {checkpointing.BEST_METRIC: results[results['best']]['miou']}
      stop_here = preemption.requested or step == config.stop_at_step
      if (step % config.checkpoint_every == 0 or step == total or stop_here
          or metrics_for_ckpt is not None):
        if pending is not None:  # never checkpoint a step whose loss was not checked
          _check_finite(_host_scalars(pending[1]), pending[0], workdir, last_saved)
        checkpointing.save(trainer.manager, step, state, metrics_for_ckpt)
        last_saved = step
        if step == kill_at:  # test hook: die while the asynchronous save is in flight
          os.kill(os.getpid(), signal.SIGKILL)
      if stop_here:
        logging.warning('Stopped at step %d (%s); rerun the same command to resume.', step,
                        'SIGTERM' if preemption.requested else 'stop_at_step')
        break
    if pending is not None:
      _check_finite(_host_scalars(pending[1]), pending[0], workdir, last_saved)
  finally:
    trainer.manager.wait_until_finished()
    preemption.restore()
    writer.flush()
  if results and is_chief:
    _print_miou_table(results, datasets.class_names, step)
  trainer.state = state
  return results


def _evaluate_and_write(trainer: Trainer, state, step: int, writer) -> dict[str, Any]:
  config = trainer.config
  results = trainer.evaluate(state)
  names = evaluation.network_names(config)
  writer.write_scalars(step, {f'val/miou_{name}': results[name]['miou'] for name in names})
  grid = trainer.image_summaries(state, int(config.image_summaries))
  if grid is not None:
    writer.write_images(step, {'val/input_truth_predictions': grid})
  if jax.process_index() == 0:
    path = os.path.join(trainer.workdir, 'eval', f'step_{step:08d}.json')
    evaluation.write_eval_json(results, path, trainer.datasets.class_names)
  best = results['best']
  logging.info('Step %d: val mIoU %s (best: %s)', step,
               ', '.join(f'{n} {results[n]["miou"]:.4f}' for n in names), best)
  return results


def evaluate_checkpoint(config, workdir, step: Optional[int] = None) -> dict[str, Any]:
  """--mode=eval: scores every student and teacher of a checkpoint, writes JSON."""
  trainer = Trainer(config, workdir, for_training=False, asynchronous_checkpoints=False)
  if trainer.manager.latest_step() is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints to evaluate; train '
                            'first or pass the workdir of a finished run.')
  state, step = checkpointing.restore(trainer.manager, trainer.abstract_state, step)
  results = trainer.evaluate(state)
  path = os.path.join(workdir, 'eval', f'eval_step_{step:08d}.json')
  if jax.process_index() == 0:
    evaluation.write_eval_json(results, path, trainer.datasets.class_names)
    _print_miou_table(results, trainer.datasets.class_names, step)
  return results


def predict(config, workdir, input_dir: str, output_dir: str, network: str = '',
            step: Optional[int] = None) -> list[str]:
  """--mode=predict: writes coloured (and Cityscapes labelId) PNGs for a folder of images."""
  trainer = Trainer(config, workdir, for_training=False, asynchronous_checkpoints=False)
  if trainer.manager.latest_step() is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints to predict with.')
  state, _ = checkpointing.restore(trainer.manager, trainer.abstract_state, step)
  network = network or ('ensemble' if config.method == 'ensemble' else 'teacher_0')
  return predict_lib.predict_directory(config, trainer.model, state, input_dir, output_dir,
                                       trainer.datasets.palette, network=network)


def _warn_if_banks_cannot_fill(config):
  if config.method == 'supervised' or not (config.use_hc or config.use_lc):
    return
  if config.contrastive_start_step < 0:
    logging.warning(
        'HC/LC start only when every queue of every bank holds %d features. A class that '
        'never appears (and is predicted correctly by the teacher) among the labeled '
        'pixels keeps its queue from filling, and then HC/LC never start: watch '
        'train/bank_fill and set contrastive_start_step to start anyway.', config.bank_size)


def _print_miou_table(results, class_names, step):
  names = [n for n in results if n != 'best']
  lines = [f'Validation mIoU at step {step}:', '| network | mIoU | '
           + ' | '.join(class_names) + ' |', '|---|---|' + '---|' * len(class_names)]
  for n in names:
    per_class = ' | '.join('-' if v is None or (isinstance(v, float) and math.isnan(v))
                           else f'{100 * v:.1f}' for v in results[n]['per_class_iou'])
    lines.append(f'| {n} | {100 * results[n]["miou"]:.2f} | {per_class} |')
  print('\n'.join(lines), flush=True)


def _flatten(config, prefix=''):
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flatten(v, prefix + k + '.'))
    else:
      out[prefix + k] = v
  return out

