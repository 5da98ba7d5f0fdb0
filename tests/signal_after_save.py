"""Runs main.py and sends it a signal right after the checkpoint of step N is handed to
orbax (the asynchronous save still in flight): fault injection from outside the library.

    python tests/signal_after_save.py KILL N --config=... --workdir=...   # SIGKILL
    python tests/signal_after_save.py TERM N --config=... --workdir=...   # SIGTERM
"""
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position

from ctt_jax import checkpointing  # pylint: disable=g-import-not-at-top,wrong-import-position
import main  # pylint: disable=g-import-not-at-top,wrong-import-position

SIGNAL = getattr(signal, 'SIG' + sys.argv.pop(1))
AFTER_STEP = int(sys.argv.pop(1))
_save = checkpointing.save


def save_then_signal(manager, step, *args, **kwargs):
  _save(manager, step, *args, **kwargs)
  if step == AFTER_STEP:
    os.kill(os.getpid(), SIGNAL)


checkpointing.save = save_then_signal

if __name__ == '__main__':
  app.run(main.main, flags_parser=main.parse_flags)
