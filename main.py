"""ctt-jax entry point: train, evaluate or predict.

    python main.py --config=configs/cityscapes.py:1_30 --workdir=DIR
    python main.py --config=configs/cityscapes.py:1_30 --workdir=DIR --mode=eval
    python main.py --config=... --workdir=DIR --mode=predict --input=IMAGES --output=OUT
    python main.py --config=... --workdir=DIR --mode=compile --topology=v5e:2x4  # docs/TPU.md

On several hosts (a Cloud TPU pod slice, multi-node GPUs) start the same command on every
host; `--distributed` (or the JAX_COORDINATOR_ADDRESS / cloud TPU environment) makes it call
jax.distributed.initialize() first.

Every error a user can fix (config, data, workdir, checkpoint) ends in one sentence on
stderr and a non-zero exit status: 2 for a mistake on the command line (a flag, a config
key or value, the config file), found before anything is built or loaded. SIGTERM
checkpoints and exits with 143 so schedulers requeue the job; Ctrl-C (SIGINT) checkpoints
and exits with 130.
"""
import difflib
import os
import re
import sys

from ctt_jax import backend_flags

backend_flags.add_xla_cpu_defaults()  # before jax starts its CPU backend (not read on GPU/TPU)
backend_flags.add_libtpu_defaults()  # before jax starts libtpu (v6e compiles; no graph changes)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import common as config_common
from ctt_jax import config_validation
from ctt_jax import methods
from ctt_jax import predict
# pylint: enable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.abspath(__file__))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file[:partition,key=value,...].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and eval JSON go.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'compile'], 'What to do.')
flags.DEFINE_string('topology', None, '--mode=compile: a Cloud TPU slice, e.g. v5e:2x4 or '
                    'v4-8 (needs the venv of tools/setup_tpu_compile_env.sh).')
flags.DEFINE_string('input', None, '--mode=predict: a folder of images.')
flags.DEFINE_string('output', None, '--mode=predict: where the PNGs go.')
flags.DEFINE_string('network', '', '--mode=predict: student_k, teacher_k or ensemble.')
flags.DEFINE_integer('checkpoint_step', None, '--mode=eval/predict: step (default: the '
                     'newest verified one).')
flags.DEFINE_bool('allow_unverified', False, 'Resume, evaluate or predict from a checkpoint '
                  'without a digest (an older version of ctt-jax stopped before writing it) '
                  'instead of falling back to the newest verified one.')
flags.DEFINE_bool('distributed', None, 'Call jax.distributed.initialize() (default: when '
                  'JAX_COORDINATOR_ADDRESS is set or on a multi-host TPU).')
flags.mark_flags_as_required(['config', 'workdir'])


def _want_distributed() -> bool:
  if FLAGS.distributed is not None:
    return FLAGS.distributed
  return bool(os.environ.get('JAX_COORDINATOR_ADDRESS')
              or os.environ.get('MEGASCALE_COORDINATOR_ADDRESS'))


def _fail(message: str, status: int = 1):
  print(f'Error: {message}', file=sys.stderr)  # once: not also through the log
  sys.exit(status)


def parse_flags(argv):
  """absl's flag parsing, then the config file and every flag each mode needs, checked
  before anything is built or loaded: a mistake is one sentence and exit status 2."""
  try:
    rest = FLAGS(argv)
    config = FLAGS.config
    config.keys()  # config_flags reports a file that failed to load at its first use
  except (flags.Error, KeyError, ValueError, TypeError, AttributeError, OSError) as e:
    _fail(_flag_error(e, argv), status=2)
  recipe = [o for o in _values_of(argv, 'config.', prefix=True) if o.split('=')[0] == 'recipe']
  if recipe:
    # A recipe is a set of rows applied before the other overrides: a flag set after the
    # config is built would rename it and change none of them.
    _fail(f'--config.{recipe[-1]} would rename the recipe but set none of its keys; choose '
          f'it in the config argument instead, e.g. --config=FILE:{recipe[-1]}.', status=2)
  try:
    # The rules that need no device count run now, before TensorFlow and jax load;
    # main() checks the batch against the devices.
    config_validation.validate(config, device_count=1, process_count=1)
    _check_mode_flags(config)
  except (config_validation.ConfigError, predict.RequestError) as e:
    _fail(str(e), status=2)
  return rest


def _check_mode_flags(config):
  if FLAGS.mode == 'compile' and not FLAGS.topology:
    raise predict.RequestError('--mode=compile needs --topology, e.g. --topology=v5e:2x4.')
  if FLAGS.mode == 'predict':
    method = methods.from_config(config)
    predict.check_request(FLAGS.input, FLAGS.output, FLAGS.network or method.default_network,
                          method.network_names())


