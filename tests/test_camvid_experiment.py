"""experiments/camvid/run_grid.py: the grid's plan and order, skip/resume detection, the
reports (grid.json, paired differences, curves, pseudo-label table). No training: the
runs are a fake main.py that writes eval JSONs."""
import importlib.util
import json
import math
import os
import signal
import struct
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def script():
  spec = importlib.util.spec_from_file_location(
      'run_grid', os.path.join(ROOT, 'experiments', 'camvid', 'run_grid.py'))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  yield module
  del sys.modules[spec.name]


def write_eval(run_dir, step, miou_by_network, best=None):
  os.makedirs(os.path.join(run_dir, 'eval'), exist_ok=True)
  results = {name: {'miou': m, 'per_class_iou': {'sky': m + 0.1, 'pole': None}}
             for name, m in miou_by_network.items()}
  results['best'] = best or next(iter(miou_by_network))
  with open(os.path.join(run_dir, 'eval', f'step_{step:08d}.json'), 'w') as f:
    json.dump(results, f)


def record(method, partition_seed, seed, miou, finished=True, curve=None):
  return {'method': method, 'partition_seed': partition_seed, 'seed': seed,
          'steps': 100 if finished else 50, 'total_steps': 100, 'miou': miou,
          'finished': finished, 'status': 'finished' if finished else 'partial',
          'wall_minutes': 1.5, 'curve': curve or [[50, miou / 2], [100, miou]]}


# ---------------------------------------------------------------------------------------
# Planning


def test_default_plan_order(script):
  runs = script.plan_grid(script.METHODS, [0, 1, 2], [0, 1, 2])
  assert [r.name for r in runs] == [
      'p0_s0/supervised', 'p0_s0/ctt', 'p1_s0/supervised', 'p1_s0/ctt',
      'p2_s0/supervised', 'p2_s0/ctt',
      'p0_s0/ct_only', 'p1_s0/ct_only', 'p2_s0/ct_only',
      'p0_s1/supervised', 'p0_s1/ctt',
      'p0_s0/mean_teacher', 'p1_s0/mean_teacher', 'p2_s0/mean_teacher',
      'p0_s2/supervised', 'p0_s2/ctt']
  assert runs[0].workdir('/g') == '/g/p0_s0/supervised'


def test_plan_selections(script):
  names = lambda runs: [r.name for r in runs]  # pylint: disable=unnecessary-lambda-assignment
  assert names(script.plan_grid(['supervised', 'ctt'], [0], [0])) == [
      'p0_s0/supervised', 'p0_s0/ctt']
  # Only the seed study: the other seed runs on its subset, for its methods.
  assert names(script.plan_grid(script.METHODS, [0, 1, 2], [1])) == [
      'p0_s1/supervised', 'p0_s1/ctt']
  assert names(script.plan_grid(['ctt'], [1, 2], [0, 1])) == ['p1_s0/ctt', 'p2_s0/ctt']
  assert names(script.plan_grid(['mean_teacher'], [0], [0, 1],
                                seed_study_methods=['mean_teacher'])) == [
      'p0_s0/mean_teacher', 'p0_s1/mean_teacher']
  with pytest.raises(ValueError, match='Unknown method'):
    script.plan_grid(['fixmatch'], [0], [0])


def test_method_table_configs(script):
  """Every method's overrides are valid keys of configs/camvid.py and mean the method."""
  def config(method, partition_seed=0, seed=0):
    arg = script.Run(method, partition_seed, seed).config_arg('1_8', 'total_steps=4')
    return script._load_config(arg)  # pylint: disable=protected-access
  mt = config('mean_teacher', 2, 1)
  assert (mt.method, mt.num_pairs, mt.use_hc, mt.use_lc) == ('mean_teacher', 1, False, False)
  assert (mt.data.partition_seed, mt.seed, mt.total_steps, mt.data.split) == (2, 1, 4, '1_8')
  ct = config('ct_only')
  assert (ct.method, ct.use_ct, ct.use_hc, ct.use_lc) == ('ctt', True, False, False)
  assert (config('supervised').method, config('supervised').num_pairs) == ('supervised', 1)
  full = config('ctt')
  assert (full.method, full.use_hc, full.use_lc) == ('ctt', True, True)
  assert script.total_steps_of(script.Run('ctt', 0, 0).config_arg('1_8')) == 2500
  with pytest.raises(ValueError, match="sets 'seed'"):
    script.check_overrides('total_steps=4,seed=3')
  with pytest.raises(ValueError, match='data.partition_seed'):
    script.check_overrides('data.partition_seed=1')
  script.check_overrides('total_steps=4,eval_every=2')


