"""The training program: data, state, the sharded step, CLU metrics, orbax checkpoints,
periodic evaluation; `evaluate_checkpoint` and `predict` for the other modes of main.py.

Read it top to bottom: `train_and_evaluate` is the whole loop; the helpers below it each
do one thing (log a window of metrics, evaluate and write, checkpoint).
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any, Optional

from absl import logging
from clu import metric_writers
from clu import parameter_overview
import jax
import ml_collections
import numpy as np

from ctt_jax import checkpointing
from ctt_jax import config_validation
from ctt_jax import data as data_lib
from ctt_jax import inference
from ctt_jax import layout as layout_lib
from ctt_jax import methods as methods_lib
from ctt_jax import metrics as metrics_lib
from ctt_jax import models
from ctt_jax import predict as predict_lib
from ctt_jax import scaling
from ctt_jax import sharding
from ctt_jax import stacked_networks
from ctt_jax import train_state as state_lib
from ctt_jax import train_step as step_lib
from ctt_jax import visualize
from ctt_jax import workdir_lock


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the last good checkpoint is left untouched."""


class Interrupted(RuntimeError):
  """SIGTERM (preemption) or SIGINT (Ctrl-C) arrived; a checkpoint was written and the
  run stopped. `exit_status` is 128 + the signal's number, as a shell reports a process
  killed by it: schedulers requeue on 143 (SIGTERM), shells show 130 (SIGINT)."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_status = 128 + int(signum)


class _StopSignals:
  """SIGTERM and SIGINT become a flag the loop checks between steps, so a stop always
  goes through a checkpoint. A repeated signal only logs: raising there could interrupt
  the final save, which is the one thing the user is waiting for."""

  def __init__(self):
    self.received: Optional[int] = None  # the first signal's number
    self._previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread (e.g. some test runners): no handler
        pass

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.received is None:
      self.received = signum
      logging.warning('%s received: saving a checkpoint after this step and stopping.', name)
    else:
      logging.warning('%s received again: still stopping; the checkpoint is being written, '
                      'so wait for it (SIGKILL would lose the steps since the last one).', name)

  def restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


class Run:
  """What every mode shares: config, method, model, mesh, checkpoints and state shapes.
  `read_only` (evaluation, prediction): the checkpoints are only read, never created or
  cleaned up, so a reader can run beside the training that writes them."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               asynchronous_checkpoints: bool, read_only: bool = False):
    self.config, self.workdir = config, workdir
    self.method = methods_lib.from_config(config)
    # batch x image rows (layout.py); the state is replicated, so any slice restores it.
    self.layout = layout_lib.plan_for_config(config, jax.device_count())
    self.mesh = sharding.make_mesh(layout=self.layout)
    self.model = models.get_model(config.model, config.num_classes)
    self.image_shape = tuple(config.data.crop_size)
    self.manager = checkpointing.make_manager(workdir, config.keep_checkpoints,
                                              asynchronous=asynchronous_checkpoints,
                                              read_only=read_only)
    abstract = state_lib.abstract_train_state(config, self.model, self.image_shape)
    self.abstract_state = checkpointing.abstract_with_sharding(
        abstract, sharding.replicated(self.mesh))

  def restore(self, step: Optional[int] = None, *, quarantine: bool = False,
              allow_unverified: bool = False):
    """(state, step) of checkpoint `step`, or the newest verified one (a corrupt or
    unverified newer step is reported and, with `quarantine` (training), moved aside)."""
    if self.manager.latest_step() is None:
      raise FileNotFoundError(_no_checkpoint_message(self.workdir))
    return checkpointing.restore(self.manager, self.abstract_state, step,
                                 quarantine=quarantine, allow_unverified=allow_unverified)

  def jit_eval_step(self, datasets):
    """The eval step on the training mesh; eval images' rows split as `pixel_spec` says."""
    batch = int(self.config.data.eval_batch_size)
    layout_lib.check_eval(self.layout, batch, datasets.eval_size[0])
    return sharding.jit_eval_step(inference.make_eval_step(self.config, self.model),
                                  self.mesh, sharding.eval_batch_shardings(self.mesh, batch))

  def batch_ranges(self) -> dict[str, tuple[int, int]]:
    """This process's images of the global train and eval batches (shared images are
    read by every process that holds some of their rows)."""
    return {'train_range': sharding.process_batch_range(self.mesh, self.config.batch_size),
            'eval_range': sharding.process_batch_range(
                self.mesh, self.config.data.eval_batch_size)}

  def init_state(self):
    config = self.config
    state = state_lib.init_train_state(config, self.model, jax.random.key(config.seed),
                                       self.image_shape,
                                       variables_hook=variables_hook(config))
    if self.method.stage1_teacher:
      state = _stage1_teacher(self, state)
    return sharding.replicate(state, self.mesh)


