"""XLA:CPU flags the project sets by default (read by XLA when its CPU backend starts, so
call `add_defaults()` before the first jax computation; main.py and the benchmarks do).

Only `xla_cpu_*` flags: GPU and TPU compilers ignore them, so their graphs are unchanged.
A flag the user already set in XLA_FLAGS wins.

- `xla_cpu_experimental_ynn_fusion_type=-individual_convolution`: jaxlib 0.10 sends every
  float32 convolution to YNNPACK; this hands convolutions back to XLA's own (Eigen)
  kernels and leaves dots on YNNPACK. Measured (benchmarks/README.md, "Work around the
  network"; benchmarks/results/xla_flags_probe.md): the supervised DeepLabV2-R101 step 17%
  faster at 64x128 and ~4% at 256x512 on 2 AMD EPYC (Zen 4) cores; outputs differ by
  summation order only (<= 8.4e-6 relative).
"""
from __future__ import annotations

import os

DEFAULTS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)
ENV = 'XLA_FLAGS'


def with_defaults(xla_flags: str) -> str:
  """`xla_flags` plus every default whose flag name it does not already set."""
  present = {f.split('=', 1)[0] for f in xla_flags.split()}
  added = [f for f in DEFAULTS if f.split('=', 1)[0] not in present]
  return ' '.join([xla_flags.strip()] + added).strip()


def add_defaults(environ=os.environ) -> str:
  environ[ENV] = with_defaults(environ.get(ENV, ''))
  return environ[ENV]
