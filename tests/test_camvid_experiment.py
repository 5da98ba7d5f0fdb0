"""scripts/camvid_experiment.py: curves read from eval JSONs, the table and the plot."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script():
  spec = importlib.util.spec_from_file_location(
      'camvid_experiment', os.path.join(ROOT, 'scripts', 'camvid_experiment.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_eval(run_dir, step, miou_by_network, best):
  os.makedirs(os.path.join(run_dir, 'eval'), exist_ok=True)
  results = {name: {'miou': m, 'per_class_iou': {'sky': m + 0.1, 'pole': None}}
             for name, m in miou_by_network.items()}
  results['best'] = best
  with open(os.path.join(run_dir, 'eval', f'step_{step:08d}.json'), 'w') as f:
    json.dump(results, f)


def test_curve_table_and_plot(tmp_path):
  script = load_script()
  run_dir = str(tmp_path / 'ctt')
  # Written out of order: the curve is sorted by step (zero-padded names).
  write_eval(run_dir, 200, {'teacher_0': 0.42, 'student_1': 0.45}, 'student_1')
  write_eval(run_dir, 100, {'teacher_0': 0.30, 'student_1': 0.28}, 'teacher_0')
  curve = script.read_curve(run_dir)
  assert [step for step, _ in curve] == [100, 200]
  step, final = curve[-1]
  summary = {'ctt': {'final': final['teacher_0'], 'best_network': final['best'],
                     'best_miou': final[final['best']]['miou'], 'steps': step,
                     'wall_minutes': 12.34, 'seed': 0}}
  table = script.write_table(summary, str(tmp_path / 'results.md'))
  assert '| ctt | 42.00 | student_1 (45.00) | 200 | 12.3 min | 0 | 52.0 | - |' in table
  assert table.startswith('| method | mIoU (teacher_0) |')
  script.plot_curves({'ctt': curve}, str(tmp_path / 'curves.png'), '1_8')
  assert os.path.getsize(tmp_path / 'curves.png') > 1000
