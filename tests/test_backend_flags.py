"""The backend defaults main.py sets (XLA:CPU's XLA_FLAGS, libtpu's LIBTPU_INIT_ARGS):
added once, never over a flag the user set; libtpu's only for a libtpu they were tested
with."""
import os
import subprocess
import sys

import pytest

from ctt_jax import backend_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTED = backend_flags.TESTED_LIBTPU[0]


def _name(flag):
  return flag.split('=', 1)[0]


@pytest.mark.parametrize('defaults', [backend_flags.XLA_CPU_DEFAULTS,
                                      backend_flags.LIBTPU_DEFAULTS])
def test_defaults_join_other_flags_once(defaults):
  got = backend_flags.with_defaults('--xla_force_host_platform_device_count=8', defaults)
  assert got.split() == ['--xla_force_host_platform_device_count=8', *defaults]
  assert backend_flags.with_defaults(got, defaults) == got  # idempotent
  assert backend_flags.with_defaults('', defaults) == ' '.join(defaults)


@pytest.mark.parametrize('defaults', [backend_flags.XLA_CPU_DEFAULTS,
                                      backend_flags.LIBTPU_DEFAULTS])
def test_a_flag_the_user_set_wins(defaults):
  mine = f'{_name(defaults[0])}=mine'
  assert backend_flags.with_defaults(mine, defaults) == mine


def test_xla_cpu_entry_point_sets_xla_flags():
  env = {backend_flags.XLA_CPU_ENV: '--xla_dump_to=x'}
  assert backend_flags.add_xla_cpu_defaults(env) == env[backend_flags.XLA_CPU_ENV]
  assert env[backend_flags.XLA_CPU_ENV].split() == ['--xla_dump_to=x',
                                                    *backend_flags.XLA_CPU_DEFAULTS]
  mine = {backend_flags.XLA_CPU_ENV: f'{_name(backend_flags.XLA_CPU_DEFAULTS[0])}=dot'}
  backend_flags.add_xla_cpu_defaults(mine)
  assert mine[backend_flags.XLA_CPU_ENV] == f'{_name(backend_flags.XLA_CPU_DEFAULTS[0])}=dot'


def test_libtpu_entry_point_adds_defaults_for_a_tested_libtpu_only():
  env = {}
  assert backend_flags.add_libtpu_defaults(env, libtpu_version=TESTED) == ' '.join(
      backend_flags.LIBTPU_DEFAULTS)
  assert env[backend_flags.LIBTPU_ENV] == ' '.join(backend_flags.LIBTPU_DEFAULTS)
  # An unknown flag stops libtpu at start-up: never guess for a version not tested.
  env = {}
  assert backend_flags.add_libtpu_defaults(env, libtpu_version='9.9.9') == ''
  assert backend_flags.LIBTPU_ENV not in env  # nothing to set: the variable stays unset
  env = {backend_flags.LIBTPU_ENV: '--xla_tpu_foo=1'}
  assert backend_flags.add_libtpu_defaults(env, libtpu_version='9.9.9') == '--xla_tpu_foo=1'
  mine = f'{_name(backend_flags.LIBTPU_DEFAULTS[0])}=1048576'
  env = {backend_flags.LIBTPU_ENV: mine}
  backend_flags.add_libtpu_defaults(env, libtpu_version=TESTED)
  assert env[backend_flags.LIBTPU_ENV] == mine


def test_main_sets_them_before_jax_starts():
  # XLA_FLAGS as jax's CPU backend read it; LIBTPU_INIT_ARGS only where a tested libtpu is.
  code = ('import os, main, jax; jax.numpy.zeros(1).block_until_ready(); '
          'print(os.environ["XLA_FLAGS"]); print(repr(os.environ.get("LIBTPU_INIT_ARGS")))')
  env = {k: v for k, v in os.environ.items()
         if k not in (backend_flags.XLA_CPU_ENV, backend_flags.LIBTPU_ENV)}
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=True)
  xla_flags, libtpu_args = out.stdout.splitlines()
  assert xla_flags.split() == list(backend_flags.XLA_CPU_DEFAULTS)
  expected = (' '.join(backend_flags.LIBTPU_DEFAULTS)
              if backend_flags.installed_libtpu() in backend_flags.TESTED_LIBTPU else None)
  assert libtpu_args == repr(expected)
