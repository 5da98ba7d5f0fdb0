"""ctt-jax entry point: train, evaluate or predict.

    python main.py --config=configs/cityscapes.py:1_30 --workdir=DIR
    python main.py --config=configs/cityscapes.py:1_30 --workdir=DIR --mode=eval
    python main.py --config=... --workdir=DIR --mode=predict --input=IMAGES --output=OUT
    python main.py --config=... --workdir=DIR --mode=compile --topology=v5e:2x4  # docs/TPU.md

On several hosts (a Cloud TPU pod slice, multi-node GPUs) start the same command on every
host; `--distributed` (or the JAX_COORDINATOR_ADDRESS / cloud TPU environment) makes it call
jax.distributed.initialize() first.

Every error a user can fix (config, data, workdir, checkpoint) ends in one sentence on
stderr and a non-zero exit status; SIGTERM checkpoints and exits with 143 so schedulers
requeue the job.
"""
import os
import sys

from ctt_jax import libtpu_flags
from ctt_jax import xla_cpu_flags

xla_cpu_flags.add_defaults()  # before jax starts its CPU backend (no effect on GPU/TPU)
libtpu_flags.add_defaults()  # before jax starts libtpu (v6e compiles; no graph changes)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file[:partition,key=value,...].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and eval JSON go.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'compile'], 'What to do.')
flags.DEFINE_string('topology', None, '--mode=compile: a Cloud TPU slice, e.g. v5e:2x4 or '
                    'v4-8 (needs the venv of scripts/setup_tpu_compile_env.sh).')
flags.DEFINE_string('input', None, '--mode=predict: a folder of images.')
flags.DEFINE_string('output', None, '--mode=predict: where the PNGs go.')
flags.DEFINE_string('network', '', '--mode=predict: student_k, teacher_k or ensemble.')
flags.DEFINE_integer('checkpoint_step', None, '--mode=eval/predict: step (default latest).')
flags.DEFINE_bool('distributed', None, 'Call jax.distributed.initialize() (default: when '
                  'JAX_COORDINATOR_ADDRESS is set or on a multi-host TPU).')
flags.mark_flags_as_required(['config', 'workdir'])


def _want_distributed() -> bool:
  if FLAGS.distributed is not None:
    return FLAGS.distributed
  return bool(os.environ.get('JAX_COORDINATOR_ADDRESS')
              or os.environ.get('MEGASCALE_COORDINATOR_ADDRESS'))


def _fail(message: str, status: int = 1):
  logging.error('%s', message)
  print(f'Error: {message}', file=sys.stderr)
  sys.exit(status)


def parse_flags(argv):
  """absl's flag parsing, with config errors (an unknown key, a bad value, an unknown
  partition) as one sentence instead of a traceback."""
  try:
    return FLAGS(argv)
  except (flags.Error, KeyError, ValueError, TypeError) as e:  # get_config(arg) raises these
    cause = e  # the config's own exception, under absl's and config_flags' wrappers
    while cause.__cause__ is not None or (cause.__context__ is not None
                                          and not cause.__suppress_context__):
      cause = cause.__cause__ or cause.__context__
    message = cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)
    print(f'Error: {message}', file=sys.stderr)
    sys.exit(2)


def _run_mode(train, config):
  if FLAGS.mode == 'train':
    train.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == 'compile':
    if not FLAGS.topology:
      raise app.UsageError('--mode=compile needs --topology, e.g. --topology=v5e:2x4.')
    from ctt_jax import tpu_compile  # pylint: disable=g-import-not-at-top
    try:
      tpu_compile.run_compile_mode(config, FLAGS.workdir, FLAGS.topology)
    except tpu_compile.CompileCheckError as e:  # unknown topology, no libtpu, bad batch
      _fail(str(e))
  elif FLAGS.mode == 'eval':
    train.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint_step)
  else:
    if not FLAGS.input or not FLAGS.output:
      raise app.UsageError('--mode=predict needs --input=DIR and --output=DIR.')
    train.predict(config, FLAGS.workdir, FLAGS.input, FLAGS.output, FLAGS.network,
                  FLAGS.checkpoint_step)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from ctt_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_library_logs()  # before TensorFlow is imported: it reads its level then
  # tf.data runs on the host only: keep TensorFlow off the accelerators.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  import jax  # pylint: disable=g-import-not-at-top
  if _want_distributed():
    jax.distributed.initialize()
  logging.info('JAX process %d/%d, %d local / %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  from ctt_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from ctt_jax import config_validation  # pylint: disable=g-import-not-at-top
  from ctt_jax import data  # pylint: disable=g-import-not-at-top
  from ctt_jax import layout  # pylint: disable=g-import-not-at-top
  from ctt_jax import train  # pylint: disable=g-import-not-at-top
  from ctt_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  try:
    # --mode=compile checks the batch against the topology's chips itself.
    compiling = FLAGS.mode == 'compile'
    config_validation.validate(FLAGS.config,
                               device_count=1 if compiling else jax.device_count(),
                               process_count=1 if compiling else jax.process_count())
    for warning in config_validation.warnings(FLAGS.config):
      logging.warning('%s', warning)
    if not compiling:  # the mesh chosen for this slice (compile prints the topology's)
      print(layout.summary(FLAGS.config, jax.device_count()) + '.', flush=True)
    _run_mode(train, FLAGS.config)
  except train.Preempted as e:
    # 128 + SIGTERM: schedulers read "killed by SIGTERM" and requeue the job.
    print(str(e), file=sys.stderr)
    sys.exit(143)
  except (config_validation.ConfigError, layout.LayoutError) as e:
    _fail(str(e), status=2)
  except (data.DataError, train.NonFiniteLossError, FileNotFoundError,
          checkpointing.CheckpointError, workdir_lock.WorkdirError) as e:
    # Errors the user can fix: their one sentence, no traceback.
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
