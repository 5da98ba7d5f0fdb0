"""Where the supervised step's time goes, ctt-jax against PyTorch, op group by op group,
on ONE thread, by CPU time (`--threads 2`: wall clock on two CPUs; XLA then runs its
convolutions and matmuls asynchronously, so their profiled times no longer measure them).

    python benchmarks/op_compare.py --size 64x128 --out benchmarks/results/op_compare_64x128
    python benchmarks/op_compare.py --size 256x512 --steps 5 --profile_steps 2 \
        --out benchmarks/results/op_compare_256x512

The process is pinned to one CPU (`--cpu`, default the first it may use) before jax or
torch exist, and torch runs one thread, so the process's CPU time is the step's work and
XLA's and torch's ops run one after another (their times add up to the step). Three parts:

1. Whole step: the two steps alternate (`bench_utils.alternate`, `--timing cpu`), with
   the load protocol of `load_guard.py` (every thread at nice `--priority`, others' share
   of the CPU per step and over the section).
2. ctt-jax per op: `profile` (jax.profiler trace, seconds per HLO
   instruction) over `--profile_steps` steps; each top-level instruction is classified by
   `jax_group` from its opcode, its fused computation's opcodes and the `op_name`
   metadata of every instruction in it (the Flax module path and the jax primitive).
3. PyTorch per op: `torch.profiler` over `--profile_steps` steps; every event's self CPU
   time goes to the group of its outermost classified ancestor (`torch_group`:
   `aten::conv2d` and everything under it is conv forward, the autograd node
   `ConvolutionBackward0` and everything under it conv backward, `Optimizer.step#SGD.step`
   the optimizer, ...). torch's `convolution_backward` computes input and kernel
   gradients in one op, so a second profiled pass runs every `nn.Conv2d` through an
   autograd function that calls `aten.convolution_backward` twice, once per gradient
   (`SplitConvBackward`); that pass's input / kernel shares split the first pass's
   conv-backward time (the JSON keeps both passes).

Groups (both frameworks): conv forward, conv input-grad, conv kernel-grad (matmuls), conv
kernel-grad data movement (ctt-jax's taps, pads, transposes of fast_conv.kernel_grad;
PyTorch has none outside its kernel), conv input-grad kernel flip (the reversed, in/out
swapped copy of every k x k weight that XLA's transposed convolution reads; oneDNN reads
the weight as it is, its reorders are inside its kernels), batch-norm fwd+bwd, elementwise/ReLU/add, loss +
softmax, optimizer update, gradient norm + finite check (ctt-jax only), and the rest
(pooling, upsampling, group norm, dropout, head SE, copies). XLA fuses frozen BN with the
ReLU and residual add that follow it (and their backward), so a fusion holding any BN op
counts as batch-norm; compare the "batch-norm + elementwise" subtotal across frameworks.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Standard library only before the pinning and the priority: nothing may start threads.
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from benchmarks import load_guard as lg

GROUPS = (
    'conv forward', 'conv input-grad', 'conv input-grad (kernel flip + transpose)',
    'conv kernel-grad (matmul)',
    'conv kernel-grad (taps, pads, transposes)', 'batch-norm (fwd+bwd)',
    'elementwise/ReLU/add', 'loss + softmax', 'optimizer update',
    'grad norm + finite check', 'pooling', 'upsample (bilinear)', 'group norm (head)',
    'dropout + RNG', 'head SE (pool, fc)', 'other (copies, misc)',
)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', default='64x128')
  parser.add_argument('--backbone', default='resnet101')
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--head', default='', choices=('', 'aspp_se', 'bottleneck'))
  parser.add_argument('--conv_impl', default='auto')
  parser.add_argument('--steps', type=int, default=7, help='alternating timed steps')
  parser.add_argument('--profile_steps', type=int, default=3)
  parser.add_argument('--cpu', type=int, default=-1, help='CPU to pin to (-1: first)')
  parser.add_argument('--threads', type=int, default=1,
                      help='CPUs (from --cpu on) and torch threads; above 1 every time is '
                           'wall clock, so the groups show which ops do not scale')
  parser.add_argument('--top', type=int, default=4, help='ops listed per group')
  parser.add_argument('--out', default='', help='results path without extension')
  parser.add_argument('--malloc_keep', action='store_true',
                      help='glibc malloc: one arena, no mmap, never trim (mallopt, before '
                           'jax and torch exist), so freed memory is reused, not re-faulted')
  lg.add_protocol_args(parser)
  return parser.parse_args()


ARGS = parse_args()


def malloc_keep() -> None:
  """XLA:CPU allocates each execution's temporaries as one block (330 MiB at 64x128, 3 GiB
  at 256x512) and frees it after the step; glibc serves such blocks by mmap (or from a
  thread's arena, which falls back to mmap above 64 MiB) and unmaps them on free, so every
  step page-faults its whole temp buffer in again (84 k / 770 k minor faults per step here,
  0.15 / 1.3-1.5 s of system time). One arena, no mmap and no trimming keep the memory."""
  import ctypes  # pylint: disable=g-import-not-at-top
  libc = ctypes.CDLL('libc.so.6')
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # malloc.h
  ok = (libc.mallopt(m_arena_max, 1), libc.mallopt(m_mmap_max, 0),
        libc.mallopt(m_trim_threshold, -1))  # -1: SIZE_MAX, never trim
  if ok != (1, 1, 1):
    sys.exit(f'mallopt failed: {ok}')


if ARGS.malloc_keep:
  malloc_keep()
_allowed = sorted(os.sched_getaffinity(0))
_cpu = ARGS.cpu if ARGS.cpu >= 0 else _allowed[0]
_cpus = _allowed[_allowed.index(_cpu):][:ARGS.threads]
if len(_cpus) < ARGS.threads:
  sys.exit(f'--threads={ARGS.threads}: only {len(_cpus)} CPUs from CPU {_cpu} on may be used.')
os.sched_setaffinity(0, _cpus)
# One thread: CPU time is the step's work, whatever the others do. More: wall clock.
ARGS.timing = 'cpu' if ARGS.threads == 1 else 'wall'
_clock = time.process_time if ARGS.threads == 1 else time.perf_counter
GUARD = lg.LoadGuard(ARGS.others_threshold, ARGS.priority)
GUARD.enforce_priority('start')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# pylint: disable=g-import-not-at-top,wrong-import-position
from ctt_jax import backend_flags
backend_flags.add_xla_cpu_defaults()

import jax
import torch

from benchmarks import bench_utils as bu
from benchmarks import torch_step

torch.set_num_threads(ARGS.threads)


# --- ctt-jax: HLO instructions -> groups --------------------------------------------------
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$')


def hlo_index(text: str) -> dict[str, dict]:
  """name -> {shape, opcode, op_name, computation body kinds} for every instruction."""
  computations, bodies, current, index = {}, {}, None, {}
  for line in text.split('\n'):
    if line.endswith('{') and ('(' in line) and not line.startswith(' '):
      current = line.split()[0].lstrip('%') if not line.startswith('ENTRY') else 'ENTRY'
      computations[current], bodies[current] = [], ''
      continue
    if current is not None:
      bodies[current] += line
    m = _INSTRUCTION.match(line)
    if not m or current is None:
      continue
    name, shape, opcode, rest = m.groups()
    computations[current].append(opcode)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    calls = re.search(r'calls=%?([\w.\-]+)', rest)
    index[name] = {'shape': shape, 'opcode': opcode, 'rest': rest,
                   'op_name': op_name.group(1) if op_name else '',
                   'calls': calls.group(1) if calls else None}
  for info in index.values():
    info['body'] = computations.get(info['calls'], []) if info['calls'] else []
    info['fused_text'] = bodies.get(info['calls'], info['rest'])
  return index


def profile(run_step, steps: int) -> dict[str, float]:
  """Seconds per HLO instruction name, summed over `steps` executions."""
  # TensorFlow's xplane proto, installed with the stack.
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  directory = tempfile.mkdtemp(prefix='ctt_profile_')
  with jax.profiler.trace(directory):
    for _ in range(steps):
      run_step()
  path = sorted(glob.glob(os.path.join(directory, '**', '*.xplane.pb'), recursive=True))[-1]
  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  totals = collections.Counter()
  for plane in space.planes:
    if plane.name != '/host:CPU':
      continue
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        totals[name] += event.duration_ps * 1e-12
  return totals


def _op_names(info: dict) -> list[str]:
  return [info['op_name']] + re.findall(r'op_name="([^"]*)"', info['fused_text'])


def jax_group(info: dict) -> str:
  """The group of one top-level HLO instruction (see the module docstring)."""
  ops = set(info['body']) | {info['opcode']}
  names = [n for n in _op_names(info) if n]
  root = info['op_name']
  backward = 'transpose(' in root
  joined = ' '.join(names)
  if 'convolution' in ops:
    window = re.search(r'window=\{size=(\d+)x(\d+)', info['fused_text'])
    if window and int(window.group(1)) * int(window.group(2)) > 49:
      return 'conv kernel-grad (matmul)'  # XLA's own kernel-gradient convolution
    return 'conv input-grad' if backward else 'conv forward'
  if 'dot' in ops:
    if '_resize' in root:
      return 'upsample (bilinear)'
    if '/se/' in root:
      return 'head SE (pool, fc)'
    if not backward:
      return 'conv forward'  # 1x1 convolutions (fast_conv.dense / einsum)
    if '...d,cd->...c' in root:
      return 'conv input-grad'  # fast_conv.dense's d_x
    return 'conv kernel-grad (matmul)'
  if 'reverse' in ops and backward_names(names):
    # XLA's transposed convolution reads the kernel flipped and with in/out swapped: a
    # copy fusion of the weight per k x k convolution and step.
    return 'conv input-grad (kernel flip + transpose)'
  if any('/cond/' in n for n in names):
    return 'optimizer update'
  if any(k in joined for k in ('log_softmax', 'take_along_axis')):
    return 'loss + softmax'
  if re.search(r'/(bn\d?|downsample_bn|bn\d)/', joined):
    return 'batch-norm (fwd+bwd)'
  if '/gn/' in joined:
    return 'group norm (head)'
  if 'reduce-window' in ops or 'select-and-scatter' in ops or 'scatter' in ops and \
      'select_and_scatter' in joined:
    return 'pooling'
  if re.search(r'/conv\d?/(slice|jit\(_pad\)|transpose|stack|concatenate|div)', joined) \
      or re.search(r'/(downsample_conv|classifier)/(slice|jit\(_pad\)|transpose|div)',
                   joined) and backward:
    return 'conv kernel-grad (taps, pads, transposes)'
  if '_resize' in joined:
    return 'upsample (bilinear)'
  if 'Dropout' in joined or 'threefry' in joined:
    return 'dropout + RNG'
  if '/se/' in joined:
    return 'head SE (pool, fc)'
  if 'DeepLab' in joined and re.search(r'/(jit\(relu\)/max|max|add|add_any|select_n|gt|'
                                       r'div|mul)(?!\w)', joined):
    return 'elementwise/ReLU/add'
  if re.search(r'jit\(train_step\)/(jvp\(\)|transpose\(jvp\(\)\))', joined):
    return 'loss + softmax'  # the loss's mean over valid pixels and its gradient
  if re.search(r'jit\(train_step\)/(reduce_sum|integer_pow|sqrt|convert_element_type|'
               r'is_finite|mul|div|add|sub)', joined) or 'is-finite' in ops:
    return 'grad norm + finite check'
  return 'other (copies, misc)'


CONTROL_FLOW = ('conditional', 'while', 'call')


def backward_names(names) -> bool:
  return any('transpose(' in n for n in names)


def add_users(index: dict):
  """info['users']: the instructions that read each instruction (operands named in the
  HLO text), so that an instruction without op_name metadata can take its user's group."""
  for info in index.values():
    info.setdefault('users', [])
  for name, info in index.items():
    for operand in re.findall(r'%([\w.\-]+)', info['rest'].split(')', 1)[0]):
      if operand in index and operand != name:
        index[operand]['users'].append(name)


def group_of(name: str, index: dict, seen=()) -> str:
  """jax_group, or for an instruction with no op_name anywhere (an iota, a layout copy)
  the group of its first user that has one."""
  info = index[name]
  if any(_op_names(info)) or not info['users'] or len(seen) > 8:
    return jax_group(info)
  return group_of(info['users'][0], index, seen + (name,))


def profile_jax(step, steps: int) -> dict:
  """Seconds per step by group, and the top instructions of each group."""
  index = hlo_index(step.compiled.as_text())
  add_users(index)
  cpu = [0.0]

  def run():  # CPU time of the steps only, not of the trace's export
    start = _clock()
    step.run()
    cpu[0] += _clock() - start
  totals = profile(run, steps)
  cpu = cpu[0] / steps
  per_op = {n: t / steps for n, t in totals.items()
            if n in index and index[n]['opcode'] not in CONTROL_FLOW}
  nested = {n: t / steps for n, t in totals.items()
            if n in index and index[n]['opcode'] in CONTROL_FLOW}
  groups, top = collections.Counter(), collections.defaultdict(list)
  for name, t in per_op.items():
    g = group_of(name, index)
    groups[g] += t
    top[g].append((t, name, index[name]['shape'][:40], index[name]['op_name'][-90:]))
  return {'groups': dict(groups), 'sum_ops_s': sum(per_op.values()),
          'profiled_cpu_s': cpu, 'control_flow_s': nested,
          'top': {g: sorted(v, reverse=True)[:ARGS.top] for g, v in top.items()}}


# --- PyTorch: profiler events -> groups ------------------------------------------------------
TORCH_RULES = (  # (regex on the event name, group); the outermost match wins
    (r'^conv_input_grad$', 'conv input-grad'),
    (r'^conv_kernel_grad$', 'conv kernel-grad (matmul)'),
    (r'Optimizer\.(step|zero_grad)', 'optimizer update'),
    (r'ConvolutionBackward|SplitConvBackwardBackward', 'conv backward'),
    (r'^aten::(conv2d|convolution|_convolution)$', 'conv forward'),
    (r'BatchNorm|^aten::batch_norm$', 'batch-norm (fwd+bwd)'),
    (r'GroupNorm|^aten::group_norm$', 'group norm (head)'),
    (r'MaxPool|max_pool2d', 'pooling'),
    (r'[Uu]psample|interpolate', 'upsample (bilinear)'),
    (r'NllLoss|LogSoftmax|cross_entropy|log_softmax|nll_loss', 'loss + softmax'),
    (r'dropout|bernoulli', 'dropout + RNG'),
    (r'adaptive_avg_pool|AdaptiveAvgPool|MeanBackward|^aten::(linear|addmm|sigmoid|mean)$|'
     r'AddmmBackward|SigmoidBackward|TBackward|^aten::t$', 'head SE (pool, fc)'),
    (r'Relu|relu|Threshold|threshold|^aten::(add_?|mul_?|cat)$|AddBackward|MulBackward|'
     r'CatBackward', 'elementwise/ReLU/add'),
    (r'AccumulateGrad', 'other (copies, misc)'),
)


def torch_group(name: str) -> str | None:
  for pattern, group in TORCH_RULES:
    if re.search(pattern, name):
      return group
  return None


class SplitConvBackward(torch.autograd.Function):
  """conv2d whose backward computes the input and the kernel gradient in two
  `aten.convolution_backward` calls, each under its own profiler label."""

  @staticmethod
  def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
    ctx.save_for_backward(x, weight)
    ctx.conf = (stride, padding, dilation, groups, None if bias is None else bias.shape)
    return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)

  @staticmethod
  def backward(ctx, gy):
    x, weight = ctx.saved_tensors
    stride, padding, dilation, groups, bias_shape = ctx.conf
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    bwd = torch.ops.aten.convolution_backward
    gx = gw = gb = None
    if need_x:
      with torch.profiler.record_function('conv_input_grad'):
        gx = bwd(gy, x, weight, bias_shape, stride, padding, dilation, False, [0, 0],
                 groups, [True, False, False])[0]
    if need_w or need_b:
      with torch.profiler.record_function('conv_kernel_grad'):
        _, gw, gb = bwd(gy, x, weight, bias_shape, stride, padding, dilation, False,
                        [0, 0], groups, [False, need_w, need_b])
    return gx, gw, gb, None, None, None, None


