"""Loss kernels of CTT (cross-entropy, the paper's Eq. 1; HC, Eq. 6; LC, Eq. 8), vectorised
over pixels and memory-bank entries.

All kernels take pixel tensors of any leading shape (`[...]`), flatten them, and use masks
instead of boolean indexing so shapes stay static under jit. Log-ratios are computed with
`logaddexp`/`logsumexp`, and every division is guarded, so empty masks and empty queues give
finite values and finite gradients.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Stands for log(0) of a masked-out similarity. Finite (unlike -inf) so that gradients
# through the masked entries are exactly zero rather than NaN; similarities are bounded by
# 1 / temperature, far above it.
_MASKED = -1e9


def cross_entropy(logits, labels, weights=None, ignore_label: int = 255):
  """Mean pixel cross-entropy over non-ignored pixels.

  Args:
    logits: [..., C].
    labels: [...] int; `ignore_label` (and any value outside [0, C)) is left out.
    weights: optional [...] per-pixel weights; the result is sum(w * ce) / #non-ignored
      (ClassMix's pixel-wise weighting).
  Returns:
    scalar; 0 if every pixel is ignored.
  """
  num_classes = logits.shape[-1]
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  if weights is not None:
    nll = nll * weights
  nll = jnp.where(valid, nll, 0.0)
  return nll.sum() / jnp.maximum(valid.sum(), 1)


def _normalize(x, eps: float = 1e-12):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def _class_average(per_anchor, anchor_labels, anchor_mask, num_classes):
  """Mean over masked anchors of each class, then over classes with >= 1 masked anchor.

  Args:
    per_anchor: [P] loss of each anchor (garbage where the mask is off).
    anchor_labels: [P] int in [0, C) where the mask is on.
    anchor_mask: [P] bool.
  """
  onehot = jax.nn.one_hot(anchor_labels, num_classes, dtype=jnp.float32)
  onehot = onehot * anchor_mask[:, None]  # [P, C]
  count = onehot.sum(axis=0)  # [C]
  total = jnp.einsum('pc,p->c', onehot, jnp.where(anchor_mask, per_anchor, 0.0))
  present = count > 0
  class_mean = jnp.where(present, total / jnp.maximum(count, 1.0), 0.0)
  return class_mean.sum() / jnp.maximum(present.sum(), 1)


def _prepare_anchors(feats, labels, mask, num_classes):
  dim = feats.shape[-1]
  feats = _normalize(feats.reshape(-1, dim))
  labels = labels.reshape(-1)
  in_range = (labels >= 0) & (labels < num_classes)
  mask = mask.reshape(-1).astype(bool) & in_range
  return feats, jnp.where(in_range, labels, 0), mask


def _negative_logsumexp(per_class_lse, labels):
  """log Σ exp over the entries of every class except the anchor's own.

  Args:
    per_class_lse: [P, C] logsumexp of the similarities to each class's valid entries
      (_MASKED where a class has none).
    labels: [P] the anchor's class.
  """
  own = jax.nn.one_hot(labels, per_class_lse.shape[-1], dtype=bool)
  return jax.nn.logsumexp(jnp.where(own, _MASKED, per_class_lse), axis=-1)


def high_level_contrastive(feats, labels, mask, bank_feats, temperature: float,
                           *, bank_valid=None):
  """HC loss (paper Eq. 6) of one student against its teacher's bank.

  For anchor i of class c and every valid entry e+ of queue c:
    l(i, e+) = -log(exp(s(i,e+)) / (exp(s(i,e+)) + Σ_{e- of the other classes} exp(s(i,e-))))
  with s = cosine similarity / temperature; averaged over the positives, then over the
  masked anchors of each class, then over the classes that have a masked anchor.

  Args:
    feats: [..., D] student features (normalised here).
    labels: [...] class of each pixel (ground truth or pseudo-label).
    mask: [...] bool, anchors to use (quality mask m_k).
    bank_feats: [C, N, D] the bank.
    temperature: tau.
    bank_valid: optional [C, N] bool; invalid entries are neither positives nor negatives,
      and anchors whose class has no valid entry are left out.
  Returns:
    scalar; 0 when no anchor qualifies.
  """
  num_classes, size, _ = bank_feats.shape
  feats, labels, mask = _prepare_anchors(feats, labels, mask, num_classes)
  if bank_valid is None:
    bank_valid = jnp.ones((num_classes, size), bool)
  bank = _normalize(bank_feats)
  sim = jnp.einsum('pd,cnd->pcn', feats, bank) / temperature  # [P, C, N]
  sim = jnp.where(bank_valid[None], sim, _MASKED)
  per_class_lse = jax.nn.logsumexp(sim, axis=-1)  # [P, C]
  neg_lse = _negative_logsumexp(per_class_lse, labels)  # [P]

  positives = jnp.take_along_axis(sim, labels[:, None, None], axis=1)[:, 0]  # [P, N]
  pos_valid = bank_valid[labels]  # [P, N]
  # -log(e^s / (e^s + e^neg)) = logaddexp(s, neg) - s
  pair_loss = jnp.logaddexp(positives, neg_lse[:, None]) - positives
  num_pos = pos_valid.sum(axis=-1)
  per_anchor = jnp.where(pos_valid, pair_loss, 0.0).sum(-1) / jnp.maximum(num_pos, 1)
  return _class_average(per_anchor, labels, mask & (num_pos > 0), num_classes)


def low_level_contrastive(feats, peer_feats, labels, mask, banks_feats, temperature: float,
                          *, bank_valid=None):
  """LC loss (paper Eq. 8) of one student against one peer.

  Positive of anchor i = the peer's feature at the same pixel (no gradient); negatives = the
  entries of every other class in all banks.

  Args:
    feats: [..., D] student features (normalised here).
    peer_feats: [..., D] the peer's features at the same pixels (stop-gradient here).
    labels: [...] class of each pixel.
    mask: [...] bool, the combined LC mask m_kl.
    banks_feats: [B, C, N, D] every pair's bank.
    temperature: tau.
    bank_valid: optional [B, C, N] bool; invalid entries are not negatives.
  Returns:
    scalar; 0 when no anchor qualifies.
  """
  num_banks, num_classes, size, dim = banks_feats.shape
  feats, labels, mask = _prepare_anchors(feats, labels, mask, num_classes)
  peer = _normalize(jax.lax.stop_gradient(peer_feats).reshape(-1, dim))
  if bank_valid is None:
    bank_valid = jnp.ones((num_banks, num_classes, size), bool)
  banks = _normalize(banks_feats)
  sim = jnp.einsum('pd,bcnd->pcbn', feats, banks) / temperature  # [P, C, B, N]
  sim = jnp.where(jnp.moveaxis(bank_valid, 0, 1)[None], sim, _MASKED)
  per_class_lse = jax.nn.logsumexp(sim.reshape(sim.shape[0], num_classes, -1), axis=-1)
  neg_lse = _negative_logsumexp(per_class_lse, labels)  # [P]
  positive = jnp.sum(feats * peer, axis=-1) / temperature  # [P]
  per_anchor = jnp.logaddexp(positive, neg_lse) - positive
  return _class_average(per_anchor, labels, mask, num_classes)
