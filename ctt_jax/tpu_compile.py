"""Compile the real train and eval steps for a Cloud TPU slice, on a machine without one.

With libtpu installed (`requirements-tpu.txt`, its own venv: tools/setup_tpu_compile_env.sh)
`jax.experimental.topologies.get_topology_desc` describes the devices of a named slice, and
`jit(...).lower(...).compile()` over a mesh of them runs the real TPU compiler. The
executable's `memory_analysis()` gives the HBM each chip needs and `cost_analysis()` the
FLOPs and bytes each chip moves per step; the optimised HLO names every collective.

    report = compile_report(config, 'v5e:2x4')   # a dict, see `compile_report`
    print(format_report(report))

What this cannot tell: real step time (the roofline below is a lower bound from two
published peaks), the input pipeline, or the interconnect's cost (collectives are counted,
not timed). docs/TPU.md says how to read the numbers and what to check on a real pod.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import math
import os
import re
import time
from typing import Any, Optional

from ctt_jax import backend_flags

# libtpu reads LIBTPU_INIT_ARGS once, when it starts: set its defaults before any user of
# this module (CI's check, the compile table) starts it (main.py has done so already).
backend_flags.add_libtpu_defaults()

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections

from ctt_jax import inference
from ctt_jax import layout as layout_lib
from ctt_jax import methods
from ctt_jax import models
from ctt_jax import sharding
from ctt_jax import train_state
from ctt_jax import train_step
# pylint: enable=g-import-not-at-top,wrong-import-position

GIB = 2**30


class CompileCheckError(ValueError):
  """A setting the user can fix (topology, batch, missing libtpu): one sentence."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures of one TPU generation."""
  name: str
  hbm_gib: float  # HBM capacity per chip
  peak_bf16_flops: float  # per chip, FLOP/s
  peak_fp32_flops: float  # per chip, FLOP/s at jax's DEFAULT matmul precision (see below)
  hbm_bytes_per_s: float  # HBM bandwidth per chip
  megacore: bool  # two TensorCores driven as one jax device per chip


# Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e),
# "key chip specifications", read 2026-11-29:
#   v4:  275 TFLOP/s (bf16 or int8), HBM2 32 GiB, 1200 GBps, two TensorCores per chip
#   v5e: 197 TFLOP/s bf16, HBM2 16 GB, 819 GBps, one TensorCore
#   v5p: 459 TFLOP/s bf16, HBM2e 95 GB, 2765 GBps, two TensorCores per chip
#   v6e: 918 TFLOP/s bf16, HBM 32 GB, 1638 GBps, one TensorCore
# HBM comes in binary-sized stacks, so "GB" of capacity is read as GiB. No page publishes a
# float32 peak: the MXUs multiply bfloat16, and jax's DEFAULT precision computes float32
# matmuls and convolutions on TPU as one bfloat16 pass with float32 accumulation (jax docs,
# "Matmul precision"; Cloud TPU "bfloat16" page), so the float32 step's peak is the bf16
# one (HIGHEST precision would take 6 passes; this project does not ask for it).
CHIPS = {
    'v4': Chip('TPU v4', 32, 275e12, 275e12, 1200e9, megacore=True),
    'v5e': Chip('TPU v5 lite', 16, 197e12, 197e12, 819e9, megacore=False),
    'v5p': Chip('TPU v5', 95, 459e12, 459e12, 2765e9, megacore=True),
    'v6e': Chip('TPU v6 lite', 32, 918e12, 918e12, 1638e9, megacore=False),
}

# Cloud TPU accelerator-type names -> the topology names libtpu takes.
ALIASES = {
    'v4-8': 'v4:2x2x1', 'v4-16': 'v4:2x2x2', 'v4-32': 'v4:2x2x4',
    'v5e-4': 'v5e:2x2', 'v5e-8': 'v5e:2x4', 'v5e-16': 'v5e:4x4', 'v5e-32': 'v5e:4x8',
    'v5litepod-4': 'v5e:2x2', 'v5litepod-8': 'v5e:2x4', 'v5litepod-16': 'v5e:4x4',
    'v5p-8': 'v5p:2x2x1', 'v5p-16': 'v5p:2x2x2', 'v5p-32': 'v5p:2x2x4',
    'v6e-4': 'v6e:2x2', 'v6e-8': 'v6e:2x4', 'v6e-16': 'v6e:4x4', 'v6e-32': 'v6e:4x8',
}
# The slices the docs and the table script use; any other valid shape works too.
NAMED_TOPOLOGIES = ('v5e:2x2', 'v5e:2x4', 'v5e:4x4', 'v4:2x2x1', 'v4:2x2x2', 'v5p:2x2x1',
                    'v6e:2x4', 'v6e:4x4')
