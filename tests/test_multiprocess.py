"""Two processes with jax.distributed (gloo CPU collectives, 4 fake devices each), each
reading the images its devices hold, train like one process with the same global batch:
with 8 images (4 each, data 8 x space 1) and with 1 image (both read it and each keeps
half of its rows, data 1 x space 8)."""
import pytest
import os
import socket
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'multiprocess_worker.py')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(out, process_id=0, num_processes=1, local_devices=8, port=0, batch_size=8):
  return subprocess.Popen(
      [sys.executable, WORKER, f'--process_id={process_id}',
       f'--num_processes={num_processes}', f'--local_devices={local_devices}',
       f'--port={port}', f'--out={out}', f'--batch_size={batch_size}'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-4000:]
  return out


@pytest.mark.parametrize('batch_size, mesh, images', [
    (8, "{'data': 8, 'space': 1}", ('[0, 4)', '[4, 8)')),
    (1, "{'data': 1, 'space': 8}", ('[0, 1)', '[0, 1)'))])
def test_two_processes_match_one_process(tmp_path, batch_size, mesh, images):
  port = _free_port()
  multi = str(tmp_path / 'multi.npz')
  procs = [_start(multi, i, 2, 4, port, batch_size) for i in range(2)]
  outputs = [_finish(p) for p in procs]
  for p in range(2):
    assert f'process {p}/2 devices 4/8 mesh {mesh} images {images[p]} done' in outputs[p]
  single = str(tmp_path / 'single.npz')
  _finish(_start(single, local_devices=8, batch_size=batch_size))
  a, b = np.load(multi), np.load(single)
  assert len(a.files) == len(b.files) > 1
  for key in a.files:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5)
