"""memory_bank.push against a Python FIFO model of the per-class queues."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctt_jax import memory_bank

C, N, D, P = 4, 6, 3, 40


def _fifo_model(queues, feats, labels, scores, k):
  for c in range(C):
    cand = [i for i in range(len(labels)) if labels[i] == c]
    cand.sort(key=lambda i: -scores[i])
    for i in cand[:k]:
      queues[c].append(feats[i])


def _queue_contents(bank, c):
  """Entries of queue c in FIFO order (oldest first), read from the ring buffer."""
  count, ptr = int(bank.count[c]), int(bank.ptr[c])
  return [np.asarray(bank.feats[c, (ptr - count + j) % N]) for j in range(count)]


@pytest.mark.parametrize('k', [1, 3, N])
def test_push_matches_fifo_model_with_wraparound(k):
  rng = np.random.default_rng(k)
  bank = memory_bank.create(C, N, D)
  queues = [collections.deque(maxlen=N) for _ in range(C)]
  traces = []

  @jax.jit
  def push(bank, feats, labels, scores):
    traces.append(1)
    return memory_bank.push(bank, feats, labels, scores, k=k)

  for _ in range(12):  # enough pushes to wrap every queue several times
    feats = rng.normal(size=(P, D)).astype(np.float32)
    # Class 3 rarely has candidates, 255 marks non-candidates.
    labels = rng.choice([0, 1, 2, 3, 255], size=P, p=[.3, .3, .2, .02, .18]).astype(np.int32)
    scores = rng.random(P).astype(np.float32)
    bank = push(bank, feats, labels, scores)
    _fifo_model(queues, feats, labels, scores, k)
    for c in range(C):
      got = _queue_contents(bank, c)
      assert len(got) == len(queues[c])
      np.testing.assert_allclose(np.array(got).reshape(-1, D),
                                 np.array(list(queues[c])).reshape(-1, D), atol=0)
  assert len(traces) == 1  # no recompilation from step to step


def test_empty_push_changes_nothing_and_full_flag():
  bank = memory_bank.create(C, N, D)
  feats = jnp.ones((P, D))
  bank2 = memory_bank.push(bank, feats, jnp.full((P,), 255, jnp.int32), jnp.ones((P,)), k=2)
  assert int(bank2.count.sum()) == 0 and not bool(memory_bank.is_full(bank2))
  labels = jnp.tile(jnp.arange(C, dtype=jnp.int32), P // C)
  for _ in range(N):
    bank2 = memory_bank.push(bank2, feats, labels, jnp.ones((P,)), k=1)
  assert bool(memory_bank.is_full(bank2))
  assert float(memory_bank.fill_fraction(bank2)) == 1.0
  valid = memory_bank.valid_entries(memory_bank.push(bank, feats, labels, jnp.ones((P,)), k=2))
  assert valid.shape == (C, N) and int(valid.sum()) == 2 * C


def test_k_out_of_range_is_an_error():
  bank = memory_bank.create(C, N, D)
  with pytest.raises(ValueError, match='k_per_step'):
    memory_bank.push(bank, jnp.ones((P, D)), jnp.zeros((P,), jnp.int32), jnp.ones((P,)),
                     k=N + 1)


@pytest.mark.parametrize('size,k', [(2048, 1), (2048, 5), (8580, 1), (8580, 4), (1536, 7),
                                    (300, 3), (4096, 512)])
def test_two_stage_top_k_equals_one_top_k_with_ties_and_non_candidates(size, k):
  rng = np.random.default_rng(size + k)
  # Few distinct values: many ties across and within groups; -inf rows have < k candidates.
  ranked = rng.integers(0, 4, size=(2, 3, size)).astype(np.float32) / 4
  ranked[:, 1] = np.where(rng.random((2, size)) < 0.999, -np.inf, ranked[:, 1])
  ranked[:, 2] = -np.inf
  want_scores, want_idx = jax.lax.top_k(jnp.asarray(ranked), k)
  got_scores, got_idx = jax.jit(memory_bank.top_k_two_stage, static_argnums=1)(ranked, k)
  np.testing.assert_array_equal(got_scores, want_scores)
  finite = np.isfinite(np.asarray(want_scores))  # which -inf entry fills a row is unused
  np.testing.assert_array_equal(np.asarray(got_idx)[finite], np.asarray(want_idx)[finite])


def test_ranking_groups_are_powers_of_two_of_at_least_min_group():
  # Cityscapes 256x512 crops give 33x65 = 2145 output pixels per image (odd).
  assert memory_bank.ranking_groups(8 * 2145, 1) == 8  # one image per group
  assert memory_bank.ranking_groups(16 * 2145, 1) == 16
  assert memory_bank.ranking_groups(8 * 256, 2) == 8  # demo: 16x16 maps
  assert memory_bank.ranking_groups(8 * 256, 512) == 4  # groups hold >= k candidates
  assert memory_bank.ranking_groups(2145, 1) == 1
  assert memory_bank.ranking_groups(40, 3) == 1  # smaller than one group
