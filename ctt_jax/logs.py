"""Quiet library logs: orbax, TensorFlow, tfds and jax internals at WARNING by default.

orbax, tfds and clu log through absl, i.e. the same python logger ('absl') as this project,
so they cannot be silenced by logger name: a filter on that logger drops records below the
library level whose source file lies in one of `LIBRARY_PACKAGES`. Libraries that log
through their own python loggers (jax, TensorFlow's python side) get a level.
TensorFlow's C++ start-up lines (oneDNN, CPU features) obey TF_CPP_MIN_LOG_LEVEL, which only
counts if set before TensorFlow is imported: call `quiet_library_logs` first thing in main.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

# Packages whose absl-routed records are filtered (a path component of the source file).
LIBRARY_PACKAGES = ('orbax', 'tensorflow', 'tensorflow_datasets', 'tensorstore', 'etils',
                    'array_record')
# Python loggers of libraries that do not log through absl.
LIBRARY_LOGGERS = ('orbax', 'tensorflow', 'tensorflow_datasets', 'jax._src', 'jax',
                   'etils', 'h5py', 'matplotlib', 'PIL')


def library_level(verbosity: int) -> int:
  """absl --verbosity (-1 warning, 0 info, 1+ debug) -> the level libraries log at:
  WARNING up to 0, INFO at 1, DEBUG from 2."""
  if verbosity >= 2:
    return logging.DEBUG
  if verbosity == 1:
    return logging.INFO
  return logging.WARNING


class _LibraryFilter(logging.Filter):
  """Drops records below `level` whose source file is inside a library package."""

  def __init__(self, level: int):
    super().__init__('ctt_library_filter')
    self.level = level
    self._markers = tuple(f'{os.sep}{p}{os.sep}' for p in LIBRARY_PACKAGES)

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= self.level:
      return True
    return not any(m in record.pathname for m in self._markers)


def quiet_library_logs(verbosity: Optional[int] = None) -> None:
  """Sets library logging to WARNING unless `verbosity` (default: absl's --verbosity when
  flags are parsed, else 0) asks for more. Idempotent; our own absl logs are untouched."""
  if verbosity is None:
    verbosity = 0
    try:
      from absl import flags  # pylint: disable=g-import-not-at-top
      if flags.FLAGS.is_parsed():
        verbosity = int(flags.FLAGS.verbosity)
    except Exception:  # pylint: disable=broad-except
      pass
  level = library_level(verbosity)
  # absl.logging must create the 'absl' logger (its ABSLLogger class reports the caller's
  # file, which the filter reads); a plain logging.getLogger('absl') first would not.
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  # TensorFlow C++ (read at import): 0 all, 1 no INFO, 2 no WARNING.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if verbosity >= 1 else '1')
  for name in LIBRARY_LOGGERS:
    logging.getLogger(name).setLevel(level)
  absl_logger = absl_logging.get_absl_logger()
  for f in list(absl_logger.filters):
    if isinstance(f, _LibraryFilter):
      absl_logger.removeFilter(f)
  absl_logger.addFilter(_LibraryFilter(level))