def variables_hook(config):
  """`hook(variables, k)` loading student k's converted pretrained weights (each student
  keeps its own random head), or None without model.pretrained. model.pretrained names
  one checkpoint for every pair or one per pair: the authors' code starts its first
  student from the COCO DeepLab and its second from torchvision's ImageNet ResNet-101."""
  from ctt_jax.models import weights  # pylint: disable=g-import-not-at-top
  paths = weights.pretrained_paths(config.model.pretrained, int(config.num_pairs))
  if not paths:
    return None
  for path in set(paths):
    # --bgr-to-rgb exists to read RGB; fed BGR, the flipped conv would see RGB again.
    if config.image_channel_order == 'bgr' and weights.input_channels_flipped(path):
      raise ValueError(f'{path} was converted with --bgr-to-rgb but image_channel_order is '
                       'bgr; convert the original checkpoint again without --bgr-to-rgb.')
  loaded = {path: weights.load_pretrained(path, config.model) for path in set(paths)}
  return lambda variables, k: weights.merge_pretrained(
      variables, loaded[paths[k]], skip_head=bool(config.model.skip_head))


def _stage1_teacher(run: Run, state):
  """Self-training stage 2: the fixed teachers are stage 1's (supervised) students."""
  stage1 = run.config.self_training_teacher_workdir
  if not stage1:
    raise ValueError(f'method={run.method.name} needs self_training_teacher_workdir=<workdir '
                     'of a finished method=supervised run>.')
  manager = checkpointing.make_manager(stage1, keep=1, asynchronous=False, read_only=True)
  if manager.latest_step() is None:
    raise FileNotFoundError(f'self_training_teacher_workdir={stage1!r} has no checkpoint; '
                            'train stage 1 with method=supervised there first.')
  stage1_state, _ = checkpointing.restore(manager, run.abstract_state)
  return state.replace(teacher_params=stage1_state.params,
                       teacher_batch_stats=stage1_state.batch_stats)


