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
