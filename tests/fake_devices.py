"""Run a small jax program on N fake CPU devices in a child process.

The device count is fixed when jax starts, so programs that need several devices run in
their own interpreter; they print one JSON line last, which is returned.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_program(program: str, num_devices: int, timeout_s: float = 120) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', program], capture_output=True, text=True,
                        timeout=timeout_s, env=env, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])
