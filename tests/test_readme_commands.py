"""The README's commands, checked where that is cheap (no training, no data).

- Every `main.py` command in a fenced bash block: its flags exist, and its config (the
  `--config=FILE:ARG` argument plus every `--config.key=value` flag) builds and passes the
  checks main.py runs before it loads anything. Commands nested in a TPU VM's
  `gcloud ... --command="..."` are found too.
- Every override of the "Reproducing the paper's tables" table builds on
  `configs/cityscapes.py:1_8`, the config those ablations run on.
- `python main.py --help` runs.
- `--mode=compile` commands: the checks `--mode=compile` makes before it compiles (the
  topology, the batch laid over its chips), in the command's own libtpu venv; skipped when
  that venv does not exist. CTT_README_COMPILE=1 runs such a command as written (a
  ResNet-101 step compiles for minutes to an hour).
- The README's test command is the one `.ci/run` runs, and the README stays short.
"""
import os
import re
import shlex
import subprocess
import sys
import tempfile

import pytest

from configs import common
from ctt_jax import config_validation
from ctt_jax import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
MAX_README_LINES = 260
ABLATION_BASE = 'configs/cityscapes.py:1_8'
ABLATION_SECTION = "## Reproducing the paper's tables"
SHELL_OPERATORS = {'&&', '||', ';', '|', '&'}


def readme() -> str:
  with open(README) as f:
    return f.read()


def bash_blocks(text: str) -> list[str]:
  return re.findall(r'^```bash\n(.*?)^```', text, re.DOTALL | re.MULTILINE)


def shell_lines(block: str) -> list[str]:
  """The block's commands: continuation lines joined, comments and blank lines dropped."""
  joined = block.replace('\\\n', ' ')
  return [line for line in joined.splitlines() if line.strip() and
          not line.lstrip().startswith('#')]


def words(line: str) -> list[str]:
  """Shell words, with `&&`, `;`, `|` as words of their own (shlex in punctuation mode
  keeps quoted text whole, as bash would)."""
  lexer = shlex.shlex(line, posix=True, punctuation_chars=';&|')
  lexer.whitespace_split = True
  lexer.commenters = '#'
  return list(lexer)


def main_commands(line: str) -> list[tuple[str, list[str]]]:
  """(python, arguments) of every `PYTHON main.py ARGS` in a shell line, including those
  inside another word (the `--command="..."` of `gcloud compute tpus tpu-vm ssh`)."""
  found = []
  tokens = words(line)
  for i, token in enumerate(tokens):
    if os.path.basename(token) == 'main.py' and i > 0 and 'python' in os.path.basename(
        tokens[i - 1]):
      args = []
      for arg in tokens[i + 1:]:
        if arg in SHELL_OPERATORS:
          break
        args.append(arg)
      found.append((tokens[i - 1], args))
    elif 'main.py' in token and token != 'main.py' and ' ' in token:
      found.extend(main_commands(token.split('=', 1)[1] if token.startswith('--') else token))
  return found


def flag_values(args: list[str]) -> list[tuple[str, str]]:
  """[(name, value)] of `--name=value` and `--name value` (value '' for a bare flag)."""
  out = []
  for i, arg in enumerate(args):
    if not arg.startswith('--'):
      continue
    name, eq, value = arg[2:].partition('=')
    if not eq and i + 1 < len(args) and not args[i + 1].startswith('-'):
      value = args[i + 1]
    out.append((name, value))
  return out


def build_config(config_arg: str, config_flags=()):
  """The config main.py builds from `--config=config_arg` and `--config.KEY=VALUE` flags,
  checked as main.py checks it before loading anything; raises what main.py reports."""
  config = common.from_file(config_arg, ROOT)
  for key, value in config_flags:
    if key == 'recipe':
      raise ValueError('--config.recipe sets no recipe row; main.py refuses it.')
    common.apply_overrides(config, [f'{key}={value}'])
  config_validation.validate(config, device_count=1, process_count=1)
  methods.from_config(config)
  return config


def readme_main_commands():
  commands = []
  for block in bash_blocks(readme()):
    for line in shell_lines(block):
      commands.extend(main_commands(line))
  return commands


def command_id(command) -> str:
  return ' '.join(command[1])[:90]


COMMANDS = readme_main_commands()


def ablation_overrides() -> list[str]:
  text = readme()
  assert ABLATION_SECTION in text, f'README.md has no section {ABLATION_SECTION!r}.'
  section = text.split(ABLATION_SECTION, 1)[1].split('\n## ', 1)[0]
  rows = [line for line in section.splitlines() if line.startswith('|')]
  return [code for row in rows for code in re.findall(r'`([^`]*=[^`]*)`', row)]


