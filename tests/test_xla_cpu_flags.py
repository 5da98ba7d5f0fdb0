"""The XLA:CPU defaults main.py sets: added once, never over a flag the user set."""
import os
import subprocess
import sys

from ctt_jax import xla_cpu_flags

FLAG = xla_cpu_flags.DEFAULTS[0].split('=', 1)[0]


def test_defaults_join_other_flags():
  got = xla_cpu_flags.with_defaults('--xla_force_host_platform_device_count=8')
  assert got.split() == ['--xla_force_host_platform_device_count=8',
                         *xla_cpu_flags.DEFAULTS]
  assert xla_cpu_flags.with_defaults(got) == got  # idempotent


def test_a_flag_the_user_set_wins():
  mine = f'{FLAG}=dot'
  assert xla_cpu_flags.with_defaults(mine) == mine


def test_main_sets_them_before_jax_starts():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ('import os, main, jax; jax.numpy.zeros(1).block_until_ready(); '
          'print(os.environ["XLA_FLAGS"])')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run([sys.executable, '-c', code], cwd=root, env=env, capture_output=True,
                       text=True, check=True)
  assert out.stdout.split() == list(xla_cpu_flags.DEFAULTS)
