"""ctt-jax entry point: train, evaluate or predict.

    python main.py --config=configs/cityscapes.py:1_30 --workdir=DIR
    python main.py --config=configs/cityscapes.py:1_30 --workdir=DIR --mode=eval
    python main.py --config=... --workdir=DIR --mode=predict --input=IMAGES --output=OUT

On several hosts (a Cloud TPU pod slice, multi-node GPUs) start the same command on every
host; `--distributed` (or the JAX_COORDINATOR_ADDRESS / cloud TPU environment) makes it call
jax.distributed.initialize() first.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file[:partition,key=value,...].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and eval JSON go.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'], 'What to do.')
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # tf.data runs on the host only: keep TensorFlow off the accelerators.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  import jax  # pylint: disable=g-import-not-at-top
  if _want_distributed():
    jax.distributed.initialize()
  logging.info('JAX process %d/%d, %d local / %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  from ctt_jax import data  # pylint: disable=g-import-not-at-top
  from ctt_jax import train  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == 'eval':
      train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint_step)
    else:
      if not FLAGS.input or not FLAGS.output:
        raise app.UsageError('--mode=predict needs --input=DIR and --output=DIR.')
      train.predict(FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.output, FLAGS.network,
                    FLAGS.checkpoint_step)
  except (data.DataError, train.NonFiniteLossError, FileNotFoundError) as e:
    # Errors the user can fix: their one sentence, no traceback.
    logging.error('%s', e)
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
