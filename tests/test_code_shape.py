"""The code keeps the shape the project promises (docs/INTERFACES.md): short functions,
one method table, light configs, no test hooks in library code."""
import ast
import os
import subprocess
import sys
import time

from ctt_jax import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = os.path.join(ROOT, 'ctt_jax')
MAX_FUNCTION_LINES = 80


def _library_files():
  for folder, _, files in os.walk(LIBRARY):
    for name in sorted(files):
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        with open(path) as f:
          yield os.path.relpath(path, ROOT), ast.parse(f.read())


def _docstring_nodes(tree):
  nodes = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      body = node.body
      if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        nodes.add(id(body[0].value))
  return nodes


def test_no_library_function_is_longer_than_80_lines():
  long = [f'{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)'
          for path, tree in _library_files() for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
  assert not long, long


def test_only_the_method_table_names_methods():
  names = set(methods.METHOD_NAMES)
  found = []
  for path, tree in _library_files():
    if path == os.path.join('ctt_jax', 'methods.py'):
      continue
    docstrings = _docstring_nodes(tree)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Constant) and isinstance(node.value, str)
          and node.value in names and id(node) not in docstrings):
        found.append(f'{path}:{node.lineno} {node.value!r}')
  assert not found, found


def test_no_test_hooks_in_library_code():
  hooks = []
  for path, tree in _library_files():
    for node in ast.walk(tree):
      if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
          node.value.startswith('CTT_DEBUG') or node.value == 'trace_count'):
        hooks.append(f'{path}:{node.lineno}')
      if isinstance(node, ast.Attribute) and node.attr == 'trace_count':
        hooks.append(f'{path}:{node.lineno}')
  assert not hooks, hooks


def test_configs_import_neither_tensorflow_nor_jax_and_load_fast():
  code = ('import sys, time; t = time.perf_counter(); import configs.demo, configs.cityscapes; '
          'configs.demo.get_config(); configs.cityscapes.get_config("1_8,method=ctt"); '
          'print(time.perf_counter() - t); '
          'heavy = [m for m in ("tensorflow", "jax", "ctt_jax.data") if m in sys.modules]; '
          'assert not heavy, heavy')
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
  wall = time.perf_counter() - start
  assert proc.returncode == 0, proc.stderr
  assert float(proc.stdout) < 0.5, proc.stdout  # import + build, in the process
  assert wall < 5, wall  # the whole interpreter start, on a loaded CI machine