def split_convs(net: torch.nn.Module, on: bool):
  """Routes every nn.Conv2d of `net` through SplitConvBackward (on) or back (off)."""
  for m in net.modules():
    if isinstance(m, torch.nn.Conv2d):
      if on:
        m.forward = (lambda x, m=m: SplitConvBackward.apply(
            x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups))
      elif 'forward' in m.__dict__:
        del m.forward


def _walk(event, inherited, groups, top):
  own = torch_group(event.name)
  # The split pass's labels sit inside the conv-backward node: they refine it.
  group = own if own in ('conv input-grad', 'conv kernel-grad (matmul)') else (
      inherited or own)
  key = group or 'unclassified (python, profiler)'
  groups[key] += event.self_cpu_time_total * 1e-6
  top[key][event.name] += event.self_cpu_time_total * 1e-6
  for child in event.cpu_children:
    _walk(child, group, groups, top)


def profile_torch(run, steps: int) -> dict:
  from torch.profiler import ProfilerActivity, profile, record_function
  cpu = 0.0
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      start = _clock()
      with record_function('torch_step'):
        run()
      cpu += _clock() - start
  cpu /= steps
  groups = collections.Counter()
  top = collections.defaultdict(collections.Counter)
  for event in prof.events():
    if event.cpu_parent is None:
      _walk(event, None, groups, top)
  groups = {g: t / steps for g, t in groups.items()}
  return {'groups': groups, 'sum_ops_s': sum(groups.values()), 'profiled_cpu_s': cpu,
          'top': {g: [(t / steps, n) for n, t in c.most_common(ARGS.top)]
                  for g, c in top.items()}}


