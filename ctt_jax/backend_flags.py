"""Backend flags the project sets by default, for XLA:CPU (`XLA_FLAGS`) and libtpu
(`LIBTPU_INIT_ARGS`). Each backend reads its variable once, when it starts, so call
`add_xla_cpu_defaults()` and `add_libtpu_defaults()` before the first jax computation;
main.py does both at import, ctt_jax.tpu_compile the libtpu one, the benchmarks the CPU
one. Both merge the defaults into the variable's flag string the same way
(`with_defaults`): a flag the user already set keeps the user's value.

XLA:CPU (only `xla_cpu_*` flags: GPU and TPU compilers ignore them, so their graphs are
unchanged):
- `xla_cpu_experimental_ynn_fusion_type=-individual_convolution`: jaxlib 0.10 sends every
  float32 convolution to YNNPACK; this hands convolutions back to XLA's own (Eigen)
  kernels and leaves dots on YNNPACK: the supervised DeepLabV2-R101 step was 17% faster
  at 64x128 and ~4% at 256x512 on 2 AMD EPYC (Zen 4) cores, with outputs that differ by
  summation order only (<= 8.4e-6 relative); benchmarks/README.md, "Findings behind the
  defaults".

libtpu:
- `--fibers_default_thread_stack_size=8388608` (8 MiB): libtpu 0.0.42.1 (the `tpu` extra
  of jax 0.10.2) compiles on fiber threads with ~64 KiB of stack. For TPU v6e its MXU
  assigner (`CombineSequencesToFitMxuSize` -> `MigrateInstructionUsers`) recurses ~200
  frames deep on a strided convolution's input gradient fused with the batch-norm backward
  reductions and the ReLU mask, overflows that stack and segfaults: every train step of
  this project, on v6e:1x1 to v6e:2x4 (gdb, 2026-11-30). With 256 KiB the demo compiles;
  8 MiB leaves headroom for ResNet-101. On v4, v5e and v5p the optimised HLO is identical
  with and without the flag (its text hashes), so it changes no graph and no number.
  libtpu stops at start-up on a flag it does not know ("ERROR: Unknown command line
  flag"), so these defaults are only added for the libtpu versions they were tested with.
  Off TPU the variable is never read.
"""
from __future__ import annotations

import importlib.metadata
import os
from typing import MutableMapping, Optional, Sequence

XLA_CPU_ENV = 'XLA_FLAGS'
XLA_CPU_DEFAULTS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)
LIBTPU_ENV = 'LIBTPU_INIT_ARGS'
LIBTPU_DEFAULTS = ('--fibers_default_thread_stack_size=8388608',)
TESTED_LIBTPU = ('0.0.42.1',)


def with_defaults(flags: str, defaults: Sequence[str]) -> str:
  """`flags` plus every flag of `defaults` whose name `flags` does not already set."""
  present = {f.split('=', 1)[0] for f in flags.split()}
  added = [f for f in defaults if f.split('=', 1)[0] not in present]
  return ' '.join([flags.strip()] + added).strip()


def add_xla_cpu_defaults(environ: MutableMapping[str, str] = os.environ) -> str:
  """Sets XLA_FLAGS in `environ` to its value plus the XLA:CPU defaults; returns it."""
  environ[XLA_CPU_ENV] = with_defaults(environ.get(XLA_CPU_ENV, ''), XLA_CPU_DEFAULTS)
  return environ[XLA_CPU_ENV]


def installed_libtpu() -> Optional[str]:
  """The version of the installed `libtpu` distribution, None without one."""
  try:
    return importlib.metadata.version('libtpu')
  except importlib.metadata.PackageNotFoundError:
    return None


def add_libtpu_defaults(environ: MutableMapping[str, str] = os.environ,
                        libtpu_version: Optional[str] = None) -> str:
  """Sets LIBTPU_INIT_ARGS in `environ` to its value plus the libtpu defaults, for a
  tested libtpu (`libtpu_version`, default: the installed one), and returns it. With
  nothing to set (another or no libtpu, and no value of the user's) it stays unset."""
  version = installed_libtpu() if libtpu_version is None else libtpu_version
  value = environ.get(LIBTPU_ENV, '')
  if version in TESTED_LIBTPU:
    value = with_defaults(value, LIBTPU_DEFAULTS)
  if value:
    environ[LIBTPU_ENV] = value
  return value