# ---------------------------------------------------------------------------------------
# The state of a run


def test_status_from_eval_json(script, tmp_path):
  run_dir = str(tmp_path / 'p0_s0' / 'ctt')
  assert script.run_status(run_dir, 100) == 'pending'
  os.makedirs(os.path.join(run_dir, 'checkpoints', '50'))
  assert script.run_status(run_dir, 100) == 'partial'
  assert script.latest_checkpoint(run_dir) == 50
  write_eval(run_dir, 50, {'teacher_0': 0.3})
  assert script.run_status(run_dir, 100) == 'partial'
  # An eval JSON at total_steps without the reported network does not count; a truncated
  # one neither.
  write_eval(run_dir, 100, {'student_0': 0.4})
  assert script.run_status(run_dir, 100) == 'partial'
  with open(os.path.join(run_dir, 'eval', 'step_00000100.json'), 'w') as f:
    f.write('{"teacher_0": {"miou"')
  assert script.run_status(run_dir, 100) == 'partial'
  write_eval(run_dir, 100, {'teacher_0': 0.4})
  assert script.run_status(run_dir, 100) == 'finished'
  # Finished at this budget, not at a larger one (resume to the new total).
  assert script.run_status(run_dir, 200) == 'partial'
  script.write_json_atomic(os.path.join(run_dir, script.META_FILE), {'failures': 2})
  assert script.run_status(run_dir, 100) == 'finished'
  assert script.run_status(run_dir, 200) == 'failed'


def test_collect_finished_and_partial(script, tmp_path):
  grid = str(tmp_path)
  write_eval(os.path.join(grid, 'p0_s0', 'ctt'), 5, {'teacher_0': 0.2})
  write_eval(os.path.join(grid, 'p0_s0', 'ctt'), 10, {'teacher_0': 0.45, 'student_0': 0.5},
             'student_0')
  write_eval(os.path.join(grid, 'p1_s0', 'ctt'), 5, {'teacher_0': 0.3})
  os.makedirs(os.path.join(grid, 'p0_s1', 'not_a_method'))
  planned = [script.Run('ctt', 0, 0), script.Run('supervised', 0, 0)]
  records = script.collect(grid, planned, lambda run: 'x', lambda arg: 10)
  keyed = {(r['method'], r['partition_seed']): r for r in records}
  assert list(keyed) == [('ctt', 0), ('supervised', 0), ('ctt', 1)]  # plan, then found
  done = keyed['ctt', 0]
  assert (done['finished'], done['steps'], done['miou'], done['status']) == (
      True, 10, 0.45, 'finished')
  assert (done['best_network'], done['best_miou']) == ('student_0', 0.5)
  assert done['network_miou'] == {'teacher_0': 0.45, 'student_0': 0.5}
  assert done['curve'] == [[5, 0.2], [10, 0.45]]
  assert done['per_class_iou'] == {'sky': pytest.approx(0.55), 'pole': None}
  part = keyed['ctt', 1]
  assert (part['finished'], part['steps'], part['miou'], part['status']) == (
      False, 5, 0.3, 'partial')
  assert keyed['supervised', 0]['status'] == 'pending'
  assert keyed['supervised', 0]['miou'] is None