def torch_table(plain: dict, split: dict) -> dict:
  """The plain pass's groups with its conv-backward time split by the split pass's
  input / kernel shares."""
  groups = dict(plain['groups'])
  bwd = groups.pop('conv backward', 0.0)
  gx = split['groups'].get('conv input-grad', 0.0)
  gw = split['groups'].get('conv kernel-grad (matmul)', 0.0)
  share = gx / (gx + gw) if gx + gw else 0.0
  groups['conv input-grad'] = bwd * share
  groups['conv kernel-grad (matmul)'] = bwd * (1 - share)
  return {'groups': groups, 'conv_backward_s': bwd, 'input_share': share,
          'split_pass_dx_s': gx, 'split_pass_dw_s': gw,
          'split_pass_conv_backward_rest_s': split['groups'].get('conv backward', 0.0)}


def rusage_step(runner) -> dict:
  """User and system CPU seconds and minor page faults of one step."""
  import resource  # pylint: disable=g-import-not-at-top
  a = resource.getrusage(resource.RUSAGE_SELF)
  runner.run()
  b = resource.getrusage(resource.RUSAGE_SELF)
  return {'user_s': b.ru_utime - a.ru_utime, 'sys_s': b.ru_stime - a.ru_stime,
          'minor_faults': b.ru_minflt - a.ru_minflt}


