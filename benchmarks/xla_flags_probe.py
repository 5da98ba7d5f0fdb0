"""XLA:CPU flag probe: convolution GFLOP/s of DeepLabV2-ResNet-101 shapes per XLA_FLAGS setting.

    nice -n -10 python benchmarks/xla_flags_probe.py                  # every setting
    nice -n -10 python benchmarks/xla_flags_probe.py --settings default,ynn_conv_off
    python benchmarks/xla_flags_probe.py --list                       # the settings

XLA reads XLA_FLAGS once, at start-up, so every setting runs in a fresh subprocess. In it,
for each shape (batch 2, float32, NHWC/HWIO as Flax), three jitted functions are timed
separately: the forward `lax.conv_general_dilated`, the input gradient and the kernel
gradient (each `jax.vjp` with respect to one operand, so XLA keeps only that
convolution). Inputs are preallocated; each timing is the median of `--reps` calls after
`--warmup` calls, each call ended by block_until_ready. PyTorch's conv2d (NCHW,
`--threads` threads) runs the same shapes in the same process, alternating with JAX per
case: forward under no_grad, input and kernel gradient as `torch.autograd.grad` of a
retained graph (the autograd backward node alone).

Every timing records the CPU share used by other processes while it ran, from /proc/stat
busy jiffies minus this process's utime+stime: others = (busy - own) / (wall * CPUs). A
timing with others > `--max_others` is repeated (up to `--tries` times; the least
disturbed attempt is kept). Run under `nice -n -10` so a background job at nice 0 takes
little from it.

Numerics: every output is compared with the first setting's ('default') output (max abs
difference, and that relative to max |reference|) and with PyTorch's.

Settings are `name=flags` pairs (see SETTINGS or --list); `--extra 'name=--flag=value'`
adds one. Results: a JSON file (`--json`) and Markdown tables (`--md`, and stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# (name, XLA_FLAGS, what it is). The first must be the default (empty) setting: it writes
# the reference outputs the others are compared with.
SETTINGS = [
    ('default', '', 'jaxlib 0.10.2 defaults: convolutions and dots go to YNNPACK '
     '(`__ynn_fusion`; the default ynn list is individual_dot, individual_convolution)'),
    ('ynn_conv_off', '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',
     'convolutions back to Eigen (XLA ConvolutionThunk); dots stay on YNNPACK'),
    ('ynn_off', '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,'
     '-individual_dot', 'no YNNPACK: convolutions and dots on Eigen'),
    ('onednn_custom_call', '--xla_cpu_experimental_onednn_custom_call=true',
     'oneDNN custom-call rewriter (OneDnnContractionRewriter): only runs if the build has '
     'ENABLE_ONEDNN_ASYNC'),
    ('onednn_dot', '--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot',
     'oneDNN graph fusions for dots (`__onednn_fusion`); convolutions unchanged'),
    ('onednn_dot_eltwise', '--xla_cpu_use_onednn=true '
     '--xla_cpu_experimental_onednn_fusion_type=dot,eltwise', 'as onednn_dot, plus eltwise'),
    ('onednn_all', '--xla_cpu_experimental_onednn_custom_call=true --xla_cpu_use_onednn=true '
     '--xla_cpu_experimental_onednn_fusion_type=dot', 'every oneDNN switch at once'),
    ('onednn_dot_eigen_conv', '--xla_cpu_use_onednn=true '
     '--xla_cpu_experimental_onednn_fusion_type=dot '
     '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',
     'dots on oneDNN, convolutions on Eigen'),
    ('xnn_dot', '--xla_cpu_experimental_xnn_fusion_type=dot', 'XNNPACK fusions for dots'),
    ('xnn_graph_greedy',
     '--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY',
     'XnnGraphFusion pass (elementwise/reduce subgraphs)'),
    ('xnnpack_off', '--xla_cpu_use_xnnpack=false', 'XNNPACK off (YNNPACK unaffected)'),
    ('vector_width_512', '--xla_cpu_prefer_vector_width=512',
     'LLVM prefer-vector-width for XLA-emitted kernels (default 256)'),
    ('max_isa_avx2', '--xla_cpu_max_isa=AVX2', 'XLA-emitted kernels limited to AVX2'),
    ('fast_math', '--xla_cpu_enable_fast_math=true', 'unsafe fast math in XLA-emitted kernels'),
    ('preset_fast_runtime', '--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME',
     'optimisation preset (DEFAULT, FAST_RUNTIME, FAST_COMPILE)'),
    ('sched_memory', '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
     'HLO scheduler (DEFAULT picks CONCURRENCY_OPTIMIZED when memory allows)'),
    ('sched_concurrency',
     '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED', 'HLO scheduler'),
    ('concurrency_sched_flag', '--xla_cpu_enable_concurrency_optimized_scheduler=true',
     'deprecated spelling of the above'),
    ('codegen_split_1', '--xla_cpu_parallel_codegen_split_count=1',
     'LLVM module split for parallel compilation (default 32): compile time only'),
    ('eigen_single_thread', '--xla_cpu_multi_thread_eigen=false',
     'control: single-threaded Eigen (only ops left on Eigen)'),
    ('matmul_tiling', '--xla_cpu_matmul_tiling_m_dim=8',
     'reserved proto field of the removed MLIR runtime: expected to be rejected'),
]

# (name, input NHWC, kernel HWIO, stride, padding, dilation, einsum)
SHAPES = [
    ('layer1 3x3 64->64 @64x128', (2, 64, 128, 64), (3, 3, 64, 64), 1, 1, 1, False),
    ('layer3 3x3 d2 256->256 @32x64', (2, 32, 64, 256), (3, 3, 256, 256), 1, 2, 2, False),
    ('layer4 3x3 d4 512->512 @32x64', (2, 32, 64, 512), (3, 3, 512, 512), 1, 4, 4, False),
    ('1x1 1024->256 @32x64', (2, 32, 64, 1024), (1, 1, 1024, 256), 1, 0, 1, False),
    ('stem 7x7/2 3->64 @256x512', (2, 256, 512, 3), (7, 7, 3, 64), 2, 3, 1, False),
    # ctt-jax writes 1x1 convolutions as einsums (dots): the same shape as a dot.
    ('1x1 1024->256 as einsum', (2, 32, 64, 1024), (1, 1, 1024, 256), 1, 0, 1, True),
]
PASSES = ('fwd', 'dx', 'dw')


# --- CPU accounting -----------------------------------------------------------------------
HZ = os.sysconf('SC_CLK_TCK')
NCPU = os.cpu_count() or 1


def cpu_sample() -> tuple[float, int, int]:
  """(wall, busy jiffies of the machine, utime+stime jiffies of this process)."""
  with open('/proc/stat') as f:
    v = [int(x) for x in f.readline().split()[1:]]
  busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
  with open('/proc/self/stat') as f:
    fields = f.read().rpartition(')')[2].split()
  own = int(fields[11]) + int(fields[12])
  return time.perf_counter(), busy, own


def others_share(start, end) -> float:
  wall = end[0] - start[0]
  return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (wall * HZ * NCPU))


def measure(fn, reps: int, warmup: int, tries: int, max_others: float) -> dict:
  for _ in range(warmup):
    fn()
  attempts = []
  for _ in range(tries):
    start = cpu_sample()
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    end = cpu_sample()
    attempts.append({'median': statistics.median(times), 'min': min(times),
                     'others': others_share(start, end),
                     'own': (end[2] - start[2]) / ((end[0] - start[0]) * HZ * NCPU)})
    if attempts[-1]['others'] <= max_others:
      break
  best = min(attempts, key=lambda a: a['others'])
  return dict(best, tries=len(attempts), others_all=[a['others'] for a in attempts])


def autogroup() -> str:
  try:
    with open('/proc/self/autogroup') as f:
      return f.read().strip()
  except OSError:
    return 'n/a'


# --- child: one setting -------------------------------------------------------------------
def run_child(args) -> None:
  # pylint: disable=g-import-not-at-top
  import numpy as np
  import torch
  import torch.nn.functional as F
  import jax
  import jax.numpy as jnp
  from jax import lax

  threads = args.threads or len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  dn = ('NHWC', 'HWIO', 'NHWC')
  result = {'flags': os.environ.get('XLA_FLAGS', ''), 'niceness': os.getpriority(
      os.PRIO_PROCESS, 0), 'autogroup': autogroup(), 'jax': jax.__version__, 'torch': torch.__version__,
            'torch_threads': torch.get_num_threads(), 'cases': []}
  os.makedirs(args.ref_dir, exist_ok=True)
  started = time.perf_counter()
  for si, (name, xs, ws, stride, pad, dil, einsum) in enumerate(SHAPES):
    if args.shapes and str(si) not in args.shapes.split(','):
      continue
    if args.scale != 1:  # input 256x512 / scale: every feature map scale x smaller
      xs = (xs[0], xs[1] // args.scale, xs[2] // args.scale, xs[3])
      name = f'{name} /{args.scale} = {xs[1]}x{xs[2]}'
    rng = np.random.default_rng(si)
    kh, kw, cin, cout = ws
    x_np = rng.standard_normal(xs, np.float32)
    w_np = (rng.standard_normal(ws, np.float32) / np.sqrt(kh * kw * cin)).astype(np.float32)
    ho = (xs[1] + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    wo = (xs[2] + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    g_np = rng.standard_normal((xs[0], ho, wo, cout), np.float32)
    flops = 2.0 * xs[0] * ho * wo * cout * kh * kw * cin

    if einsum:
      w_np2 = w_np.reshape(cin, cout)
      conv = lambda x, w: jnp.einsum('nhwc,co->nhwo', x, w)
    else:
      w_np2 = w_np
      conv = lambda x, w, s=stride, p=pad, d=dil: lax.conv_general_dilated(
          x, w, (s, s), [(p, p), (p, p)], rhs_dilation=(d, d), dimension_numbers=dn)
    x, w, g = (jax.device_put(a) for a in (x_np, w_np2, g_np))
    jax_fns = {
        'fwd': (jax.jit(lambda x, w: conv(x, w)), (x, w)),
        'dx': (jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]), (x, w, g)),
        'dw': (jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]), (x, w, g)),
    }
    tx = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
    tw = torch.from_numpy(w_np.transpose(3, 2, 0, 1).copy())
    tg = torch.from_numpy(g_np.transpose(0, 3, 1, 2).copy())
    tconv = lambda x, w: F.conv2d(x, w, None, stride, pad, dil)
    tx_req, tw_req = tx.clone().requires_grad_(True), tw.clone().requires_grad_(True)
    with torch.enable_grad():
      y_dx = tconv(tx_req, tw)   # graph for the input gradient only
      y_dw = tconv(tx, tw_req)   # graph for the kernel gradient only

    def torch_fwd():
      with torch.no_grad():
        return tconv(tx, tw)
    torch_fns = {
        'fwd': torch_fwd,
        'dx': lambda: torch.autograd.grad(y_dx, tx_req, tg, retain_graph=True)[0],
        'dw': lambda: torch.autograd.grad(y_dw, tw_req, tg, retain_graph=True)[0],
    }
    for p in PASSES:
      fn, fargs = jax_fns[p]
      t0 = time.perf_counter()
      compiled = fn.lower(*fargs).compile()
      compile_s = time.perf_counter() - t0
      call = lambda: jax.block_until_ready(compiled(*fargs))
      case = {'shape': name, 'pass': p, 'flops': flops, 'compile_s': compile_s}
      case['jax'] = measure(call, args.reps, args.warmup, args.tries, args.max_others)
      time.sleep(0.05)
      case['torch'] = measure(torch_fns[p], args.reps, args.warmup, args.tries,
                              args.max_others)
      time.sleep(0.05)
      out = np.asarray(call())
      ref_path = os.path.join(args.ref_dir, f'{si}_{p}_s{args.scale}.npy')
      if args.write_ref:
        np.save(ref_path, out)
      if os.path.exists(ref_path):
        ref = np.load(ref_path)
        diff = float(np.max(np.abs(out - ref)))
        case['diff_ref_abs'] = diff
        case['diff_ref_rel'] = diff / float(np.max(np.abs(ref)))
      t = torch_fns[p]().detach().numpy()
      t = t.transpose(0, 2, 3, 1) if p != 'dw' else t.transpose(2, 3, 1, 0).reshape(out.shape)
      case['diff_torch_rel'] = float(np.max(np.abs(out - t)) / np.max(np.abs(t)))
      result['cases'].append(case)
      print(f'  {name:<32} {p:<3} jax {flops / case["jax"]["median"] / 1e9:6.1f} '
            f'torch {flops / case["torch"]["median"] / 1e9:6.1f} GFLOP/s, others '
            f'{case["jax"]["others"]:.0%}/{case["torch"]["others"]:.0%} (own '
            f'{case["jax"]["own"]:.0%}/{case["torch"]["own"]:.0%}), compile '
            f'{compile_s:.1f}s', file=sys.stderr, flush=True)
  result['wall_s'] = time.perf_counter() - started
  with open(args.child_out, 'w') as f:
    json.dump(result, f)


# --- parent -------------------------------------------------------------------------------
def gflops(case, who):
  return case['flops'] / case[who]['median'] / 1e9


def markdown(results: list[dict], max_others: float) -> str:
  lines = []
  base = next((r for r in results if r.get('cases') and r['name'] == 'default'), None)
  base_t = ({(c['shape'], c['pass']): c for c in base['cases']} if base else {})
  lines.append('### Summary (time of the five convolution shapes summed per pass, vs the '
               'first default run; "/torch" divides out the load via the same process\'s '
               'PyTorch time)\n')
  lines.append('| setting | fwd | dx | dw | einsum fwd/dx/dw | fwd /torch | dx /torch | '
               'dw /torch | max others | max rel diff to default | wall |')
  lines.append('|---|---|---|---|---|---|---|---|---|---|---|')
  for r in results:
    if not r.get('cases'):
      lines.append(f'| {r["name"]} | failed: {r.get("error", "?")[:120]} | | | | | | | | | |')
      continue
    cells = []
    norm_cells = []
    for p in PASSES:
      cs = [c for c in r['cases'] if c['pass'] == p and 'einsum' not in c['shape']]
      bs = [base_t[(c['shape'], p)] for c in cs if (c['shape'], p) in base_t]
      if len(bs) != len(cs) or not cs:
        cells.append('-')
        norm_cells.append('-')
        continue
      tj = sum(c['jax']['median'] for c in cs)
      tb = sum(c['jax']['median'] for c in bs)
      cells.append(f'{tb / tj:.3f}x')
      rel = sum(c['jax']['median'] / c['torch']['median'] for c in cs)
      relb = sum(c['jax']['median'] / c['torch']['median'] for c in bs)
      norm_cells.append(f'{relb / rel:.3f}x')
    es = []
    for p in PASSES:
      c = next((c for c in r['cases'] if c['pass'] == p and 'einsum' in c['shape']), None)
      b = base_t.get((c['shape'], p)) if c else None
      es.append(f'{b["jax"]["median"] / c["jax"]["median"]:.2f}' if c and b else '-')
    others = max(max(c['jax']['others'], c['torch']['others']) for c in r['cases'])
    diffs = [c.get('diff_ref_rel', float('nan')) for c in r['cases']]
    lines.append(f'| {r["name"]} | {" | ".join(cells)} | {"/".join(es)} | '
                 f'{" | ".join(norm_cells)} | {others:.1%} | {max(diffs):.1e} | '
                 f'{r["wall_s"]:.0f} s |')
  lines.append('\n(speed-up factors: > 1 is faster than default.)\n')
  for r in results:
    lines.append(f'#### {r["name"]}: `XLA_FLAGS={r["flags"]}`\n')
    lines.append(r.get('what', ''))
    if not r.get('cases'):
      lines.append(f'\nFailed (rc {r.get("rc")}): `{r.get("error", "")[:400]}`\n')
      continue
    lines.append(f'\nniceness {r["niceness"]}, {r.get("autogroup", "")}, jax {r["jax"]}, torch {r["torch"]} '
                 f'({r["torch_threads"]} threads), {r["wall_s"]:.0f} s\n')
    lines.append('| shape | pass | JAX GFLOP/s | torch GFLOP/s | JAX/torch speed | JAX ms | '
                 'torch ms | others (JAX/torch) | own (JAX/torch) | tries | compile s | '
                 'rel diff default | rel diff torch |')
    lines.append('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for c in r['cases']:
      flag = '' if max(c['jax']['others'], c['torch']['others']) <= max_others else ' (!)'
      lines.append(
          f'| {c["shape"]} | {c["pass"]} | {gflops(c, "jax"):.1f} | {gflops(c, "torch"):.1f} '
          f'| {c["torch"]["median"] / c["jax"]["median"]:.2f} | '
          f'{c["jax"]["median"] * 1e3:.1f} | {c["torch"]["median"] * 1e3:.1f} | '
          f'{c["jax"]["others"]:.1%} / {c["torch"]["others"]:.1%}{flag} | '
          f'{c["jax"]["own"]:.0%} / {c["torch"]["own"]:.0%} | '
          f'{c["jax"]["tries"]}/{c["torch"]["tries"]} | {c["compile_s"]:.2f} | '
          f'{c.get("diff_ref_rel", float("nan")):.1e} | {c["diff_torch_rel"]:.1e} |')
    lines.append('')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--settings', default='',
                      help='comma-separated names (default: all); default is always first')
  parser.add_argument('--extra', action='append', default=[],
                      help="an extra setting 'name=--xla_flag=value --other=...'")
  parser.add_argument('--repeat_default', action='store_true',
                      help='run the default setting again at the end (run-to-run noise)')
  parser.add_argument('--shapes', default='', help='indices into SHAPES (default: all)')
  parser.add_argument('--scale', type=int, default=1,
                      help='divide every spatial size by this (4: the 64x128 input)')
  parser.add_argument('--reps', type=int, default=7)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--tries', type=int, default=3)
  parser.add_argument('--max_others', type=float, default=0.10)
  parser.add_argument('--threads', type=int, default=0, help='torch threads (0: all CPUs)')
  parser.add_argument('--ref_dir', default=os.path.join(tempfile.gettempdir(),
                                                        'xla_flags_probe_ref'))
  parser.add_argument('--json', default='')
  parser.add_argument('--md', default='')
  parser.add_argument('--autogroup_nice', type=int, default=None,
                      help='write this to /proc/self/autogroup first (root; with '
                      'kernel.sched_autogroup_enabled=1, plain nice only ranks processes '
                      'within one session, so a job in another session is not held back)')
  parser.add_argument('--list', action='store_true')
  parser.add_argument('--child_out', default='', help=argparse.SUPPRESS)
  parser.add_argument('--write_ref', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child_out:
    run_child(args)
    return
  settings = list(SETTINGS)
  for e in args.extra:
    name, _, flags = e.partition('=')
    settings.append((name, flags, 'extra'))
  if args.list:
    for name, flags, what in settings:
      print(f'{name:<24} {flags}\n{"":<24} {what}')
    return
  if args.settings:
    wanted = args.settings.split(',')
    unknown = set(wanted) - {s[0] for s in settings}
    if unknown:
      parser.error(f'unknown settings {sorted(unknown)}')
    settings = [s for s in settings if s[0] == 'default' or s[0] in wanted]
  if args.repeat_default:
    settings.append(('default', '', 'default again (run-to-run noise)'))
  if args.autogroup_nice is not None:
    with open('/proc/self/autogroup', 'w') as f:
      f.write(str(args.autogroup_nice))
  print(f'niceness {os.getpriority(os.PRIO_PROCESS, 0)}, {autogroup()}', file=sys.stderr)
  if os.getpriority(os.PRIO_PROCESS, 0) > -10:
    print('note: not running at nice -10 or lower; others\' CPU use will weigh more',
          file=sys.stderr)
  print(f'{time.strftime("%Y-%m-%d %H:%M")}, {len(settings)} settings', file=sys.stderr)
  results = []
  for i, (name, flags, what) in enumerate(settings):
    print(f'[{time.strftime("%H:%M:%S")}] {name}: XLA_FLAGS={flags!r}', file=sys.stderr,
          flush=True)
    with tempfile.NamedTemporaryFile(suffix='.json', delete=False) as f:
      out = f.name
    cmd = [sys.executable, os.path.abspath(__file__), '--child_out', out,
           '--reps', str(args.reps), '--warmup', str(args.warmup), '--tries', str(args.tries),
           '--max_others', str(args.max_others), '--threads', str(args.threads),
           '--ref_dir', args.ref_dir, '--shapes', args.shapes, '--scale', str(args.scale)]
    if i == 0:
      cmd.append('--write_ref')
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, check=False)
    sys.stderr.write('\n'.join(l for l in proc.stderr.splitlines() if l.startswith('  ')))
    sys.stderr.write('\n')
    entry = {'name': name, 'flags': flags, 'what': what, 'rc': proc.returncode}
    if proc.returncode == 0 and os.path.getsize(out):
      with open(out) as f:
        entry.update(json.load(f))
    else:
      tail = [l for l in proc.stderr.splitlines() if l.strip()][-3:]
      entry['error'] = ' / '.join(tail)
      print(f'  failed: {entry["error"][:300]}', file=sys.stderr)
    os.unlink(out)
    results.append(entry)
  text = (f'XLA flag probe, {time.strftime("%Y-%m-%d %H:%M")}, {NCPU} CPUs, spatial scale '
          f'1/{args.scale}, reps '
          f'{args.reps}, max others {args.max_others:.0%}\n\n' + markdown(results,
                                                                         args.max_others))
  print(text)
  if args.md:
    with open(args.md, 'w') as f:
      f.write(text)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