class _TrainLog:
  """Training metrics read one step late (so dispatch stays asynchronous), checked for
  non-finite losses, averaged over `log_every` steps, written, and summed up in one
  progress line."""

  def __init__(self, run: Run, writer, images_per_step: int, total_steps: int,
               class_names: tuple[str, ...]):
    self.run, self.writer, self.images_per_step = run, writer, images_per_step
    self.total_steps, self.class_names = total_steps, class_names
    self.pending, self.window, self.window_start = None, [], time.time()
    self.last_saved = run.manager.latest_step()
    self.warned_banks = False

  def check(self, step: int, metrics) -> dict[str, float]:
    values = {k: np.asarray(v) if np.ndim(v) else float(v)
              for k, v in jax.device_get(metrics).items()}
    if values.get('loss_finite', 1.0) < 1.0 or not math.isfinite(values['loss']):
      where = (f'The last good checkpoint (step {self.last_saved}) in {self.run.workdir}/'
               'checkpoints is intact: lower the learning rate or check the data, then '
               'rerun the same command to resume from it.' if self.last_saved is not None
               else 'No checkpoint was written yet: lower the learning rate or check the '
               'data, then start again.')
      raise NonFiniteLossError(f'The training loss became {values["loss"]} at step {step}; '
                               f'the update was not applied and the run stopped. {where}')
    return values

  def flush_pending(self):
    """Checks the metrics not read yet (before a checkpoint, and at the end)."""
    if self.pending is not None:
      self.window.append(self.check(*self.pending))
      self.pending = None

  def add(self, step: int, metrics, write: bool, bank_count=None):
    """Metrics of step `step` (0-based); `write` averages and writes the window.
    `bank_count`: the state's per-class bank fill [n, C], read only when writing."""
    self.flush_pending()
    self.pending = (step, metrics)
    if not write:
      return
    self.flush_pending()
    last = self.window[-1]
    scalars = {k: float(np.mean([m[k] for m in self.window])) for k in last
               if np.ndim(last[k]) == 0}
    if 'pseudo_confusion' in last:
      scalars.update(self._pseudo_label_iou(sum(m['pseudo_confusion'] for m in self.window)))
    steps_per_sec = len(self.window) / (time.time() - self.window_start)
    scalars['steps_per_sec'] = steps_per_sec
    scalars['images_per_sec'] = steps_per_sec * self.images_per_step
    self.writer.write_scalars(step + 1, {f'train/{k}': v for k, v in scalars.items()})
    self._progress(step + 1, scalars)
    self._warn_if_banks_cannot_fill(step + 1, bank_count)
    self.window, self.window_start = [], time.time()

  def _pseudo_label_iou(self, confusion) -> dict[str, float]:
    """Per-class IoU of each pseudo-labelling network on the unlabeled images of the
    window (where the data has their labels): confirmation bias as it happens."""
    role = 'teacher' if self.run.method.pseudo_labels_from == 'teachers' else 'student'
    scalars = {}
    for k, cm in enumerate(confusion):
      miou, per_class = metrics_lib.iou_from_confusion(cm)
      scalars[f'pseudo_iou/{role}_{k}/miou'] = miou
      for name, iou in zip(self.class_names, per_class):
        if not math.isnan(iou):
          scalars[f'pseudo_iou/{role}_{k}/{name.replace(" ", "_")}'] = float(iou)
    return scalars

  def _progress(self, done: int, scalars: dict[str, float]):
    left = (self.total_steps - done) / max(scalars['steps_per_sec'], 1e-9)
    logging.info('Step %d/%d: loss %.4f, %.2f steps/s, ETA %dm%02ds.', done,
                 self.total_steps, scalars['loss'], scalars['steps_per_sec'],
                 left // 60, left % 60)

  def _warn_if_banks_cannot_fill(self, done: int, bank_count):
    method = self.run.method
    if (self.warned_banks or bank_count is None or not (method.use_hc or method.use_lc)
        or done < self.total_steps // 10):
      return
    warning = banks_cannot_fill(done, np.asarray(jax.device_get(bank_count)),
                                self.class_names, self.run.config.contrastive_start_step)
    if warning:
      self.warned_banks = True
      logging.warning('%s', warning)


def banks_cannot_fill(done: int, bank_count: np.ndarray, class_names: tuple[str, ...],
                      contrastive_start_step: int) -> Optional[str]:
  """The warning for memory banks that cannot fill, or None.

  HC/LC start when every class queue is full (contrastive_start_step -1); a queue takes
  labeled pixels the teacher predicts right. One still empty after a tenth of the run
  means a class absent from the labeled images or never predicted right there, which
  can keep the terms off for good; queues that are merely filling are no reason to warn.
  bank_count: int [n, C].
  """
  if contrastive_start_step >= 0:
    return None
  empty = [class_names[c] for c in np.flatnonzero((bank_count == 0).any(axis=0))]
  if not empty:
    return None
  names = ', '.join(repr(n) for n in empty)
  return (f'HC/LC have not started at step {done}: the memory-bank queue of class {names} '
          'is still empty (no labeled pixel of it was predicted right yet), and the '
          'contrastive terms start only when every queue is full; check that the labeled '
          'images contain it, or set contrastive_start_step to start anyway.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_unverified: bool = False) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, returns results.

  One run writes a workdir at a time: a second one is refused (workdir_lock), and so is a
  resume whose config changes more than the keys that are safe to change. The dataset is
  looked up before anything is built or created, and a run that fails leaves none of the
  directories it created behind if they are still empty. Resuming uses the newest
  verified checkpoint; `allow_unverified` lets it use a newer one without a digest.
  """
  source = data_lib.load_source(config)
  created = _missing_directories(workdir)
  try:
    workdir_lock.check_workdir(workdir)
    lock = workdir_lock.acquire(workdir)
    try:
      # Only under the lock: a refused run must not touch the holder's checkpoints/.
      created = _missing_directories(os.path.join(workdir, 'checkpoints')) + created
      return _train_and_evaluate(config, workdir, source, allow_unverified)
    finally:
      lock.release()
  except BaseException:
    _remove_if_empty(created)
    raise


def _missing_directories(path: str) -> list[str]:
  """`path` and its parents that do not exist yet, deepest first (none on object
  stores, which have no directories)."""
  if '://' in str(path):
    return []
  path, missing = os.path.abspath(path), []
  while not os.path.exists(path):
    missing.append(path)
    path = os.path.dirname(path)
  return missing


def _remove_if_empty(directories: list[str]) -> None:
  """Removes each directory that is still empty: a failed start leaves nothing behind,
  and whatever a run wrote stays (rmdir never deletes a file)."""
  for directory in directories:
    try:
      os.rmdir(directory)
    except OSError:
      pass  # not empty, or never created


def _check_resume(run: Run):
  """Refuses a resume whose config differs from config.json in unsafe keys; logs the
  safe differences (periods, total_steps, paths, ...)."""
  path = os.path.join(run.workdir, 'config.json')
  if run.manager.latest_step() is None or not os.path.exists(path):
    return
  with open(path) as f:
    stored = json.load(f)
  unsafe, safe = config_validation.compare_for_resume(stored, run.config.to_dict())
  if unsafe:
    raise config_validation.resume_error(run.workdir, unsafe)
  if safe:
    logging.warning('Resuming with changed keys (stored -> current): %s.',
                    config_validation.describe(safe))


def _initial_state(run: Run, allow_unverified: bool):
  """(state, step): the newest verified checkpoint's, or a new state at step 0."""
  if run.manager.latest_step() is None:
    return run.init_state(), 0
  state, step = run.restore(quarantine=True, allow_unverified=allow_unverified)
  logging.info('Resumed from the checkpoint of step %d in %s.', step, run.workdir)
  return state, step


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, source,
                        allow_unverified: bool) -> dict[str, Any]:
  config = scaling.apply(config)  # opt-in (scaling.rule); logs what it changes
  run = Run(config, workdir, asynchronous_checkpoints=True)
  _check_resume(run)
  state, step = _initial_state(run, allow_unverified)
  if step >= config.total_steps:
    return _report_finished(run, step)
  datasets = data_lib.build_datasets(config, start_step=step, source=source,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), **run.batch_ranges())
  writer = _start_writer(run, datasets, state, step)
  logging.info('Method %s, %d pair(s), %d labeled images, bank k_per_step=%d.',
               run.method.name, run.method.num_pairs, datasets.num_labeled,
               step_lib.bank_k_per_step(config, datasets.num_labeled))
  results, step = _train_loop(run, datasets, writer, state, step)
  if step < config.total_steps:
    logging.warning('Stopped at step %d (stop_at_step); rerun the same command to resume.',
                    step)
  if results and jax.process_index() == 0:
    _print_miou_table(results, datasets.class_names, step)
  return results


def _train_loop(run: Run, datasets, writer, state, step: int):
  """Steps from `step` to total_steps (or stop_at_step, or a stop signal), evaluating and
  checkpointing on the way; returns (the last evaluation's results, the last step)."""
  config, total = run.config, int(run.config.total_steps)
  step_fn = step_lib.make_train_step(config, run.model, datasets.num_labeled)
  train_step = None  # jitted for the first batch's shardings (sharding.batch_shardings)
  eval_step = run.jit_eval_step(datasets)
  eval_every = eval_period(config, datasets.num_labeled)
  log = _TrainLog(run, writer, run.method.input_streams * config.batch_size, total,
                  datasets.class_names)
  stop, base_rng, results = _StopSignals(), jax.random.key(config.seed + 1), {}
  try:
    while step < total:
      batch = {'labeled': next(datasets.labeled), 'unlabeled': next(datasets.unlabeled)}
      batch = sharding.global_batch(batch, run.mesh, config.batch_size)
      if train_step is None:
        train_step = sharding.jit_train_step(step_fn, run.mesh,
                                             sharding.batch_shardings(batch, run.mesh))
      state, metrics = train_step(state, batch, jax.random.fold_in(base_rng, step))
      step += 1
      log.add(step - 1, metrics, write=step % config.log_every == 0 or step == total,
              bank_count=state.banks.count)
      ranking = None
      if step % eval_every == 0 or step == total:
        results = _evaluate_and_write(run, datasets, eval_step, state, step, writer)
        ranking = {checkpointing.BEST_METRIC: results[results['best']]['miou']}
      stop_here = stop.received is not None or step == config.stop_at_step
      if step % config.checkpoint_every == 0 or step == total or stop_here or ranking:
        log.flush_pending()  # never checkpoint a step whose loss was not checked
        checkpointing.save(run.manager, step, state, ranking)
        log.last_saved = step
      if stop_here:
        break
    log.flush_pending()
  finally:
    checkpointing.finalize(run.manager)  # a second Ctrl-C meanwhile only logs
    writer.flush()
    stop.restore()
  if stop.received is not None:
    name = signal.Signals(stop.received).name
    raise Interrupted(f'{name}: stopped at step {step} with a checkpoint in {run.workdir}; '
                      'rerun the same command to resume.', stop.received)
  return results, step


def eval_period(config: ml_collections.ConfigDict, num_labeled: int) -> int:
  """Steps between evaluations: `eval_every`, or `eval_every_epochs` epochs of the labeled
  set. The authors' code counts an epoch done once it has seen N_L labeled images, i.e.
  after ceil(N_L / batch_size) steps, and evaluates when the epoch count is a multiple of
  10 (cross_teacher_contr.py)."""
  if config.eval_every_epochs <= 0:
    return int(config.eval_every)
  return int(config.eval_every_epochs) * -(-int(num_labeled) // int(config.batch_size))


def _start_writer(run: Run, datasets, state, step: int):
  """The CLU writer; process 0 also records the run (config, labeled ids, hparams)."""
  is_chief = jax.process_index() == 0
  # TensorBoard events only (process 0): the console gets the one progress line of
  # _TrainLog, not every scalar (clu's LoggingWriter would print them all).
  writer = (metric_writers.AsyncWriter(metric_writers.SummaryWriter(run.workdir))
            if is_chief else metric_writers.MultiWriter([]))
  if is_chief:
    data_lib.write_labeled_ids(datasets, run.workdir)
    with open(os.path.join(run.workdir, 'config.json'), 'w') as f:
      f.write(run.config.to_json_best_effort(indent=2))
  if step == 0:
    writer.write_hparams({k: v for k, v in _flatten(run.config).items()
                          if isinstance(v, (int, float, str, bool))})
    student = stacked_networks.tree_index(jax.device_get(state.params), 0)
    # The full table goes to TensorBoard's text tab; the log gets the count.
    writer.write_texts(0, {'parameters_of_one_student': '```\n' + (
        parameter_overview.get_parameter_overview(student)) + '\n```'})
    logging.info('%s parameters per student.',
                 f'{parameter_overview.count_parameters(student):,}')
  return writer


def _report_finished(run: Run, step: int) -> dict[str, Any]:
  """A rerun of a finished run: says so and prints the final evaluation again."""
  path = os.path.join(run.workdir, 'eval', f'step_{step:08d}.json')
  print(f'This run already finished: {run.workdir} holds the checkpoint of step {step} = '
        f'total_steps; raise total_steps to train further.', flush=True)
  if not os.path.exists(path):
    return {}
  results = metrics_lib.read_eval_json(path)
  if jax.process_index() == 0:
    _print_miou_table(results, results['class_names'], step)
  return results


def _evaluate_and_write(run: Run, datasets, eval_step, state, step: int, writer):
  size = run.config.data.eval_batch_size
  batches = (sharding.global_batch(b, run.mesh, size) for b in datasets.eval_batches())
  names = run.method.network_names()
  results = metrics_lib.evaluate(eval_step, state, batches, names, run.config.num_classes)
  writer.write_scalars(step, {f'val/miou_{name}': results[name]['miou'] for name in names})
  grid = _image_summaries(run, datasets, state, int(run.config.image_summaries))
  if grid is not None:
    writer.write_images(step, {'val/input_truth_' + '_'.join(names): grid})
  if jax.process_index() == 0:
    path = os.path.join(run.workdir, 'eval', f'step_{step:08d}.json')
    metrics_lib.write_eval_json(results, path, datasets.class_names)
  logging.info('Step %d: val mIoU %s (best: %s)', step,
               ', '.join(f'{n} {results[n]["miou"]:.4f}' for n in names), results['best'])
  return results


def _image_summaries(run: Run, datasets, state, count: int) -> Optional[np.ndarray]:
  """Input, ground truth and every network's prediction for the first val images."""
  if count <= 0:
    return None
  batch = next(iter(datasets.eval_batches()))
  images = batch['image'][:count]
  labels = np.where(batch['valid'][:count], batch['label'][:count],
                    run.config.ignore_label)
  predictions = {name: np.asarray(inference.predict_batch(
      run.config, run.model, state, images, network=name))
                 for name in run.method.network_names()}
  return visualize.summary_grid(images, labels, predictions, datasets.palette)


def _no_checkpoint_message(workdir: str) -> str:
  return (f'No checkpoint in {workdir}/checkpoints; train first or pass the workdir of a '
          'training run as --workdir.')


def _check_readable_run(workdir: str) -> None:
  """Evaluation and prediction: a workdir with checkpoints, checked before anything is
  built or loaded."""
  workdir_lock.check_workdir(workdir, for_writing=False)
  manager = checkpointing.make_manager(workdir, keep=1, asynchronous=False, read_only=True)
  if manager.latest_step() is None:
    raise FileNotFoundError(_no_checkpoint_message(workdir))


def evaluate_checkpoint(config, workdir, step: Optional[int] = None, *,
                        allow_unverified: bool = False) -> dict[str, Any]:
  """--mode=eval: scores every student and teacher of a checkpoint (the newest verified
  one unless `step`); prints the table, then writes the JSON."""
  _check_readable_run(workdir)
  run = Run(config, workdir, asynchronous_checkpoints=False, read_only=True)
  state, step = run.restore(step, allow_unverified=allow_unverified)
  data = data_lib.build_datasets(config, training=False, process_index=jax.process_index(),
                                 process_count=jax.process_count(), **run.batch_ranges())
  size = config.data.eval_batch_size
  batches = (sharding.global_batch(b, run.mesh, size) for b in data.eval_batches())
  results = metrics_lib.evaluate(run.jit_eval_step(data), state, batches,
                                 run.method.network_names(), config.num_classes)
  if jax.process_index() == 0:
    _print_miou_table(results, data.class_names, step)
    path = os.path.join(workdir, 'eval', f'eval_step_{step:08d}.json')
    try:
      metrics_lib.write_eval_json(results, path, data.class_names)
    except OSError as e:
      logging.error('Could not write %s (%s); the table above holds the results.', path,
                    e.strerror or e)
  return results


def predict(config, workdir, input_dir: str, output_dir: str, network: str = '',
            step: Optional[int] = None, *, allow_unverified: bool = False) -> list[str]:
  """--mode=predict: writes coloured (and Cityscapes labelId) PNGs for a folder of images.
  The flags are checked before anything is built or loaded."""
  method = methods_lib.from_config(config)
  network = network or method.default_network
  predict_lib.check_request(input_dir, output_dir, network, method.network_names())
  _check_readable_run(workdir)
  run = Run(config, workdir, asynchronous_checkpoints=False, read_only=True)
  state, _ = run.restore(step, allow_unverified=allow_unverified)
  _, palette = data_lib.class_info(config.data.name)
  return predict_lib.predict_directory(config, run.model, state, input_dir, output_dir,
                                       palette, network=network)


def _print_miou_table(results, class_names, step):
  names = [n for n in results if n not in ('best', 'class_names')]
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
