"""Loss kernels against plain numpy loops over pixels and bank entries."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctt_jax import losses

C, N, D, TAU = 4, 5, 8, 0.5


def _unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ce_ref(logits, labels, weights=None, ignore=255):
  logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
  weights = np.ones(len(labels)) if weights is None else weights.reshape(-1)
  total, count = 0.0, 0
  for i in range(len(labels)):
    if labels[i] == ignore:
      continue
    z = logits[i] - logits[i].max()
    total += weights[i] * -(z[labels[i]] - np.log(np.exp(z).sum()))
    count += 1
  return total / max(count, 1)


def _log_ratio(s_pos, negatives):
  return -np.log(np.exp(s_pos) / (np.exp(s_pos) + sum(np.exp(s) for s in negatives)))


def _class_mean(per_class):
  return np.mean([np.mean(v) for v in per_class.values()]) if per_class else 0.0


def hc_ref(feats, labels, mask, bank, valid):
  f, lab, m = _unit(feats.reshape(-1, D)), labels.reshape(-1), mask.reshape(-1)
  b = _unit(bank)
  per_class = {}
  for i in range(len(lab)):
    c = lab[i]
    if not m[i] or not 0 <= c < C:
      continue
    positives = [f[i] @ b[c, e] / TAU for e in range(N) if valid[c, e]]
    if not positives:
      continue
    negatives = [f[i] @ b[c2, e] / TAU for c2 in range(C) if c2 != c
                 for e in range(N) if valid[c2, e]]
    per_class.setdefault(c, []).append(np.mean([_log_ratio(s, negatives) for s in positives]))
  return _class_mean(per_class)


def lc_ref(feats, peer, labels, mask, banks, valid):
  f, g = _unit(feats.reshape(-1, D)), _unit(peer.reshape(-1, D))
  lab, m = labels.reshape(-1), mask.reshape(-1)
  b = _unit(banks)
  per_class = {}
  for i in range(len(lab)):
    c = lab[i]
    if not m[i] or not 0 <= c < C:
      continue
    negatives = [f[i] @ b[k, c2, e] / TAU for k in range(banks.shape[0])
                 for c2 in range(C) if c2 != c for e in range(N) if valid[k, c2, e]]
    per_class.setdefault(c, []).append(_log_ratio(f[i] @ g[i] / TAU, negatives))
  return _class_mean(per_class)


def _inputs(seed, shape=(2, 3, 4)):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=shape + (D,)).astype(np.float32)
  labels = rng.choice([0, 1, 2, 255], size=shape).astype(np.int32)  # class 3 absent
  mask = rng.random(shape) < 0.6
  return rng, feats, labels, mask


@pytest.mark.parametrize('seed', [0, 1])
def test_cross_entropy_matches_reference(seed):
  rng, _, labels, _ = _inputs(seed)
  logits = rng.normal(size=labels.shape + (C,)).astype(np.float32) * 3
  weights = rng.random(labels.shape).astype(np.float32)
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), ce_ref(logits, labels),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, weights),
                             ce_ref(logits, labels, weights), rtol=1e-5)
  assert float(losses.cross_entropy(logits, np.full_like(labels, 255))) == 0.0


@pytest.mark.parametrize('case', ['full', 'partial', 'empty_queue', 'all_empty'])
def test_high_level_contrastive_matches_reference(case):
  rng, feats, labels, mask = _inputs(2)
  bank = rng.normal(size=(C, N, D)).astype(np.float32)
  valid = {'full': np.ones((C, N), bool),
           'partial': rng.random((C, N)) < 0.5,
           'empty_queue': np.ones((C, N), bool) & (np.arange(C)[:, None] != 1),
           'all_empty': np.zeros((C, N), bool)}[case]
  got = losses.high_level_contrastive(feats, labels, mask, bank, TAU, bank_valid=valid)
  np.testing.assert_allclose(got, hc_ref(feats, labels, mask, bank, valid), rtol=1e-5,
                             atol=1e-6)
  if case == 'full':  # without bank_valid every entry counts
    np.testing.assert_allclose(losses.high_level_contrastive(feats, labels, mask, bank, TAU),
                               got, rtol=1e-6)


@pytest.mark.parametrize('case', ['full', 'partial', 'one_bank_empty'])
def test_low_level_contrastive_matches_reference(case):
  rng, feats, labels, mask = _inputs(3)
  peer = rng.normal(size=feats.shape).astype(np.float32)
  banks = rng.normal(size=(2, C, N, D)).astype(np.float32)
  valid = {'full': np.ones((2, C, N), bool),
           'partial': rng.random((2, C, N)) < 0.5,
           'one_bank_empty': np.stack([np.ones((C, N), bool), np.zeros((C, N), bool)])}[case]
  got = losses.low_level_contrastive(feats, peer, labels, mask, banks, TAU, bank_valid=valid)
  np.testing.assert_allclose(got, lc_ref(feats, peer, labels, mask, banks, valid), rtol=1e-5)


def test_edge_cases_are_zero_and_gradients_finite():
  rng, feats, labels, mask = _inputs(4)
  bank = rng.normal(size=(C, N, D)).astype(np.float32)
  banks = np.stack([bank, bank])
  no_anchor = np.zeros_like(mask)
  all_ignore = np.full_like(labels, 255)
  for lab, m in [(labels, no_anchor), (all_ignore, mask)]:
    assert float(losses.high_level_contrastive(feats, lab, m, bank, TAU)) == 0.0
    assert float(losses.low_level_contrastive(feats, feats, lab, m, banks, TAU)) == 0.0

  def total(f, valid):
    return (losses.high_level_contrastive(f, labels, mask, bank, TAU, bank_valid=valid[0])
            + losses.low_level_contrastive(f, f * 0.5, labels, mask, banks, TAU,
                                           bank_valid=valid))
  for valid in [np.ones((2, C, N), bool), np.zeros((2, C, N), bool),
                rng.random((2, C, N)) < 0.3]:
    grads = jax.grad(total)(jnp.asarray(feats), valid)
    assert np.all(np.isfinite(grads))
  # Zero features (normalised with an epsilon) stay finite too.
  grads = jax.grad(total)(jnp.zeros_like(feats), np.ones((2, C, N), bool))
  assert np.all(np.isfinite(grads))


def test_lc_positive_gets_no_gradient():
  rng, feats, labels, mask = _inputs(5)
  banks = rng.normal(size=(2, C, N, D)).astype(np.float32)
  peer_grad = jax.grad(lambda p: losses.low_level_contrastive(
      feats, p, labels, mask, banks, TAU))(jnp.asarray(feats))
  assert float(jnp.abs(peer_grad).max()) == 0.0
