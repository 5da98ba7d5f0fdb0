"""Per-class FIFO memory bank of confident labeled features, as a fixed-shape ring buffer.

One bank per student-teacher pair, `feats [C, N, D]`, a write pointer
and a fill count per class. `push` selects up to `k` candidates per class (highest score
first, ranked in two stages so that a batch-sharded candidate row is not gathered whole)
and writes them at the pointer, wrapping. All shapes are static and the writes are
masked, so the update jits once and runs on device with no host round trip.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class MemoryBank:
  feats: jax.Array  # [C, N, D] stored (L2-normalised) features
  ptr: jax.Array  # [C] int32, next slot to write in each queue
  count: jax.Array  # [C] int32, how many slots hold a feature (<= N)

  @property
  def size(self) -> int:
    return self.feats.shape[-2]


def create(num_classes: int, size: int, dim: int, dtype=jnp.float32) -> MemoryBank:
  return MemoryBank(
      feats=jnp.zeros((num_classes, size, dim), dtype),
      ptr=jnp.zeros((num_classes,), jnp.int32),
      count=jnp.zeros((num_classes,), jnp.int32))


# A group of the two-stage ranking holds at least this many candidates (one 16x16 output
# map); fewer would leave the second stage about as large as the first.
MIN_GROUP = 256


def ranking_groups(num_candidates: int, k: int) -> int:
  """How many contiguous groups the candidates are ranked in (the first stage of `top_k`).

  The largest power of two that divides P and leaves groups of >= max(k, MIN_GROUP). The
  candidates are the flattened [B, h, w] of a batch sharded over D devices along the batch
  (D a power of two dividing B): such a group count is a multiple of D, so every group
  lies on one device and the first stage needs no communication. With image rows sharded
  too (`mesh.space` > 1) a group may span devices: the result is the same, only the
  partitioner moves more of the candidates.
  """
  groups = 1
  while (num_candidates % (2 * groups) == 0
         and num_candidates // (2 * groups) >= max(k, MIN_GROUP)):
    groups *= 2
  return groups


def top_k_two_stage(ranked: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """`jax.lax.top_k(ranked, k)` over the last axis, ranked first within contiguous groups.

  Same values and indices as one top_k, ties included (the lower index first): the k best
  of the whole row are among the k best of their group, and the second stage sees the
  groups' winners in index order. On a sharded row only the groups' winners ([..., G * k])
  cross devices, instead of the whole row of scores and its index iota.
  """
  *lead, size = ranked.shape
  groups = ranking_groups(size, k)
  group_size = size // groups
  k_group = min(k, group_size)
  scores, local = jax.lax.top_k(ranked.reshape(*lead, groups, group_size), k_group)
  offsets = (jnp.arange(groups, dtype=local.dtype) * group_size)[:, None]
  scores = scores.reshape(*lead, groups * k_group)
  index = (local + offsets).reshape(*lead, groups * k_group)
  top_scores, pick = jax.lax.top_k(scores, k)
  return top_scores, jnp.take_along_axis(index, pick, axis=-1)


def push(bank: MemoryBank, feats: jax.Array, labels: jax.Array, scores: jax.Array,
         k: int) -> MemoryBank:
  """Writes up to `k` candidates per class into their queues.

  Args:
    bank: the bank (leading dims [C, N, D]).
    feats: [P, D] candidate features.
    labels: [P] class of each candidate; any value outside [0, C) (e.g. 255) is no candidate.
    scores: [P] ranking key; the highest-scoring candidates of a class are taken first and
      written in that order.
    k: static, the most entries one class takes per push (1 <= k <= N).
  Returns:
    The updated bank.
  """
  num_classes, size, _ = bank.feats.shape
  if not 1 <= k <= size:
    raise ValueError(f'k_per_step must be in [1, bank_size={size}], got {k}.')
  k = min(k, feats.shape[0])
  classes = jnp.arange(num_classes, dtype=labels.dtype)
  is_candidate = labels[None, :] == classes[:, None]  # [C, P]
  # -inf marks "not a candidate of this class"; top_k puts those last.
  ranked = jnp.where(is_candidate, scores[None, :].astype(jnp.float32), -jnp.inf)
  top_scores, top_idx = top_k_two_stage(ranked, k)  # [C, k], sorted descending
  take = jnp.isfinite(top_scores)  # [C, k]; the first `taken` slots of each row are True
  taken = take.sum(axis=1).astype(jnp.int32)  # [C]

  slots = (bank.ptr[:, None] + jnp.arange(k, dtype=jnp.int32)[None, :]) % size  # [C, k]
  new = feats[top_idx].astype(bank.feats.dtype)  # [C, k, D]
  rows = jnp.broadcast_to(classes[:, None], slots.shape).astype(jnp.int32)
  old = bank.feats[rows, slots]  # [C, k, D]
  # Slots of a row are distinct (k <= N), so this scatter has no conflicting writes;
  # rows with fewer candidates write their old values back.
  updated = bank.feats.at[rows, slots].set(jnp.where(take[..., None], new, old))
  return MemoryBank(
      feats=updated,
      ptr=(bank.ptr + taken) % size,
      count=jnp.minimum(bank.count + taken, size))


def valid_entries(bank: MemoryBank) -> jax.Array:
  """[..., C, N] bool: which slots hold a feature (a queue fills from slot 0 up)."""
  return jnp.arange(bank.size)[None, :] < bank.count[..., :, None]


def is_full(bank: MemoryBank) -> jax.Array:
  """True when every queue (of every stacked bank) holds N entries."""
  return jnp.all(bank.count >= bank.size)


def fill_fraction(bank: MemoryBank) -> jax.Array:
  """Mean fill of the queues, in [0, 1]."""
  return jnp.mean(bank.count.astype(jnp.float32)) / bank.size
