"""libtpu flags the project sets by default (libtpu reads LIBTPU_INIT_ARGS once, when the
TPU backend starts, so call `add_defaults()` before the first jax computation; main.py
and ctt_jax.tpu_compile do at import).

- `--fibers_default_thread_stack_size=8388608` (8 MiB): libtpu 0.0.42.1 (the `tpu` extra
  of jax 0.10.2) compiles on fiber threads with ~64 KiB of stack. For TPU v6e its MXU
  assigner (`CombineSequencesToFitMxuSize` -> `MigrateInstructionUsers`) recurses ~200
  frames deep on a strided convolution's input gradient fused with the batch-norm backward
  reductions and the ReLU mask, overflows that stack and segfaults: every train step of
  this project, on v6e:1x1 to v6e:2x4 (gdb, 2026-11-30). With 256 KiB the demo compiles;
  8 MiB leaves headroom for ResNet-101. On v4, v5e and v5p the optimised HLO is identical
  with and without the flag (its text hashes), so it changes no graph and no number.

libtpu stops at start-up on a flag it does not know ("ERROR: Unknown command line flag"),
so a default is only added for the libtpu versions it was tested with; a flag the user
already set in LIBTPU_INIT_ARGS wins. Off TPU the variable is never read.
"""
from __future__ import annotations

import importlib.metadata
import os
from typing import Optional

DEFAULTS = ('--fibers_default_thread_stack_size=8388608',)
TESTED_LIBTPU = ('0.0.42.1',)
ENV = 'LIBTPU_INIT_ARGS'


def installed_libtpu() -> Optional[str]:
  """The version of the installed `libtpu` distribution, None without one."""
  try:
    return importlib.metadata.version('libtpu')
  except importlib.metadata.PackageNotFoundError:
    return None


def with_defaults(init_args: str, libtpu_version: Optional[str]) -> str:
  """`init_args` plus every default it does not already set, for a tested libtpu."""
  if libtpu_version not in TESTED_LIBTPU:
    return init_args
  present = {f.split('=', 1)[0] for f in init_args.split()}
  added = [f for f in DEFAULTS if f.split('=', 1)[0] not in present]
  return ' '.join([init_args.strip()] + added).strip()


def add_defaults(environ=os.environ, libtpu_version: Optional[str] = None) -> str:
  """Sets LIBTPU_INIT_ARGS in `environ` (when there is something to set) and returns it."""
  version = installed_libtpu() if libtpu_version is None else libtpu_version
  value = with_defaults(environ.get(ENV, ''), version)
  if value:
    environ[ENV] = value
  return value