def test_wall_minutes_sums_segments(script, tmp_path):
  run_dir = str(tmp_path)
  meta = {'segments': [{'start': 1000.0, 'end': 1600.0}, {'start': 2000.0, 'end': 2300.0}]}
  assert script.wall_minutes(run_dir, meta) == pytest.approx(15.0)
  assert script.wall_minutes(run_dir, {}) is None
  # A segment the grid could not close (SIGKILL) ends at the run's last written file.
  open(tmp_path / 'x', 'w').close()
  os.utime(tmp_path / 'x', (2900.0, 2900.0))
  meta['segments'].append({'start': 2600.0, 'end': None})
  assert script.wall_minutes(run_dir, meta) == pytest.approx(20.0)


# ---------------------------------------------------------------------------------------
# The grid loop against a fake main.py

FAKE_MAIN = textwrap.dedent('''\
    """Fake main.py: logs its call, 'trains' to total_steps from its checkpoint."""
    import json, os, re, signal, sys, time
    args = dict(a[2:].split('=', 1) for a in sys.argv[1:])
    workdir, config = args['workdir'], args['config']
    total = int(re.search(r'total_steps=(\\d+)', config).group(1))
    with open(os.environ['FAKE_CALLS'], 'a') as f:
      f.write(json.dumps([workdir, config]) + '\\n')
    ckpt = os.path.join(workdir, 'checkpoints')
    os.makedirs(ckpt, exist_ok=True)
    if os.environ.get('FAKE_HANG'):
      def stop(*_):
        os.makedirs(os.path.join(ckpt, '7'), exist_ok=True)
        open(os.path.join(workdir, 'got_sigterm'), 'w').close()
        sys.exit(0)
      signal.signal(signal.SIGTERM, stop)
      time.sleep(60)
      sys.exit(5)
    if os.environ.get('FAKE_FAIL'):
      print('boom'); sys.exit(1)
    os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
    miou = {'supervised': 0.40, 'ctt': 0.45, 'mean_teacher': 0.42, 'ct_only': 0.44}[
        os.path.basename(workdir)]
    for step in (total // 2, total):
      with open(os.path.join(workdir, 'eval', 'step_%08d.json' % step), 'w') as f:
        json.dump({'best': 'teacher_0', 'teacher_0': {
            'miou': miou * step / total, 'per_class_iou': {'sky': 0.9, 'pole': None}}}, f)
      os.makedirs(os.path.join(ckpt, str(step)), exist_ok=True)
    ''')


@pytest.fixture
def fake_grid(script, tmp_path, monkeypatch):
  fake = tmp_path / 'fake_main.py'
  fake.write_text(FAKE_MAIN)
  monkeypatch.setattr(script, 'MAIN', str(fake))
  monkeypatch.setenv('FAKE_CALLS', str(tmp_path / 'calls.jsonl'))
  handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
  out = tmp_path / 'out'
  common = [f'--workdir={tmp_path / "grid"}', '--overrides=total_steps=10',
            f'--grid_json={out / "grid.json"}', f'--grid_md={out / "grid.md"}',
            f'--grid_plot={out / "grid_curves.png"}']

  def run(*flags):
    return script.main(common + list(flags))

  def calls():
    path = tmp_path / 'calls.jsonl'
    if not path.exists():
      return []
    return [os.path.relpath(json.loads(line)[0], tmp_path / 'grid')
            for line in path.read_text().splitlines()]

  yield run, calls, tmp_path / 'grid', out
  for s, h in handlers.items():
    signal.signal(s, h)