# --- the run ----------------------------------------------------------------------------------
def main():
  head = ARGS.head or bu.default_head()
  size, s = bu.network_args(argparse.Namespace(size=ARGS.size, backbone=ARGS.backbone,
                                               width_multiplier=ARGS.width_multiplier,
                                               head=head))
  config = bu.make_config(s, 'supervised', 1, ARGS.conv_impl, supervised_ema=False)
  started = time.strftime('%Y-%m-%d %H:%M:%S %Z')
  load_start = os.getloadavg()
  torch_run = torch_step.TorchStep(config, size, seed=0)
  params = torch_step.assert_same_network(config, torch_run.net)
  jax_step = bu.JaxStep(config, size, model_flops=False)
  bu.log(f'{ARGS.size}: compiled in {jax_step.compile_s:.0f} s, {params:,} parameters')

  section = GUARD.sample()
  timed = bu.alternate({'jax': jax_step, 'torch': torch_run}, ARGS.steps, GUARD, ARGS.timing)
  faults = {name: rusage_step(r) for name, r in (('jax', jax_step), ('torch', torch_run))}
  bu.log(f'one more step each: {faults}')
  start = GUARD.sample()
  jax_prof = profile_jax(jax_step, ARGS.profile_steps)
  jax_prof['window'] = GUARD.shares(start, GUARD.sample())
  bu.log(f'jax profiled: sum of ops {jax_prof["sum_ops_s"]:.3f} s/step')
  start = GUARD.sample()
  torch_plain = profile_torch(torch_run.run, ARGS.profile_steps)
  torch_plain['window'] = GUARD.shares(start, GUARD.sample())
  split_convs(torch_run.net, True)
  torch_run.run()  # warm-up of the split pass
  start = GUARD.sample()
  torch_split = profile_torch(torch_run.run, ARGS.profile_steps)
  torch_split['window'] = GUARD.shares(start, GUARD.sample())
  split_convs(torch_run.net, False)
  bu.log(f'torch profiled: {torch_plain["sum_ops_s"]:.3f} s/step (split pass '
         f'{torch_split["sum_ops_s"]:.3f})')
  section = GUARD.shares(section, GUARD.sample())
  GUARD.enforce_priority('end')

  results = {
      'started': started, 'finished': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
      'size': ARGS.size, 'head': head, 'conv_impl': ARGS.conv_impl, 'cpu': _cpu,
      'malloc_keep': ARGS.malloc_keep, 'rusage_step': faults,
      'machine': {'cpu': bu.cpu_name(), 'jax': jax.__version__, 'torch': torch.__version__,
                  'xla_flags': os.environ.get('XLA_FLAGS', ''),
                  'torch_threads': torch.get_num_threads()},
      'load_average': [load_start, os.getloadavg()], 'section': section,
      'protocol': {**GUARD.summary(), 'timing': ARGS.timing}, 'threads': ARGS.threads,
      'whole_step': {k: {kk: v[kk] for kk in ('median_s', 'median_over', 'undisturbed',
                                               'steps', 'times')}
                     for k, v in timed['runners'].items()},
      'whole_step_window': timed['window'],
      'jax': jax_prof, 'torch_plain': torch_plain, 'torch_split': torch_split,
      'torch': torch_table(torch_plain, torch_split),
  }
  results['whole_step']['ratio'] = (results['whole_step']['jax']['median_s']
                                    / results['whole_step']['torch']['median_s'])
  text = markdown(results)
  print(text)
  if ARGS.out:
    out = ARGS.out.removesuffix('.json').removesuffix('.md')
    with open(out + '.json', 'w') as f:
      json.dump(results, f, indent=1, default=bu.json_default)
    with open(out + '.md', 'w') as f:
      f.write(text)
    bu.log(f'wrote {out}.json and {out}.md')