_TOPOLOGY = re.compile(r'^(v4|v5e|v5p|v6e):(\d+)x(\d+)(?:x(\d+))?$')
# v5e and v6e hosts hold up to 8 chips (2x4); a larger slice has hosts of 2x2 chips.
_SINGLE_HOST_2D = {(1, 1), (2, 2), (2, 4)}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
               'collective-permute')
# Share of the HBM a step may plan for: the runtime keeps some HBM for itself (a v5e chip
# offers ~15.75 of its 16 GiB to programs), and the training loop holds more than the
# step's buffers (the next batch in flight, the eval executable's buffers, host copies for
# asynchronous checkpoints). 10% leaves room for those and for allocator fragmentation.
HBM_MARGIN = 0.10


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # canonical, e.g. 'v5e:2x4'
  generation: str  # a key of CHIPS
  shape: tuple[int, ...]
  options: tuple[tuple[str, Any], ...]  # keyword arguments of get_topology_desc

  @property
  def chip(self) -> Chip:
    return CHIPS[self.generation]

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)


def parse_topology(name: str) -> Topology:
  """'v5e:2x4' or 'v5e-8' -> Topology; an unknown name is a CompileCheckError."""
  canonical = ALIASES.get(name, name)
  match = _TOPOLOGY.match(canonical)
  valid = ', '.join(NAMED_TOPOLOGIES)
  if not match:
    raise CompileCheckError(f'Unknown TPU topology {name!r}; use GENERATION:SHAPE (v4/v5p: '
                            f'AxBxC, v5e/v6e: AxB), e.g. {valid}, or a name like v5e-8.')
  generation = match[1]
  shape = tuple(int(d) for d in match.groups()[1:] if d is not None)
  three_d = generation in ('v4', 'v5p')
  if len(shape) != (3 if three_d else 2) or min(shape) < 1:
    raise CompileCheckError(f'TPU topology {name!r}: {generation} slices have '
                            f'{"three" if three_d else "two"} dimensions, e.g. {valid}.')
  if three_d:
    # One jax device per chip (megacore), hosts of 2x2x1 chips, as on Cloud TPU VMs.
    options = (('chip_config_name', 'megacore'), ('chips_per_host_bounds', (2, 2, 1)))
  elif shape in _SINGLE_HOST_2D:
    options = (('chips_per_host_bounds', (*shape, 1)),)
  else:
    options = (('chips_per_host_bounds', (2, 2, 1)),)
  return Topology(canonical, generation, shape, options)


def topology_devices(topology: Topology) -> list:
  """The compile-only devices of a slice (needs libtpu, not a TPU)."""
  if importlib.util.find_spec('libtpu') is None:
    raise CompileCheckError('Compiling for TPU needs libtpu, which this Python lacks: run '
                            '`bash tools/setup_tpu_compile_env.sh` and use that venv\'s '
                            'python (docs/TPU.md).')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(topology_name=topology.name, platform='tpu',
                                        **dict(topology.options))
  except jax.errors.JaxRuntimeError as e:
    if 'INVALID_ARGUMENT' not in str(e):
      raise
    # e.g. 'v5e:3x3': a well-formed name that is no Cloud TPU slice.
    raise CompileCheckError(f'libtpu has no TPU slice {topology.name!r} '
                            f'({str(e).splitlines()[0]}); use e.g. '
                            f'{", ".join(NAMED_TOPOLOGIES)}.') from e
  return list(desc.devices)


# ----------------------------------------------------------------------------------------
# Reading the compiled executable
# ----------------------------------------------------------------------------------------

# `%name = f32[2,19]{1,0} all-gather(...), channel_id=7, ...` or `... all-gather-start(...)`
# (an async collective is a start/done pair, seen at its start).
_COLLECTIVE_OP = re.compile(
    r'=\s*(?P<shape>\S+|\([^=]*?\))\s+(?P<kind>' + '|'.join(COLLECTIVES) +
    r')(?:-start)?\((?P<rest>[^\n]*)')