def test_grid_skips_finished_and_resumes_partial(script, fake_grid):
  run, calls, grid, out = fake_grid
  select = ['--methods=supervised,ctt,mean_teacher', '--partition_seeds=0,1', '--seeds=0']
  # p0 supervised finished earlier (eval JSON at total_steps=10); p0 ctt partial.
  write_eval(str(grid / 'p0_s0' / 'supervised'), 10, {'teacher_0': 0.38})
  os.makedirs(grid / 'p0_s0' / 'ctt' / 'checkpoints' / '5')
  write_eval(str(grid / 'p0_s0' / 'ctt'), 5, {'teacher_0': 0.2})
  assert run(*select) == 0
  assert calls() == ['p0_s0/ctt', 'p1_s0/supervised', 'p1_s0/ctt', 'p0_s0/mean_teacher',
                     'p1_s0/mean_teacher']
  with open(out / 'grid.json') as f:
    runs = json.load(f)['runs']
  keyed = {(r['method'], r['partition_seed'], r['seed']): r for r in runs}
  assert len(runs) == 6 and all(r['finished'] and r['steps'] == 10 for r in runs)
  assert keyed['supervised', 0, 0]['miou'] == pytest.approx(0.38)  # not rerun
  assert keyed['ctt', 1, 0]['miou'] == pytest.approx(0.45)
  for r in runs:
    assert {'method', 'partition_seed', 'seed', 'steps', 'miou'} <= set(r)
    assert 0 <= r['miou'] <= 1 and r['network'] == 'teacher_0'
  meta = script.read_meta(str(grid / 'p1_s0' / 'ctt'))
  assert meta['config_arg'] == ('1_8,method=ctt,data.partition_seed=1,seed=0,'
                                'total_steps=10')
  assert meta['segments'][0]['outcome'] == 'finished'
  md = (out / 'grid.md').read_text()
  assert '6 of 6 runs finished' in md and '| **n** |' in md
  assert os.path.getsize(out / 'grid_curves.png') > 1000
  # Everything finished: a rerun starts nothing.
  assert run(*select) == 0
  assert len(calls()) == 5
  # Another selection in the same grid keeps the earlier runs in the reports.
  assert run('--methods=supervised', '--partition_seeds=2', '--seeds=0') == 0
  with open(out / 'grid.json') as f:
    assert len(json.load(f)['runs']) == 7


def test_grid_closes_segment_of_a_killed_grid(script, fake_grid):
  """A segment left open by a SIGKILLed grid ends at the run's last file, before the
  resumed process writes anything."""
  run, _, grid, _ = fake_grid
  run_dir = grid / 'p0_s0' / 'supervised'
  os.makedirs(run_dir / 'checkpoints' / '5')
  (run_dir / 'main.log').write_text('killed\n')
  os.utime(run_dir / 'main.log', (1060.0, 1060.0))
  os.utime(run_dir / 'checkpoints' / '5', (1050.0, 1050.0))
  script.write_json_atomic(str(run_dir / script.META_FILE), {
      'config_arg': '1_8,method=supervised,num_pairs=1,data.partition_seed=0,seed=0,'
                    'total_steps=10', 'segments': [{'start': 1000.0, 'end': None}]})
  assert run('--methods=supervised', '--partition_seeds=0', '--seeds=0') == 0
  first, second = script.read_meta(str(run_dir))['segments']
  assert (first['end'], first['outcome']) == (1060.0, 'killed')
  assert second['outcome'] == 'finished' and second['from_checkpoint'] == 5


def test_grid_refuses_changed_config(script, fake_grid):
  run, calls, _, _ = fake_grid
  assert run('--methods=supervised', '--partition_seeds=0', '--seeds=0') == 0
  with pytest.raises(SystemExit, match='another configuration'):
    run('--methods=supervised', '--partition_seeds=0', '--seeds=0',
        '--overrides=total_steps=20')
  assert len(calls()) == 1


def test_grid_time_limit_stops_run_with_sigterm(script, fake_grid, monkeypatch):
  run, calls, grid, out = fake_grid
  monkeypatch.setenv('FAKE_HANG', '1')
  # 6 s: the run gets SIGTERM (the fake checkpoints and exits), nothing else starts.
  assert run('--methods=supervised,ctt', '--partition_seeds=0', '--seeds=0',
             '--max_minutes=0.1') == 3
  assert calls() == ['p0_s0/supervised']
  assert (grid / 'p0_s0' / 'supervised' / 'got_sigterm').exists()
  assert script.run_status(str(grid / 'p0_s0' / 'supervised'), 10) == 'partial'
  with open(out / 'grid.json') as f:
    report = json.load(f)
  assert report['runs'] == [] and report['pending'] == ['p0_s0/supervised', 'p0_s0/ctt']
  assert '| supervised | 0 | 0 | partial | - |' in (out / 'grid.md').read_text()
  segment = script.read_meta(str(grid / 'p0_s0' / 'supervised'))['segments'][0]
  assert segment['outcome'] == 'stopped' and segment['end'] >= segment['start']
  # The next invocation resumes it (the same command without a limit).
  monkeypatch.delenv('FAKE_HANG')
  assert run('--methods=supervised,ctt', '--partition_seeds=0', '--seeds=0') == 0
  assert calls() == ['p0_s0/supervised', 'p0_s0/supervised', 'p0_s0/ctt']


