"""Data parallelism: the same global batch gives the same state on 1 and 8 devices."""
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize('kind', ['tiny', 'deeplab_im2col'])
def test_one_device_and_eight_fake_devices_agree(kind):
  proc = subprocess.run([sys.executable, os.path.join(HERE, 'sharded_step_check.py'), kind],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  found = re.search(r'max_param_diff=(\S+) max_bank_diff=(\S+) traces=(\d+)', proc.stdout)
  assert found, proc.stdout
  param_diff, bank_diff, traces = float(found[1]), float(found[2]), int(found[3])
  # Float reductions run in another order across devices: tolerance, not bit equality.
  assert param_diff < 1e-4, param_diff
  assert bank_diff < 1e-4, bank_diff
  assert traces == 1