_CHANNEL = re.compile(r'channel_id=(\d+)')


def _collective_ops(hlo_text: str):
  """(kind, shape, channel id or None) of every collective instruction in the text."""
  hlo_text = re.sub(r'/\*index=\d+\*/', '', hlo_text)  # tuple comments hold a '='
  for match in _COLLECTIVE_OP.finditer(hlo_text):
    channel = _CHANNEL.search(match['rest'])
    yield match['kind'], match['shape'], channel[1] if channel else None


def count_collectives(hlo_text: str, logical: bool = True) -> dict[str, int]:
  """Collectives in optimised HLO text by kind (every kind present, 0 if none).

  logical=True counts operations: instructions sharing a channel_id are one collective.
  The TPU compiler splits a large asynchronous collective into pieces carried by many
  fusions ("async collective fusion"), each holding a copy of the instruction with the
  same channel_id; logical=False counts those copies (what a plain grep finds).
  """
  counts = {kind: 0 for kind in COLLECTIVES}
  seen = set()
  for kind, _, channel in _collective_ops(hlo_text):
    if logical and channel is not None:
      if (kind, channel) in seen:
        continue
      seen.add((kind, channel))
    counts[kind] += 1
  return counts


def repeated_collectives(hlo_text: str, top: int = 5) -> list[dict[str, Any]]:
  """The most frequent (kind, result shape) instructions, with how many operations they
  are: one gather split in pieces shows as many instructions of one channel."""
  instructions = collections.Counter()
  channels = collections.defaultdict(set)
  for kind, shape, channel in _collective_ops(hlo_text):
    shape = re.sub(r'\{[^{}]*\}', '', shape)  # drop layouts: f32[2,19]{1,0:T(8,128)}
    instructions[kind, shape] += 1
    channels[kind, shape].add(channel)
  return [{'kind': kind, 'shape': shape, 'instructions': count,
           'operations': len(channels[kind, shape])}
          for (kind, shape), count in instructions.most_common(top)]


def memory_summary(compiled) -> dict[str, float]:
  """HBM per chip in GiB from `compiled.memory_analysis()`.

  total = arguments + outputs - aliased (donated state written in place) + temporaries
  + generated code: what one chip must hold while the step runs.
  """
  mem = compiled.memory_analysis()
  args, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
  alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
  code = mem.generated_code_size_in_bytes
  return {
      'argument_gib': args / GIB, 'output_gib': out / GIB, 'alias_gib': alias / GIB,
      'temp_gib': temp / GIB, 'code_gib': code / GIB,
      'total_gib': (args + out - alias + temp + code) / GIB,
  }