def test_grid_failed_run_is_retried_then_skipped(script, fake_grid, monkeypatch):
  run, calls, grid, _ = fake_grid
  monkeypatch.setenv('FAKE_FAIL', '1')
  select = ('--methods=supervised', '--partition_seeds=0', '--seeds=0')
  assert run(*select) == 1
  assert run(*select) == 1
  assert script.run_status(str(grid / 'p0_s0' / 'supervised'), 10) == 'failed'
  assert run(*select) == 1  # skipped now
  assert len(calls()) == 2
  monkeypatch.delenv('FAKE_FAIL')
  assert run(*select, '--retry_failed') == 0
  assert len(calls()) == 3


# ---------------------------------------------------------------------------------------
# Reports


def test_paired_differences_hand_computed(script, tmp_path):
  records = [
      record('supervised', 0, 0, 0.40), record('ctt', 0, 0, 0.45),
      record('mean_teacher', 0, 0, 0.43), record('ct_only', 0, 0, 0.44),
      record('supervised', 1, 0, 0.42), record('ctt', 1, 0, 0.41),
      record('mean_teacher', 1, 0, 0.40),
      record('supervised', 2, 0, 0.38), record('ctt', 2, 0, 0.44),
      record('mean_teacher', 2, 0, 0.41),
      # Not counted across subsets: unfinished, or another training seed.
      record('supervised', 3, 0, 0.30), record('ctt', 3, 0, 0.50, finished=False),
      record('supervised', 0, 1, 0.43), record('ctt', 0, 1, 0.42),
  ]
  rows, stats = script.paired_differences(records, 'partition_seed', {'seed': 0})
  assert [row['partition_seed'] for row in rows] == [0, 1, 2, 3]
  assert rows[3]['diff'] == {}
  sup = stats['supervised']  # +5, -1, +6 points
  assert sup['n'] == 3
  assert 100 * sup['mean'] == pytest.approx(10 / 3)
  assert 100 * sup['std'] == pytest.approx(math.sqrt((25 + 1 + 36 - 3 * (10 / 3) ** 2) / 2))
  assert (100 * sup['min'], 100 * sup['max']) == (pytest.approx(-1), pytest.approx(6))
  mt = stats['mean_teacher']  # +2, +1, +3
  assert (100 * mt['mean'], 100 * mt['std']) == (pytest.approx(2), pytest.approx(1))
  assert stats['ct_only']['n'] == 1 and stats['ct_only']['std'] is None
  seed_rows, seed_stats = script.paired_differences(records, 'seed', {'partition_seed': 0})
  assert [row['seed'] for row in seed_rows] == [0, 1]
  assert 100 * seed_stats['supervised']['mean'] == pytest.approx((5 - 1) / 2)

  md = script.write_markdown(records, str(tmp_path / 'grid.md'), base_seed=0,
                             seed_study_partition=0, plot_path=str(tmp_path / 'c.png'))
  assert ('| subset | supervised | mean_teacher | ct_only | ctt | ctt - supervised | '
          'ctt - mean_teacher | ctt - ct_only |') in md
  assert '| 0 | 40.00 | 43.00 | 44.00 | 45.00 | +5.00 | +2.00 | +1.00 |' in md
  assert '| 1 | 42.00 | 40.00 | - | 41.00 | -1.00 | +1.00 | - |' in md
  assert '| **mean** |  |  |  |  | +3.33 | +2.00 | +1.00 |' in md
  assert '| **std** |  |  |  |  | 3.79 | 1.00 | - |' in md
  assert '| **min** |  |  |  |  | -1.00 | +1.00 | +1.00 |' in md
  assert '| **n** |  |  |  |  | 3 | 3 | 1 |' in md
  assert '## recipe `paper`: training seed varied on subset 0' in md
  assert '| 1 | 43.00 | - | - | 42.00 | -1.00 | - | - |' in md
  assert '| paper | ctt | 3 | 0 | partial | 50 / 100 | 50.00 |' in md
  assert '](c.png)' in md and 'Pseudo-label' not in md
  assert 'Every network' not in md  # no record has more than one network

  records[0]['network_miou'] = {'teacher_0': 0.45, 'teacher_1': 0.475}
  md = script.write_markdown(records, str(tmp_path / 'grid.md'), base_seed=0,
                             seed_study_partition=0)
  assert '| method | subset | seed | step | teacher_0 | teacher_1 |' in md
  assert (f'| {records[0]["method"]} | {records[0]["partition_seed"]} | '
          f'{records[0]["seed"]} | {records[0]["steps"]} | 45.00 | 47.50 |') in md