def _threads_words(r: dict) -> str:
  n = r.get('threads', 1)
  return 'one thread' if n == 1 else f'{n} threads (wall clock)'


def markdown(r: dict) -> str:
  w = r['whole_step']
  jg, tg = r['jax']['groups'], r['torch']['groups']
  names = list(GROUPS) + sorted((set(jg) | set(tg)) - set(GROUPS))
  lines = [
      f'# Supervised step by op group, ctt-jax vs PyTorch, {r["size"]}, '
      f'{_threads_words(r)}', '',
      f'{r["started"]} to {r["finished"]}; {r["machine"]["cpu"]}, pinned to CPU {r["cpu"]}'
      f'{"" if r.get("threads", 1) == 1 else " and on"}, '
      f'torch threads {r["machine"]["torch_threads"]}; jax {r["machine"]["jax"]}, torch '
      f'{r["machine"]["torch"]}; model.conv_impl={r["conv_impl"]}, head {r["head"]}; '
      f'XLA_FLAGS="{r["machine"]["xla_flags"]}".',
      f'Every thread at nice {r["protocol"]["priority"]}'
      f'{"" if r["protocol"]["priority_ok"] else " (NOT SET)"}; load average '
      f'{r["load_average"][0][0]:.2f} -> {r["load_average"][1][0]:.2f}; others used '
      f'{r["section"]["others_share"]:.1%} of the CPU over the run (timed steps '
      f'{r["whole_step_window"]["others_share"]:.1%}; jax profile '
      f'{r["jax"]["window"]["others_share"]:.1%}, torch profiles '
      f'{r["torch_plain"]["window"]["others_share"]:.1%} / '
      f'{r["torch_split"]["window"]["others_share"]:.1%}).', '',
      f'Whole step, {"process CPU time" if r["protocol"]["timing"] == "cpu" else "wall clock"}'
      f', median of alternating steps: ctt-jax '
      f'{w["jax"]["median_s"]:.3f} s ({lg.median_note(w["jax"])}), PyTorch '
      f'{w["torch"]["median_s"]:.3f} s ({lg.median_note(w["torch"])}): **{w["ratio"]:.3f}**.',
      '', 'glibc malloc: ' + ('one arena, no mmap, never trim (`--malloc_keep`)'
                              if r['malloc_keep'] else 'defaults') + '; one more step each: ' +
      '; '.join(f'{k} user {v["user_s"]:.3f} s, system {v["sys_s"]:.3f} s, '
                f'{v["minor_faults"]:,} minor page faults' for k, v in r['rusage_step'].items())
      + '.',
      '', f'Per group, s per step (profiled runs, {ARGS.profile_steps} steps each; see the '
      'module docstring of benchmarks/op_compare.py for the classification):', '',
      '| group | ctt-jax s | PyTorch s | ctt-jax - PyTorch s | ratio |', '|---|---|---|---|---|']
  def row(name, a, b, bold=False):
    ratio = f'{a / b:.2f}' if b > 1e-6 else '-'
    fmt = (lambda x: f'**{x}**') if bold else (lambda x: x)
    lines.append(f'| {fmt(name)} | {fmt(f"{a:.4f}")} | {fmt(f"{b:.4f}")} | '
                 f'{fmt(f"{a - b:+.4f}")} | {ratio} |')
  for name in names:
    a, b = jg.get(name, 0.0), tg.get(name, 0.0)
    if a or b:
      row(name, a, b)
  conv = [g for g in names if g.startswith('conv')]
  row('subtotal: convolutions', sum(jg.get(g, 0) for g in conv),
      sum(tg.get(g, 0) for g in conv), True)
  bnel = ('batch-norm (fwd+bwd)', 'elementwise/ReLU/add')
  row('subtotal: batch-norm + elementwise', sum(jg.get(g, 0) for g in bnel),
      sum(tg.get(g, 0) for g in bnel), True)
  row('sum of op times', r['jax']['sum_ops_s'], r['torch_plain']['sum_ops_s'], True)
  clock = 'CPU' if r['protocol']['timing'] == 'cpu' else 'wall'
  row(f'{clock} time of the profiled steps', r['jax']['profiled_cpu_s'],
      r['torch_plain']['profiled_cpu_s'], True)
  row('outside ops (runtime, profiler)', r['jax']['profiled_cpu_s'] - r['jax']['sum_ops_s'],
      r['torch_plain']['profiled_cpu_s'] - r['torch_plain']['sum_ops_s'])
  t = r['torch']
  lines += ['', f'PyTorch conv backward: {t["conv_backward_s"]:.4f} s/step in the plain pass, '
            f'split {t["input_share"]:.1%} input / {1 - t["input_share"]:.1%} kernel by the '
            f'split pass (input {t["split_pass_dx_s"]:.4f} s, kernel '
            f'{t["split_pass_dw_s"]:.4f} s, rest {t["split_pass_conv_backward_rest_s"]:.4f} s; '
            f'split pass total {r["torch_split"]["sum_ops_s"]:.3f} vs plain '
            f'{r["torch_plain"]["sum_ops_s"]:.3f} s).', '',
            'Most expensive ctt-jax instructions per group (ms/step, name, shape, op_name):', '']
  for g in names:
    for ms, name, shape, op in r['jax']['top'].get(g, []):
      lines.append(f'- {g}: {ms * 1e3:.1f} ms `{name}` {shape} `{op}`')
  lines += ['', 'Most expensive PyTorch events per group (self time, ms/step; conv backward '
            'before the split):', '']
  for g in names + ['conv backward']:
    for ms, name in r['torch_plain']['top'].get(g, []):
      lines.append(f'- {g}: {ms * 1e3:.1f} ms `{name}`')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