def cost_summary(compiled) -> dict[str, float]:
  """FLOPs and HBM bytes accessed per chip and step (`cost_analysis()` of the SPMD program,
  which is the program one chip runs)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per program
    cost = cost[0]
  return {'flops': float(cost.get('flops', 0.0)),
          'bytes_accessed': float(cost.get('bytes accessed', 0.0))}


def roofline(flops: float, bytes_accessed: float, chip: Chip, dtype: str) -> dict[str, Any]:
  """Lower bound on step time: the slower of compute at peak and HBM traffic at bandwidth."""
  peak = chip.peak_bf16_flops if dtype == 'bfloat16' else chip.peak_fp32_flops
  compute_s = flops / peak
  memory_s = bytes_accessed / chip.hbm_bytes_per_s
  return {'compute_s': compute_s, 'hbm_s': memory_s, 'roofline_s': max(compute_s, memory_s),
          'bound': 'compute' if compute_s >= memory_s else 'HBM'}


def fits(total_gib: float, capacity_gib: float, margin: float = HBM_MARGIN) -> bool:
  """True when the step's HBM stays within (1 - margin) of the chip's capacity."""
  return total_gib <= (1.0 - margin) * capacity_gib


def analyse(compiled, chip: Chip, dtype: str) -> dict[str, Any]:
  """Memory, cost, collectives and roofline of one compiled step."""
  memory = memory_summary(compiled)
  cost = cost_summary(compiled)
  hlo = compiled.as_text()
  return {
      **memory, **cost,
      'fits': fits(memory['total_gib'], chip.hbm_gib),
      'collectives': count_collectives(hlo),
      'collective_instructions': count_collectives(hlo, logical=False),
      'repeated_collectives': repeated_collectives(hlo),
      **roofline(cost['flops'], cost['bytes_accessed'], chip, dtype),
  }


# ----------------------------------------------------------------------------------------
# The steps' abstract arguments
# ----------------------------------------------------------------------------------------


def num_labeled_images(config: ml_collections.ConfigDict) -> int:
  """N_L of the config's partition, from the packaged lists (no data needed).

  Only the bank's k per push (k = max(1, N_L // N)) depends on it.
  """
  from ctt_jax.data import splits  # pylint: disable=g-import-not-at-top
  data = config.data
  folder = os.path.join(splits.splits_dir(data), data.name)
  if data.name == 'synthetic':
    return splits.labeled_count(data.split, data.labeled_fraction, data.synthetic_num_train)
  if not os.path.isdir(folder):
    raise CompileCheckError(f'No partition lists for data.name={data.name!r} in {folder}; '
                            'the compile check knows cityscapes, voc_aug, voc_classic and '
                            'synthetic.')
  name = data.split
  if name == 'full':
    name = 'train_aug' if data.name == 'voc_aug' else 'train'
  return len(splits.read_id_list(os.path.join(folder, name + '.txt')))


def eval_image_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(H, W) the eval stream pads to: data.eval_size, else the paper protocol's resize."""
  data = config.data
  if tuple(data.eval_size) != (0, 0):
    return tuple(data.eval_size)
  if data.name == 'synthetic':
    return tuple(data.synthetic_image_size)
  if data.eval_protocol == 'paper' and tuple(data.resize) != (0, 0):
    return tuple(data.resize)
  if data.name == 'cityscapes':
    return (1024, 2048)
  raise CompileCheckError(f'Set data.eval_size for data.name={data.name!r}: the compile '
                          'check cannot read the largest val image without the data.')


def plan_layout(config: ml_collections.ConfigDict, num_devices: int) -> layout_lib.Layout:
  """The (data, space) mesh a run of `config` uses on `num_devices` chips (layout.py); a
  config that cannot be laid out is a CompileCheckError."""
  try:
    return layout_lib.plan_for_config(config, num_devices)
  except layout_lib.LayoutError as e:
    raise CompileCheckError(str(e)) from None


def _struct(shape, dtype, sharding_):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding_)


def _laid_out(batch: dict[str, Any], mesh) -> dict[str, Any]:
  """Shapes -> ShapeDtypeStructs sharded as the training loop shards them (pixel_spec)."""
  shardings = sharding.batch_shardings(batch, mesh)
  return jax.tree.map(lambda x, s: _struct(x.shape, x.dtype, s), batch, shardings)


def abstract_train_batch(config, global_batch: int, mesh) -> dict[str, Any]:
  """The train step's batch (docs/INTERFACES.md) as sharded ShapeDtypeStructs."""
  h, w = config.data.crop_size
  shape = lambda *s: jax.ShapeDtypeStruct((global_batch, h, w) + s[1:], s[0])
  batch = {'labeled': {'image': shape(jnp.uint8, 3), 'label': shape(jnp.int32)}}
  if methods.from_config(config).semi_supervised:
    batch['unlabeled'] = {'image': shape(jnp.uint8, 3), 'valid': shape(jnp.bool_)}
  return _laid_out(batch, mesh)


def abstract_eval_batch(config, global_batch: int, mesh) -> dict[str, Any]:
  h, w = eval_image_size(config)
  batch = {'image': jax.ShapeDtypeStruct((global_batch, h, w, 3), jnp.uint8),
           'label': jax.ShapeDtypeStruct((global_batch, h, w), jnp.int32),
           'valid': jax.ShapeDtypeStruct((global_batch, h, w), jnp.bool_),
           'index': jax.ShapeDtypeStruct((global_batch,), jnp.int32)}
  return _laid_out(batch, mesh)


def _replicated_state(config, model, mesh):
  state = train_state.abstract_train_state(config, model, tuple(config.data.crop_size))
  rep = sharding.replicated(mesh)
  return jax.tree.map(lambda x: _struct(x.shape, x.dtype, rep), state)


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------


_UNITS = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}
# XLA:TPU refuses a program that cannot fit: "Ran out of memory on HBM, the total memory
# required for HLO temporaries (32.00G) exceeds available HBM (15.75G)."
_HBM_EXCEEDED = re.compile(r'\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)')


