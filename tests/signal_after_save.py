"""Runs main.py and sends it a signal right after the checkpoint of step N is handed to
orbax (the asynchronous save still in flight): fault injection from outside the library.
With `again`, the signal is sent once more after each later save is handed over, i.e.
while the checkpoint the first signal asked for is being written (a second Ctrl-C).

    python tests/signal_after_save.py KILL N --config=... --workdir=...        # SIGKILL
    python tests/signal_after_save.py TERM N --config=... --workdir=...        # SIGTERM
    python tests/signal_after_save.py INT N again --config=... --workdir=...   # Ctrl-C x2
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
AGAIN = len(sys.argv) > 1 and sys.argv[1] == 'again' and bool(sys.argv.pop(1))
_save = checkpointing.save


def save_then_signal(manager, step, *args, **kwargs):
  _save(manager, step, *args, **kwargs)
  if step == AFTER_STEP or (AGAIN and step > AFTER_STEP):
    os.kill(os.getpid(), SIGNAL)


checkpointing.save = save_then_signal

if __name__ == '__main__':
  app.run(main.main, flags_parser=main.parse_flags)