def _flag_error(error: Exception, argv) -> str:
  """One sentence for a mistake on the command line, naming the flag or config key and
  what it accepts, in place of absl's and ml_collections' tracebacks."""
  spec = _values_of(argv, 'config')
  spec = spec[-1] if spec else ''
  path = spec.split(':', 1)[0]
  if path and not os.path.isfile(path):
    return _missing_config_file(spec, path)
  for override in _values_of(argv, 'config.', prefix=True):
    problem = _override_problem(*override.split('=', 1))
    if problem:
      return problem
  from_config_file = bool(spec) and str(error).startswith('flag --config=')
  if isinstance(error, flags.IllegalFlagValueError) and not from_config_file:
    return _illegal_flag_value(str(error))
  if isinstance(error, flags.Error) and not from_config_file:
    return str(error)  # an unknown flag: absl names it and the closest ones
  cause = error  # get_config's own exception, under config_flags' wrappers
  while cause.__cause__ is not None or (cause.__context__ is not None
                                        and not cause.__suppress_context__):
    cause = cause.__cause__ or cause.__context__
  message = cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)
  return f'--config={spec}: {message}'


def _values_of(argv, name: str, prefix: bool = False) -> list[str]:
  """The values of --name (both --name=V and --name V); with `prefix`, of every flag
  starting with --name, as 'rest=V' (--config.lr=0.1 -> 'lr=0.1')."""
  found = []
  for i, arg in enumerate(argv):
    flag, eq, value = arg.partition('=')
    if not (flag.startswith('--' + name) if prefix else flag == '--' + name):
      continue
    if not eq:
      if i + 1 == len(argv) or argv[i + 1].startswith('-'):
        continue  # a boolean flag without a value: nothing to diagnose
      value = argv[i + 1]
    found.append(f'{flag[2 + len(name):]}={value}' if prefix else value)
  return found


def _missing_config_file(spec: str, path: str) -> str:
  shipped = sorted(os.path.relpath(os.path.join(ROOT, 'configs', name))
                   for name in os.listdir(os.path.join(ROOT, 'configs'))
                   if name.endswith('.py') and name not in ('__init__.py', 'common.py'))
  close = difflib.get_close_matches(path, shipped, n=1)
  what = 'is a directory' if os.path.isdir(path) else 'does not exist'
  return (f'--config={spec}: {path} {what}' + (f' (did you mean {close[0]}?)' if close
                                               else '')
          + f'; pass a config file, one of {", ".join(shipped)}, optionally followed by '
          ':partition,key=value,...')


def _override_problem(key: str, text: str):
  """The sentence for --config.KEY=TEXT if KEY is no config key or TEXT does not parse
  as its type, else None."""
  valid = list(config_validation.flatten(config_common.base_config()))
  flag = f'--config.{key}={text}'
  if key not in valid:
    close = config_validation.suggest(key, valid)
    return (f'{flag}: {key!r} is not a config key; '
            + (f'did you mean {" or ".join(close)}?' if close
               else 'see configs/common.py for the valid keys.'))
  try:
    config_common.apply_overrides(config_common.base_config(), [f'{key}={text}'])
  except (ValueError, TypeError):
    return f'{flag}: {key} must be {config_validation.SCHEMA[key].expect}, not {text!r}.'
  return None


def _illegal_flag_value(message: str) -> str:
  """absl's 'flag --mode=evaluate: value should be one of <...>' as a sentence that
  names the flag, its choices and the closest one."""
  match = re.match(r'flag --(\w+)=(.*?): (.*)', message, re.DOTALL)
  if not match:
    return message
  name, value, reason = match.groups()
  choices = getattr(FLAGS[name].parser, 'enum_values', None) if name in FLAGS else None
  if choices:
    close = difflib.get_close_matches(value, choices, n=1)
    return (f'--{name}={value} is not one of {", ".join(choices)}'
            + (f' (did you mean --{name}={close[0]}?)' if close else '') + '.')
  if value == 'None':  # a required flag left out
    return f'--{name} is required: {FLAGS[name].help}'
  return f'--{name}={value}: {reason.rstrip(".")}; see python main.py --help.'


def _run_mode(train, config):
  if FLAGS.mode == 'train':
    train.train_and_evaluate(config, FLAGS.workdir, allow_unverified=FLAGS.allow_unverified)
  elif FLAGS.mode == 'compile':
    from ctt_jax import tpu_compile  # pylint: disable=g-import-not-at-top
    try:
      tpu_compile.run_compile_mode(config, FLAGS.workdir, FLAGS.topology)
    except tpu_compile.CompileCheckError as e:  # unknown topology, no libtpu, bad batch
      _fail(str(e))
  elif FLAGS.mode == 'eval':
    train.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint_step,
                              allow_unverified=FLAGS.allow_unverified)
  else:
    train.predict(config, FLAGS.workdir, FLAGS.input, FLAGS.output, FLAGS.network,
                  FLAGS.checkpoint_step, allow_unverified=FLAGS.allow_unverified)


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
  except train.Interrupted as e:
    # 128 + the signal: schedulers read "killed by SIGTERM" (143) and requeue the job.
    print(str(e), file=sys.stderr)
    sys.exit(e.exit_status)
  except KeyboardInterrupt:  # Ctrl-C before the training loop, or in eval/predict
    print('Interrupted (SIGINT) with nothing to save; rerun the same command to start '
          'again.', file=sys.stderr)
    sys.exit(130)
  except (config_validation.ConfigError, predict.RequestError, layout.LayoutError) as e:
    _fail(str(e), status=2)
  except (data.DataError, train.NonFiniteLossError, FileNotFoundError,
          checkpointing.CheckpointError, workdir_lock.WorkdirError) as e:
    # Errors the user can fix: their one sentence, no traceback.
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