def out_of_hbm(message: str) -> Optional[dict[str, Any]]:
  """The analysis of a compile that XLA refused for HBM, or None for any other error."""
  if 'RESOURCE_EXHAUSTED' not in message and 'Ran out of memory' not in message:
    return None
  found = _HBM_EXCEEDED.search(message)
  required = float(found[1]) * _UNITS[found[2]] / GIB if found else float('nan')
  available = float(found[3]) * _UNITS[found[4]] / GIB if found else float('nan')
  return {'fits': False, 'total_gib': required, 'available_gib': available,
          'compile_error': message.strip().splitlines()[0][:300]}


def compile_and_analyse(lowered, chip: Chip, dtype: str) -> dict[str, Any]:
  """Compiles; the analysis of the executable, or of XLA's refusal when HBM is short."""
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    refused = out_of_hbm(str(e))
    if refused is None:
      raise
    return {**refused, 'compile_s': time.perf_counter() - start}
  return {**analyse(compiled, chip, dtype), 'compile_s': time.perf_counter() - start}


def as_on_tpu(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` as a process on the TPU resolves it. `model.conv_impl='auto'` picks the graph
  by `jax.default_backend()` when the model is traced, and on a machine compiling for a TPU
  it does not have that backend is the CPU: 'auto' would compile the CPU's matmul
  convolutions (with their scalar broadcasts across the batch shards, 2 all-reduces per
  ResNet block) instead of XLA's, which a TPU run uses. So 'auto' becomes 'xla' here; an
  explicit 'im2col' is kept (the user asked for it)."""
  if config.model.conv_impl != 'auto':
    return config
  config = config.copy_and_resolve_references()
  config.model.conv_impl = 'xla'
  return config


def compile_report(config: ml_collections.ConfigDict, topology: str, *,
                   steps: tuple[str, ...] = ('train', 'eval'),
                   num_labeled: Optional[int] = None) -> dict[str, Any]:
  """Compiles the exact train step and eval step of `config` for a TPU slice.

  Args:
    config: a run config; `batch_size` is the global labeled batch (the unlabeled batch is
      as large), laid over the slice as a run lays it (layout.py: data x space).
    topology: 'v5e:2x4', 'v4:2x2x1', ... or an accelerator type such as 'v5e-8'.
    steps: which steps to compile: 'train' and/or 'eval' (data.eval_batch_size images at
      the eval size, on the same mesh).
    num_labeled: N_L for the bank's k per push; default from the partition list.
  Returns:
    A JSON-able dict: the slice, the chip's figures, the batch, and per step ('train',
    'eval') HBM per chip (arguments, outputs, temporaries, total), whether it fits,
    FLOPs and bytes per chip-step, collectives by kind, roofline time and its bound. A
    step XLA refuses for lack of HBM has fits=False, the HBM it asked for and the error.
  """
  topo = parse_topology(topology)
  layout = plan_layout(config, topo.num_chips)
  config = as_on_tpu(config)
  model = models.get_model(config.model, config.num_classes)
  if config.model.remat and getattr(model, 'remat', '') != config.model.remat:
    # The report names the remat it compiled; a model that ignores the key would lie.
    raise CompileCheckError(f'model.remat={config.model.remat!r} has no effect on '
                            f'{type(model).__name__} (model.name={config.model.name!r}); '
                            "set model.remat='' or use a DeepLab model.")
  devices = topology_devices(topo)
  mesh = sharding.make_mesh(devices, layout)
  rep = sharding.replicated(mesh)
  per_chip = config.batch_size / layout.data / layout.space  # images (or a share of one)
  state = _replicated_state(config, model, mesh)
  dtype = config.model.dtype
  chip = topo.chip
  report = {
      'topology': topo.name, 'chip': chip.name, 'num_chips': len(devices),
      'num_hosts': len({d.process_index for d in devices}),
      'hbm_capacity_gib': chip.hbm_gib, 'hbm_margin': HBM_MARGIN,
      'peak_flops': chip.peak_bf16_flops if dtype == 'bfloat16' else chip.peak_fp32_flops,
      'hbm_bytes_per_s': chip.hbm_bytes_per_s,
      'method': config.method, 'num_pairs': int(config.num_pairs), 'dtype': dtype,
      'unlabeled_per_chip': per_chip * (methods.from_config(config).input_streams - 1),
      'remat': config.model.remat, 'conv_impl': config.model.conv_impl,
      'crop_size': list(config.data.crop_size),
      'bank_size': int(config.bank_size), 'global_batch': int(config.batch_size),
      'per_chip_batch': int(per_chip) if per_chip == int(per_chip) else per_chip,
      'mesh': {'data': layout.data, 'space': layout.space},
      'layout': layout.describe(int(config.batch_size), int(config.data.crop_size[0]),
                                methods.from_config(config).input_streams),
  }
  if 'train' in steps:
    if num_labeled is None:
      num_labeled = num_labeled_images(config)
    report['num_labeled'] = int(num_labeled)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    step = train_step.make_train_step(config, model, num_labeled)
    batch = abstract_train_batch(config, config.batch_size, mesh)
    lowered = sharding.jit_train_step(step, mesh, sharding.batch_shardings(batch, mesh)).lower(
        state, batch, _struct(rng.shape, rng.dtype, rep))
    report['train'] = compile_and_analyse(lowered, chip, dtype)
  if 'eval' in steps:
    # The eval batch as the run reads it (data.eval_batch_size), on the training mesh.
    eval_batch = int(config.data.eval_batch_size)
    try:
      layout_lib.check_eval(layout, eval_batch, eval_image_size(config)[0])
    except layout_lib.LayoutError as e:
      raise CompileCheckError(str(e)) from None
    eval_fn = inference.make_eval_step(config, model)
    lowered = sharding.jit_eval_step(
        eval_fn, mesh, sharding.eval_batch_shardings(mesh, eval_batch)).lower(
            state, abstract_eval_batch(config, eval_batch, mesh))
    report['eval'] = {**compile_and_analyse(lowered, chip, dtype),
                      'image_size': list(eval_image_size(config)), 'global_batch': eval_batch,
                      'per_chip_batch': eval_batch / len(devices)}
  return report


def format_report(report: dict[str, Any]) -> str:
  """A table for humans: one row per compiled step."""
  head = (f"{report['topology']} ({report['num_chips']} x {report['chip']}, "
          f"{report['num_hosts']} host(s), {report['hbm_capacity_gib']:g} GiB HBM per chip); "
          f"{report['method']} x{report['num_pairs']}, {report['dtype']}, "
          f"remat={report['remat'] or 'none'}, batch_size={report['global_batch']}, crop "
          f"{report['crop_size'][0]}x{report['crop_size'][1]}; {report['layout']}")
  cols = ('step', 'args GiB', 'temp GiB', 'total GiB', 'fits', 'TFLOP', 'GiB moved',
          'roofline ms', 'bound', 'collectives')
  lines = [head, '| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  for name in ('train', 'eval'):
    if name not in report:
      continue
    r = report[name]
    if 'compile_error' in r:
      lines.append(f"| {name} | - | - | {r['total_gib']:.2f} | NO | - | - | - | - | "
                   f"XLA: {r['compile_error']} |")
      continue
    coll = ', '.join(f'{v} {k}' for k, v in r['collectives'].items() if v) or 'none'
    lines.append('| ' + ' | '.join([
        name, f"{r['argument_gib']:.2f}", f"{r['temp_gib']:.2f}", f"{r['total_gib']:.2f}",
        'yes' if r['fits'] else 'NO', f"{r['flops'] / 1e12:.2f}",
        f"{r['bytes_accessed'] / GIB:.1f}", f"{r['roofline_s'] * 1e3:.1f}", r['bound'],
        coll]) + ' |')
  lines.append(f"fits = total <= {1 - report['hbm_margin']:.0%} of HBM; roofline = "
               'max(FLOPs / peak, bytes / HBM bandwidth), a lower bound on step time.')
  return '\n'.join(lines)


def run_compile_mode(config: ml_collections.ConfigDict, workdir: str, topology: str
                     ) -> dict[str, Any]:
  """`main.py --mode=compile`: compiles, writes <workdir>/tpu_compile_<topology>.json and
  prints the table. Returns the report."""
  report = compile_report(config, topology)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f"tpu_compile_{report['topology'].replace(':', '_')}.json")
  with open(path, 'w') as f:
    json.dump(report, f, indent=2)
  print(format_report(report))
  print(f'Wrote {path}')
  return report