def test_plot_written(script, tmp_path):
  records = [record('supervised', 0, 0, 0.40), record('ctt', 0, 0, 0.45),
             record('ctt', 0, 1, 0.42), record('ctt', 2, 0, 0.30, finished=False)]
  path = tmp_path / 'sub' / 'grid_curves.png'
  script.plot_curves(records, str(path))
  assert os.path.getsize(path) > 5000
  script.plot_curves([], str(tmp_path / 'empty.png'))  # an empty grid still plots
  assert os.path.getsize(tmp_path / 'empty.png') > 1000


def test_read_curve_sorted(script, tmp_path):
  run_dir = str(tmp_path / 'ctt')
  write_eval(run_dir, 200, {'teacher_0': 0.42, 'student_1': 0.45}, 'student_1')
  write_eval(run_dir, 100, {'teacher_0': 0.30, 'student_1': 0.28}, 'teacher_0')
  assert [step for step, _ in script.read_curve(run_dir)] == [100, 200]


# ---------------------------------------------------------------------------------------
# Pseudo-label IoU scalars from TensorBoard event files


def _write_events(path, events):
  """A TFRecord event file (the CRCs are not checked by the reader)."""
  with open(path, 'wb') as f:
    for event in events:
      data = event.SerializeToString()
      f.write(struct.pack('<Q', len(data)) + b'\0' * 4 + data + b'\0' * 4)


def test_pseudo_iou_from_events(script, tmp_path):
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top

  def event(step, scalars, tensor=False):
    e = event_pb2.Event(step=step, wall_time=1.0)
    for tag, v in scalars.items():
      if tensor:  # what tf.summary (CLU's writer) writes
        e.summary.value.add(tag=tag, tensor=tensor_util.make_tensor_proto(v))
      else:
        e.summary.value.add(tag=tag, simple_value=v)
    return e

  run_dir = tmp_path / 'run'
  os.makedirs(run_dir)
  assert script.read_pseudo_iou(str(run_dir)) == {}
  _write_events(run_dir / 'events.out.tfevents.1.host', [
      event(2, {'train/pseudo_iou/teacher_0/sky': 0.1, 'train/loss': 3.0}),
      event(4, {'train/pseudo_iou/teacher_0/sky': 0.8, 'train/pseudo_iou/teacher_0/car': 0.4,
                'train/pseudo_iou/teacher_1/sky': 0.6,
                'train/pseudo_iou/teacher_1/car': float('nan')}, tensor=True),
  ])
  # A second file (after a resume) whose tail was cut by a kill.
  second = run_dir / 'events.out.tfevents.2.host'
  _write_events(second, [event(4, {'train/pseudo_iou/teacher_1/miou': 0.55})])
  with open(second, 'ab') as f:
    f.write(struct.pack('<Q', 1000) + b'\0' * 10)
  pseudo = script.read_pseudo_iou(str(run_dir))
  assert pseudo['teacher_0']['step'] == 4
  assert pseudo['teacher_0']['miou'] == pytest.approx(0.6)
  assert pseudo['teacher_0']['per_class'] == {'sky': pytest.approx(0.8),
                                              'car': pytest.approx(0.4)}
  assert pseudo['teacher_1']['miou'] == pytest.approx(0.55)  # the logged miou wins
  records = [dict(record('ctt', 0, 0, 0.45), pseudo_iou=pseudo),
             record('supervised', 0, 0, 0.40)]
  md = script.write_markdown(records, str(tmp_path / 'grid.md'), base_seed=0,
                             seed_study_partition=0)
  assert '| method | subset | seed | step | teacher_0 | teacher_1 |' in md
  assert '| ctt | 0 | 0 | 4 | 60.00 | 55.00 |' in md


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))


