"""The libtpu defaults main.py sets: only for a libtpu they were tested with, added once,
never over a flag the user set."""
import os
import subprocess
import sys

from ctt_jax import libtpu_flags

TESTED = libtpu_flags.TESTED_LIBTPU[0]
FLAG = libtpu_flags.DEFAULTS[0].split('=', 1)[0]


def test_defaults_join_other_flags_for_a_tested_libtpu():
  got = libtpu_flags.with_defaults('--xla_tpu_foo=1', TESTED)
  assert got.split() == ['--xla_tpu_foo=1', *libtpu_flags.DEFAULTS]
  assert libtpu_flags.with_defaults(got, TESTED) == got  # idempotent


def test_no_default_for_another_or_no_libtpu():
  # An unknown flag stops libtpu at start-up: never guess for a version not tested.
  assert libtpu_flags.with_defaults('', '9.9.9') == ''
  assert libtpu_flags.with_defaults('--xla_tpu_foo=1', None) == '--xla_tpu_foo=1'
  env = {}
  assert libtpu_flags.add_defaults(env, libtpu_version='9.9.9') == ''
  assert libtpu_flags.ENV not in env  # nothing to set: the variable stays unset


def test_a_flag_the_user_set_wins():
  mine = f'{FLAG}=1048576'
  assert libtpu_flags.with_defaults(mine, TESTED) == mine
  env = {libtpu_flags.ENV: mine}
  libtpu_flags.add_defaults(env, libtpu_version=TESTED)
  assert env[libtpu_flags.ENV] == mine


def test_main_sets_them_only_where_libtpu_is_installed():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = 'import os, main; print(repr(os.environ.get("LIBTPU_INIT_ARGS")))'
  env = {k: v for k, v in os.environ.items() if k != libtpu_flags.ENV}
  out = subprocess.run([sys.executable, '-c', code], cwd=root, env=env, capture_output=True,
                       text=True, check=True)
  expected = (None if libtpu_flags.installed_libtpu() not in libtpu_flags.TESTED_LIBTPU
              else ' '.join(libtpu_flags.DEFAULTS))
  assert out.stdout.strip() == repr(expected)
