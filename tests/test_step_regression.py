"""The step's behaviour is pinned: 20 demo-config steps of every method against a recording.

The recording (tests/fixtures/step_regression.json, made by `python -m
tests.step_regression --record` before the step was restructured) holds every loss term of
every step and a SHA-256 of the final students, teachers, statistics and banks. On the CPU
model and jax version that recorded it the comparison is bitwise; elsewhere XLA:CPU may sum
in another order, so losses and state sums are compared to rtol 1e-4 instead.
"""
import json

import jax
import numpy as np
import pytest

from tests import step_regression

with open(step_regression.FIXTURE) as _f:
  RECORDED = json.load(_f)
SAME_MACHINE = (RECORDED['cpu'] == step_regression.cpu_model()
                and RECORDED['jax'] == jax.__version__)


@pytest.mark.parametrize('case', sorted(step_regression.CASES))
def test_step_matches_recording(case):
  expected = RECORDED['cases'][case]
  got = step_regression.run_case(step_regression.CASES[case])
  assert len(got['losses']) == len(expected['losses']) == RECORDED['steps']
  for step, (g, e) in enumerate(zip(got['losses'], expected['losses'])):
    assert sorted(g) == sorted(e), (case, step)
    for key in e:
      if SAME_MACHINE:
        assert g[key] == e[key], (case, step, key, g[key], e[key])
      else:
        np.testing.assert_allclose(g[key], e[key], rtol=1e-4, atol=1e-6,
                                   err_msg=f'{case} step {step} {key}')
  for part in expected['digest']:
    if SAME_MACHINE:
      assert got['digest'][part] == expected['digest'][part], (case, part)
    else:
      np.testing.assert_allclose(got['sums'][part], expected['sums'][part], rtol=1e-4,
                                 atol=1e-5, err_msg=f'{case} {part}')
