"""Test setup: CPU only, repo root importable (configs/ is not a package on sys.path)."""
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Tests run tiny models: XLA's backend optimisation costs more compile time than it saves.
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# One persistent compilation cache per test session: identical programs (the same step
# compiled again after a restart, in-process or in a subprocess) compile once.
import tempfile  # pylint: disable=g-import-not-at-top,g-bad-import-order

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='ctt_jax_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