@pytest.fixture(scope='module')
def main_flags() -> set[str]:
  proc = subprocess.run([sys.executable, 'main.py', '--helpfull'], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  names = set(re.findall(r'^\s+--(?:\[no\])?([\w.]+)', proc.stdout, re.MULTILINE))
  assert {'config', 'workdir', 'mode'} <= names, proc.stdout[-2000:] + proc.stderr[-2000:]
  return names


def test_the_readme_has_main_commands_and_ablation_rows():
  assert len(COMMANDS) >= 5, COMMANDS
  assert len(ablation_overrides()) >= 20


@pytest.mark.parametrize('command', COMMANDS, ids=command_id)
def test_every_main_command_has_known_flags_and_a_config_that_builds(command, main_flags):
  _, args = command
  flags = flag_values(args)
  values = {args[i + 1] for i, arg in enumerate(args[:-1])
            if arg.startswith('--') and '=' not in arg}
  positional = [arg for arg in args if not arg.startswith('--') and arg not in values]
  assert not positional, f'main.py takes no positional argument: {positional}'
  unknown = [name for name, _ in flags if not name.startswith('config.')
             and name not in main_flags
             and not (name.startswith('no') and name[2:] in main_flags)]
  assert not unknown, f'main.py has no flag {unknown} (README: {" ".join(args)})'
  config_args = [value for name, value in flags if name == 'config']
  assert len(config_args) == 1, f'one --config per command: {" ".join(args)}'
  assert any(name == 'workdir' for name, _ in flags), f'no --workdir: {" ".join(args)}'
  build_config(config_args[0], [(name[len('config.'):], value) for name, value in flags
                                if name.startswith('config.')])


@pytest.mark.parametrize('overrides', ablation_overrides())
def test_every_ablation_row_builds(overrides):
  build_config(f'{ABLATION_BASE},{overrides}')


@pytest.mark.parametrize('bad', [
    f'{ABLATION_BASE},use_hcc=false',  # a key that does not exist
    f'{ABLATION_BASE},use_hc=flase',  # a value that does not parse
    f'{ABLATION_BASE},method=mean_teachers',  # a value outside the choices
    'configs/cityscapes.py:1_9',  # a partition the config does not have
    'configs/cityscape.py:1_8',  # a config file that does not exist
])
def test_the_check_fails_on_a_typo(bad):
  with pytest.raises(Exception):
    build_config(bad)


def test_a_typo_in_a_config_flag_fails_the_check():
  with pytest.raises(KeyError):
    build_config('configs/demo.py', [('model.backbon', 'resnet50')])


def test_main_help_runs():
  proc = subprocess.run([sys.executable, 'main.py', '--help'], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  # absl's --help prints the usage and the flags, then exits with status 1.
  assert proc.returncode in (0, 1), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert '--config' in proc.stdout and '--workdir' in proc.stdout, proc.stdout[-2000:]


COMPILE_COMMANDS = [c for c in COMMANDS if ('mode', 'compile') in flag_values(c[1])]

PRECOMPILE_CHECK = """
import sys
from configs import common
from ctt_jax import tpu_compile
config = common.from_file(sys.argv[1], '.')
for item in sys.argv[3:]:
  common.apply_overrides(config, [item])
topology = tpu_compile.parse_topology(sys.argv[2])
chips = len(tpu_compile.topology_devices(topology))
layout = tpu_compile.plan_layout(config, chips)
print(f'{topology.name}: {chips} chips, data {layout.data} x space {layout.space}')
"""


@pytest.mark.parametrize('command', COMPILE_COMMANDS, ids=command_id)
def test_compile_commands_pass_the_checks_before_compiling(command):
  python, args = command
  venv_python = os.path.join(ROOT, python)
  if not os.path.isfile(venv_python):
    pytest.skip(f'no libtpu venv at {python}: make it with '
                f'`bash tools/setup_tpu_compile_env.sh {python.split("/bin/")[0]}`.')
  flags = dict(flag_values(args))
  env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD='1')
  env.pop('JAX_PLATFORMS', None)  # the tests' CPU-only setting would hide libtpu
  if os.environ.get('CTT_README_COMPILE') == '1':
    with tempfile.TemporaryDirectory() as workdir:
      run_args = [a for a in args if not a.startswith('--workdir')] + [f'--workdir={workdir}']
      proc = subprocess.run([venv_python, 'main.py', *run_args], cwd=ROOT, env=env,
                            capture_output=True, text=True)
  else:
    overrides = [f'{name[len("config."):]}={value}'
                 for name, value in flag_values(args) if name.startswith('config.')]
    proc = subprocess.run([venv_python, '-c', PRECOMPILE_CHECK, flags['config'],
                           flags['topology'], *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_the_readme_test_command_is_the_one_ci_runs():
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    ci = [line.strip() for line in f if 'pytest' in line and not line.startswith('#')]
  in_readme = [line.strip() for block in bash_blocks(readme())
               for line in shell_lines(block) if 'pytest' in line]
  assert len(ci) == 1, ci
  assert in_readme == ci, (in_readme, ci)


def test_the_readme_starts_with_the_demo_and_test_commands():
  blocks = bash_blocks(readme())
  assert blocks[0].strip().endswith(
      'python main.py --config=configs/demo.py --workdir=workdirs/demo'), blocks[0]
  assert blocks[0].startswith('python -m venv .venv && . .venv/bin/activate && pip install '
                              '-r requirements.txt'), blocks[0]
  assert 'pytest' in blocks[1], blocks[1]


def test_the_readme_is_short():
  lines = readme().count('\n')
  assert lines <= MAX_README_LINES, f'README.md has {lines} lines; keep it to ' \
                                    f'{MAX_README_LINES} and move detail to docs/.'