def test_recipes_are_never_pooled_and_pairs_span_subsets_and_seeds(script, tmp_path):
  authors = lambda *a, **k: dict(record(*a, **k), recipe='authors',
                                 config='1_8,recipe=authors')
  records = [
      record('mean_teacher', 0, 0, 0.40), record('ctt', 0, 0, 0.41),  # paper: +1
      authors('mean_teacher', 0, 0, 0.40), authors('ctt', 0, 0, 0.43),  # authors: +3
      authors('mean_teacher', 1, 0, 0.42), authors('ctt', 1, 0, 0.41),  # -1
      authors('mean_teacher', 0, 1, 0.39), authors('ctt', 0, 1, 0.44),  # +5
  ]
  rows, stats = script.paired_differences(records, ('partition_seed', 'seed'),
                                          {'recipe': 'authors'})
  assert [row[('partition_seed', 'seed')] for row in rows] == [(0, 0), (0, 1), (1, 0)]
  assert stats['mean_teacher']['n'] == 3
  assert 100 * stats['mean_teacher']['mean'] == pytest.approx((3 + 5 - 1) / 3)
  _, paper = script.paired_differences(records, 'partition_seed', {'seed': 0,
                                                                   'recipe': 'paper'})
  assert 100 * paper['mean_teacher']['mean'] == pytest.approx(1)
  md = script.write_markdown(records, str(tmp_path / 'grid.md'), base_seed=0,
                             seed_study_partition=0)
  assert '## recipe `authors`: every (subset, seed) pair' in md
  assert '| 0, 1 | 39.00 | 44.00 | +5.00 |' in md
  assert '## recipe `paper`: every (subset, seed) pair' not in md  # one seed only
  # A record written before runs had a recipe takes it from its config argument.
  assert script.recipe_of({'config': '1_8,recipe=authors,method=ctt'}) == 'authors'
  assert script.recipe_of({'config': '1_8,method=ctt'}) == 'paper'


def test_every_seed_on_every_subset_plan_and_recipe_workdirs(script):
  runs = script.plan_grid(['ctt', 'mean_teacher'], [0, 1], [0, 1], seed_study_partition=-1,
                          recipe='authors')
  assert [r.name for r in runs] == [
      'authors/p0_s0/mean_teacher', 'authors/p0_s0/ctt', 'authors/p1_s0/mean_teacher',
      'authors/p1_s0/ctt', 'authors/p0_s1/mean_teacher', 'authors/p0_s1/ctt',
      'authors/p1_s1/mean_teacher', 'authors/p1_s1/ctt']
  assert runs[1].workdir('/g') == '/g/authors/p0_s0/ctt'
  assert runs[1].config_arg('1_8') == '1_8,recipe=authors,method=ctt,data.partition_seed=0,seed=0'
  assert script.Run('ctt', 0, 0).config_arg('1_8') == '1_8,method=ctt,data.partition_seed=0,seed=0'
  with pytest.raises(ValueError, match="sets 'recipe'"):
    script.check_overrides('recipe=authors')


