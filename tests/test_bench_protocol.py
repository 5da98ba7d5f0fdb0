"""The load protocol of the benchmarks (benchmarks/load_guard.py, bench_utils.alternate,
the LOADED verdicts) and the same-network check of benchmarks/torch_step.py.

Light: synthetic /proc/stat texts, fake runners that do nothing, and parameter counts of
a ResNet-18 at width 1/4 from shapes (no compile).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from benchmarks import load_guard as lg

# Two CPUs; cpu1 has 3 ticks of steal and 50 of iowait (iowait is idle, steal is busy).
STAT_0 = """cpu  300 0 100 1000 50 0 0 3 0 0
cpu0 100 0 50 500 0 0 0 0 0 0
cpu1 200 0 50 500 50 0 0 3 0 0
intr 12345 0 0
ctxt 999
"""
# 10 s later: cpu0 +800 user +100 system, cpu1 +600 user +80 nice +20 irq +10 steal.
STAT_1 = """cpu  1700 80 200 1300 50 20 0 13 0 0
cpu0 900 0 150 600 0 0 0 0 0 0
cpu1 800 80 50 700 50 20 0 13 0 0
intr 22345 0 0
"""


def test_busy_seconds_sums_busy_fields_of_the_given_cpus():
  assert lg.busy_seconds(STAT_0, [0], hz=100) == pytest.approx(1.5)
  assert lg.busy_seconds(STAT_0, [1], hz=100) == pytest.approx(2.53)  # steal in, iowait out
  assert lg.busy_seconds(STAT_0, [0, 1], hz=100) == pytest.approx(4.03)
  assert lg.busy_seconds(STAT_1, [0, 1], hz=100) == pytest.approx(20.13)
  with pytest.raises(ValueError, match='cpu2'):
    lg.busy_seconds(STAT_0, [0, 2], hz=100)


def test_others_share_is_busy_minus_own_over_wall_times_cpus():
  busy0, busy1 = (lg.busy_seconds(t, [0, 1], hz=100) for t in (STAT_0, STAT_1))
  start = lg.Sample(wall=100.0, busy=busy0, own=40.0)
  end = lg.Sample(wall=110.0, busy=busy1, own=54.0)  # busy +16.1 s, own +14 s
  s = lg.shares(start, end, n_cpus=2, threshold=0.05, hz=100)
  assert s['span_s'] == pytest.approx(10.0)
  assert s['others_share'] == pytest.approx(2.1 / 20)
  assert s['own_share'] == pytest.approx(14 / 20)
  assert s['resolution'] == pytest.approx(3 / 100 / 20)
  assert s['disturbed']  # 10.5% - 0.15% > 5%
  quiet = lg.shares(start, lg.Sample(110.0, busy0 + 14.5, 54.0), 2, 0.05, hz=100)
  assert quiet['others_share'] == pytest.approx(0.025) and not quiet['disturbed']


def test_short_intervals_cannot_be_judged():
  """A 20 ms step on 2 CPUs: the 10 ms counters cannot tell 50% from 0%."""
  s = lg.shares(lg.Sample(0.0, 0.0, 0.0), lg.Sample(0.02, 0.03, 0.01), 2, 0.05, hz=100)
  assert s['others_share'] == pytest.approx(0.5)
  assert s['resolution'] > 0.5 and not s['disturbed']


def test_live_samples_are_consistent():
  guard = lg.LoadGuard(threshold=0.05)
  start = guard.sample()
  x = 0
  while lg.own_cpu_seconds() - start.own < 0.05:  # keep one CPU busy for 50 ms
    x += 1
  s = guard.shares(start, guard.sample())
  assert s['own_share'] > 0  # how much depends on the other processes' load
  assert -s['resolution'] - 0.05 <= s['others_share'] <= 1.0


def test_median_over_undisturbed_steps_when_at_least_half():
  times = [1.0, 1.1, 9.0, 1.2, 8.0, 1.05, 1.15]
  disturbed = [False, False, True, False, True, False, False]
  m = lg.robust_median(times, disturbed)
  assert m == {'median_s': 1.1, 'median_over': 'undisturbed', 'undisturbed': 5, 'steps': 7}
  assert lg.median_note(m) == '5 undisturbed of 7 steps'
  assert lg.robust_median(times, [False] * 7)['median_over'] == 'all'
  half = lg.robust_median([1, 2, 9, 9], [False, False, True, True])
  assert half['median_over'] == 'undisturbed' and half['median_s'] == 1.5
  most = lg.robust_median(times, [True, True, True, True, False, False, False])
  assert most['median_over'] == 'all, LOADED' and most['median_s'] == 1.15
  assert lg.median_note(most) == '7 steps, only 3 undisturbed (LOADED)'


def test_parse_nice_counts_fields_after_the_command_name():
  fields = ' '.join(str(v) for v in range(3, 53))  # fields 3.. (state, ppid, ...)
  fields = fields.replace(' 19 ', ' -10 ', 1)
  assert lg.parse_nice(f'4242 (evil) name) 19 () {fields}') == -10


def test_set_priority_reaches_every_thread_and_new_threads_inherit():
  """In a child process (nice only goes up without root): existing threads are set one by
  one, and a thread started afterwards inherits the nice of its creator."""
  code = textwrap.dedent('''
      import os, threading
      from benchmarks import load_guard as lg
      stop = threading.Event()
      for _ in range(3):
        threading.Thread(target=stop.wait).start()
      current = os.getpriority(os.PRIO_PROCESS, 0)
      target = current + 1 if current < 19 else 19
      record = lg.set_priority(target)
      changed = 4 if target != current else 0
      assert record['ok'] and record['threads'] == 4 and record['reapplied'] == changed, record
      threading.Thread(target=stop.wait).start()
      assert set(lg.thread_nices().values()) == {target}, lg.thread_nices()
      assert len(lg.thread_nices()) == 5
      stop.set()
      print('ok')
  ''')
  # Its own session: set_priority also sets the session's autogroup nice, which must not
  # reach the test run.
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=False, cwd=_root(), start_new_session=True)
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr


def test_cpu_timing_needs_one_thread():
  args = type('Args', (), {'timing': 'cpu'})()
  with pytest.raises(SystemExit, match='--timing=cpu needs --threads 1'):
    lg.check_timing_args(args, 2)
  lg.check_timing_args(args, 1)


def _root():
  import os  # pylint: disable=g-import-not-at-top
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- bench_utils: alternation, verdicts, table ---------------------------------------------
class FakeRunner:
  rss_growth = None

  def __init__(self):
    self.calls = 0

  def run(self):
    self.calls += 1


def test_alternate_records_every_step_and_the_priority():
  from benchmarks import bench_utils as bu  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  guard = lg.LoadGuard(0.05, priority=os.getpriority(os.PRIO_PROCESS, 0))
  runners = {'a': FakeRunner(), 'b': FakeRunner()}
  t = bu.alternate(runners, 5, guard, timing='cpu')
  assert runners['a'].calls == runners['b'].calls == 6  # warm-up + 5
  assert t['timing'] == 'cpu' and set(t['runners']) == {'a', 'b'}
  r = t['runners']['a']
  assert len(r['times']) == len(r['samples']) == 5
  assert r['times'] == [s['cpu_s'] for s in r['samples']]
  assert {'wall_s', 'others_share', 'resolution', 'disturbed'} <= set(r['samples'][0])
  assert [p['where'].split(' of ')[0] for p in guard.priority_log] == [
      'after the warm-up', 'after the timed steps']
  assert guard.priority_ok()


def test_round_order_alternates_what_follows_the_first_runner():
  from benchmarks import bench_utils as bu  # pylint: disable=g-import-not-at-top
  names = ['jax', 'torch', 'torch_plain']
  rounds = [bu.round_order(names, i) for i in range(4)]
  assert rounds == [names, ['jax', 'torch_plain', 'torch']] * 2
  assert [r[1] for r in rounds] == ['torch', 'torch_plain'] * 2
  assert bu.round_order(['jax', 'torch'], 1) == ['jax', 'torch']


def _steps(times, disturbed=()):
  return [{'wall_s': t, 'disturbed': i in disturbed} for i, t in enumerate(times)]


def test_paired_ratio_cancels_the_place_a_step_runs_in():
  from benchmarks import bench_utils as bu  # pylint: disable=g-import-not-at-top
  # Both networks take 10 s, plus 2 s whenever they run right after the first runner:
  # 'a' in even rounds, 'b' in odd ones. Seven rounds put 'a' there four times, so the
  # medians' ratio reads 12/10; the pairs of rounds read 1.0. The 7th round is unused.
  a = _steps([12, 10, 12, 10, 12, 10, 12])
  b = _steps([10, 12, 10, 12, 10, 12, 10])
  times = lambda steps: [s['wall_s'] for s in steps]
  import statistics  # pylint: disable=g-import-not-at-top
  assert statistics.median(times(a)) / statistics.median(times(b)) == pytest.approx(1.2)
  p = bu.paired_ratio(a, b)
  assert p['ratio'] == pytest.approx(1.0) and p['pairs'] == p['of_pairs'] == 3
  assert not p['loaded']
  # A disturbed step drops its pair (pair 0 here); a pair with a slower 'a' moves the median.
  a = _steps([30, 10, 13, 11, 12, 10, 12, 11], disturbed={0})
  b = _steps([10, 12, 10, 12, 10, 12, 10, 12])
  p = bu.paired_ratio(a, b)
  assert p['pairs'] == 3 and p['of_pairs'] == 4
  assert p['ratio'] == pytest.approx(23 / 22) and p['high'] == pytest.approx(24 / 22)
  assert p['low'] == pytest.approx(22 / 22) and len(p['ratios']) == 4
  # Most pairs disturbed: all pairs, flagged.
  p = bu.paired_ratio(_steps([10] * 4, disturbed={0, 2}), _steps([10] * 4))
  assert p['loaded'] and p['pairs'] == 2
  with pytest.raises(ValueError, match='at least two rounds'):
    bu.paired_ratio(_steps([10]), _steps([10]))


def _results(others_share: float) -> dict:
  """A minimal step_benchmark result: one supervised row, section 'sup' and 'matmul'."""
  median = {'median_over': 'all', 'undisturbed': 7, 'steps': 7}
  section = {'start': '01:00:00', 'end': '01:01:00', 'load_start': [1.0] * 3,
             'load_end': [1.5] * 3, 'others_share': others_share, 'own_share': 0.95,
             'resolution': 0.001, 'loaded': others_share > 0.05, 'priority': -10,
             'priority_ok': True}
  return {
      'started': 's', 'finished': 'f', 'quick': True, 'conv_impl': 'auto',
      'settings': {'head': 'aspp_se'}, 'load_average_start': [1.0] * 3,
      'load_average_end': [1.5] * 3,
      'machine': {'cpu': 'cpu', 'cpus_used': 2, 'cpu_count': 2, 'torch_threads': 2,
                  'jax': 'j', 'torch': 't', 'python': 'p', 'xla_flags': ''},
      'protocol': {'cpus': [0, 1], 'threshold': 0.05, 'priority': -10,
                   'priority_ok': True, 'priority_log': [], 'timing': 'wall'},
      'sections': {'matmul': dict(section, others_share=0.0, loaded=False),
                   'sup': section},
      'matmul': {'n': 64, 'jnp': 100.0, 'numpy': 100.0, 'torch': 100.0},
      'supervised': [{'size': [32, 64], 'jax_s': 1.2, 'torch_s': 1.0, 'ratio': 1.2,
                      'flops': 1e9, 'jax_compile_s': 3.0, 'jax_median': median,
                      'torch_median': median, 'window': {'others_share': 0.01},
                      'jax_memory': {'total': 2**20, 'temp_size': 2**20}}],
  }


def test_loaded_sections_turn_verdicts_into_loaded():
  from benchmarks import bench_utils as bu  # pylint: disable=g-import-not-at-top
  quiet = _results(0.01)
  rows = bu.target_rows(quiet)
  assert [r['loaded'] for r in rows] == [False, False]
  assert rows[0]['verdict'].startswith('missed') and rows[1]['verdict'].startswith('missed')
  loaded = _results(0.23)
  rows = bu.target_rows(loaded)
  assert all(r['loaded'] for r in rows)
  assert rows[0]['verdict'].startswith('LOADED: others used 23% of the CPUs; re-run')
  loaded['rows'] = rows
  table = bu.markdown(loaded)
  assert 'sup: 01:00:00-01:01:00, others 23.0% of the CPUs' in table
  assert '**LOADED: re-run**' in table and 'every thread at nice -10' in table
  # Most steps of one side disturbed: LOADED even if the section as a whole was not.
  quiet['supervised'][0]['torch_median'] = {'median_over': 'all, LOADED',
                                            'undisturbed': 2, 'steps': 7}
  assert bu.target_rows(quiet)[0]['verdict'].startswith(
      'LOADED: only 2 of 7 steps undisturbed')


def test_reference_over_plain_row_shows_the_paired_ratio_and_the_medians():
  from benchmarks import bench_utils as bu  # pylint: disable=g-import-not-at-top
  results = _results(0.01)
  paired = {'ratio': 1.01, 'low': 0.97, 'high': 1.06, 'pairs': 4, 'of_pairs': 4,
            'loaded': False, 'ratios': [0.97, 1.0, 1.02, 1.06]}
  results['supervised'][0].update(
      torch_plain_s=0.95, torch_plain_median=results['supervised'][0]['torch_median'],
      reference_over_plain=1.01, reference_over_plain_paired=paired,
      reference_over_plain_medians=1.0 / 0.95)
  row = bu.target_rows(results)[1]
  assert row['row'] == 'PyTorch step 32x64: benchmark reference / plain step'
  assert row['value'] == 1.01 and row['verdict'] == 'met'
  assert row['context'] == ('per pair of rounds 1.010 (median of 4 of 4 pairs, range '
                            '0.970-1.060); medians: reference 1.000s, plain 0.950s (1.053)')


# --- same network on both sides ------------------------------------------------------------
@pytest.mark.parametrize('head', ['aspp_se', 'bottleneck'])
def test_both_sides_train_the_same_parameters(head):
  pytest.importorskip('torch')
  from benchmarks import bench_utils as bu  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
  config = bu.make_config({'backbone': 'resnet18', 'width_multiplier': 0.25, 'head': head},
                          'supervised', 1, 'auto')
  assert config.model.head == head
  net = torch_step.reference_net(config)
  torch_step.freeze_batch_norm_(net)
  assert torch_step.assert_same_network(config, net) == (
      torch_step.trainable_parameter_count(net))
  assert bu.trainable_parameter_count(config) < sum(p.numel() for p in net.parameters())


def test_default_head_is_the_cityscapes_configs_and_a_mismatch_fails():
  pytest.importorskip('torch')
  from benchmarks import bench_utils as bu  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
  s = {'backbone': 'resnet18', 'width_multiplier': 0.25}
  assert bu.default_head() == 'aspp_se'
  assert bu.make_config(s, 'supervised', 1, 'auto').model.head == 'aspp_se'
  other = bu.make_config(dict(s, head='bottleneck'), 'supervised', 1, 'auto')
  net = torch_step.reference_net(other)
  torch_step.freeze_batch_norm_(net)
  with pytest.raises(AssertionError, match='would benchmark different networks'):
    torch_step.assert_same_network(bu.make_config(s, 'supervised', 1, 'auto'), net)


# --- both PyTorch steps against ctt-jax's supervised step ----------------------------------
def test_first_step_loss_and_update_match_ctt_jax(monkeypatch):
  """A small network of the benchmark's kind (caffe ResNet-50 at width 1/8 with the
  authors' head, frozen BN, 40x56 crops): the benchmark's PyTorch step, the plain step and
  ctt-jax's supervised step (`make_train_step`, conv_impl 'auto', as benchmarked) start
  from the same weights and batch and give the same first loss and the same first update
  of every trained parameter. Dropout is off on all three (its masks cannot be shared)."""
  torch = pytest.importorskip('torch')
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import bench_utils as bu  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_plain_step, torch_step  # pylint: disable=g-import-not-at-top
  from ctt_jax import models, optim, train_state, train_step  # pylint: disable=g-import-not-at-top
  from ctt_jax.models import ctt_head, weights  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(ctt_head, 'DROPOUT_RATE', 0.0)
  config = bu.make_config({'backbone': 'resnet50', 'width_multiplier': 0.125,
                           'head': 'aspp_se'}, 'supervised', 1, 'auto',
                          supervised_ema=False)
  config.lr = 1.0  # updates far above the float32 rounding of weight + update
  size = (40, 56)
  reference = torch_step.TorchStep(config, size)
  reference.net.head.head[0].p = 0.0
  plain = torch_plain_step.PlainStep(config, size, reference=reference.net)
  assert plain.trainable_params == reference.trainable_params == (
      bu.trainable_parameter_count(config))
  before = {k: v.detach().clone() for k, v in plain.net.state_dict().items()}

  # ctt-jax from the same weights (the authors' names, as a checkpoint would have them).
  model = models.get_model(config.model, config.num_classes)
  variables = weights.from_torch_state_dict(
      {k: v.numpy() for k, v in before.items()}, config.model, config.num_classes,
      skip_head=False)
  stacked = jax.tree.map(lambda x: np.stack([x]), variables)
  state = train_state.create_train_state(
      config, stacked, train_state.feature_dim(model, size))
  step = jax.jit(train_step.make_train_step(config, model, num_labeled=bu.NUM_LABELED))
  new_state, metrics = step(state, jax.device_put(bu.make_batch(size, config.num_classes)),
                            jax.random.key(0))

  losses = {'reference': reference.run(), 'plain': plain.run(),
            'ctt-jax': float(metrics['loss'])}
  assert losses['reference'] == pytest.approx(losses['plain'], rel=1e-6), losses
  assert losses['ctt-jax'] == pytest.approx(losses['plain'], rel=1e-5), losses

  after = {'reference': torch_plain_step.reference_state_dict(reference.net),
           'plain': plain.net.state_dict()}
  old = flax.traverse_util.flatten_dict(state.params)
  new = flax.traverse_util.flatten_dict(new_state.params)
  groups = flax.traverse_util.flatten_dict(optim.param_groups(variables['params'], True))
  checked = 0
  for path, group in groups.items():
    name = weights.torch_name('params', path, config.model.layout)
    want = np.asarray(new[path][0]) - np.asarray(old[path][0])
    for side, state_dict in after.items():
      got = (state_dict[name] - before[name]).numpy()
      if got.ndim == 4:
        got = got.transpose(2, 3, 1, 0)
      elif got.ndim == 2:
        got = got.T
      if group == 'frozen':
        assert not np.any(got) and not np.any(want), (side, name)
        continue
      scale = np.max(np.abs(want))
      assert scale > 0, name
      np.testing.assert_allclose(got, want, atol=2e-3 * scale, rtol=0,
                                 err_msg=f'{side}: {name}')
    checked += group != 'frozen'
  assert checked == len([g for g in groups.values() if g != 'frozen']) == 82  # R50 + head