def test_reports_keep_the_runs_of_earlier_grids(script, tmp_path):
  grid_json = tmp_path / 'grid.json'
  earlier = [dict(record('ctt', 0, 0, 0.40), config='1_8,method=ctt'),
             dict(record('ctt', 1, 0, 0.30), config='1_8,method=ctt')]
  grid_json.write_text(json.dumps({'runs': earlier}))
  now = [dict(record('ctt', 1, 0, 0.35), recipe='paper'),
         dict(record('ctt', 0, 0, 0.45), recipe='authors')]
  merged = script.keep_earlier_records(now, str(grid_json))
  keys = sorted(script.record_key(r) for r in merged)
  assert keys == [('authors', 'ctt', 0, 0), ('paper', 'ctt', 0, 0), ('paper', 'ctt', 1, 0)]
  # The run this grid holds replaces its earlier record; the other earlier one is kept.
  assert [r['miou'] for r in merged if script.record_key(r) == ('paper', 'ctt', 1, 0)] == [0.35]


def test_reports_go_to_the_experiment_and_quote_no_machine_path(script, tmp_path):
  args = script.parse_args(['--workdir=grid'])
  results = os.path.join(ROOT, 'experiments', 'camvid', 'results')
  assert (args.grid_json, args.grid_md, args.grid_plot) == (
      os.path.join(results, 'grid.json'), os.path.join(results, 'grid.md'),
      os.path.join(results, 'grid_curves.png'))
  assert args.command == 'python experiments/camvid/run_grid.py --workdir=DIR'
  grid = str(tmp_path / 'grid')
  command = script.quoted_command([
      f'--workdir={grid}', '--methods=ctt', '--dry_run', f'--grid_json={grid}/grid.json',
      '--grid_md', os.path.join(results, 'grid.md'), '--grid_plot=/elsewhere/grid.png',
      f'--overrides=ct_weighting=confidence_power,data.data_dir={tmp_path}/camvid'])
  assert command == (
      'python experiments/camvid/run_grid.py --workdir=DIR --methods=ctt '
      '--grid_json=DIR/grid.json --grid_md=experiments/camvid/results/grid.md '
      '--grid_plot=PATH/grid.png '
      '--overrides=ct_weighting=confidence_power,data.data_dir=PATH/camvid')


def test_loss_terms_weights_shares_and_waits_for_the_contrastive_start(script, tmp_path):
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'loss_terms', os.path.join(ROOT, 'experiments', 'camvid', 'loss_terms.py'))
  loss_terms = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loss_terms)
  run_dir = tmp_path / 'run'
  os.makedirs(run_dir)
  with pytest.raises(SystemExit, match='config.json does not exist'):
    loss_terms.loss_terms(str(run_dir), 10)
  with open(run_dir / 'config.json', 'w') as f:
    json.dump({'lambda_sup': 1.0, 'lambda_ct': 1.0, 'lambda_hc': 0.1, 'lambda_lc': 0.5,
               'use_hc': True, 'use_lc': True}, f)
  with pytest.raises(SystemExit, match='no logged train/loss'):
    loss_terms.loss_terms(str(run_dir), 10)

  def event(step, active):
    e = event_pb2.Event(step=step, wall_time=1.0)
    for tag, v in {'train/loss_sup': 1.0, 'train/loss_ct': 0.5, 'train/loss_hc': 4.0,
                   'train/loss_lc': 2.0, 'train/contrastive_active': active,
                   'train/loss': 1.5 + active * (0.4 + 1.0)}.items():
      e.summary.value.add(tag=tag, simple_value=v)
    return e

  _write_events(run_dir / 'events.out.tfevents.1.host',
                [event(5, 0.0), event(10, 0.0), event(15, 1.0), event(20, 1.0)])
  result = loss_terms.loss_terms(str(run_dir), 10)
  before, after = result['windows']
  assert before['steps'] == [0, 10] and after['steps'] == [10, 20]
  # Before the start the contrastive terms are logged but carry no weight.
  assert before['terms']['hc']['raw'] == pytest.approx(4.0)
  assert before['terms']['hc']['weighted'] == 0.0
  assert before['terms']['sup']['share'] == pytest.approx(1.0 / 1.5)
  # After it: 1 + 0.5 + 0.1 * 4 + 0.5 * 2 = 2.9, the logged total.
  assert after['total'] == pytest.approx(2.9)
  assert sum(t['weighted'] for t in after['terms'].values()) == pytest.approx(2.9)
  assert after['terms']['lc']['share'] == pytest.approx(1.0 / 2.9)
