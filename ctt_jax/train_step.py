"""The CTT train step, as the paper's Algorithm 1: `train_step(state, batch, rng, *, ...)`.

    step = make_train_step(config, model, num_labeled)   # functools.partial of train_step
    state, metrics = jax.jit(step)(state, batch, rng)

Every stage is a module-level pure function with explicit arguments: pseudo-labels
(`pseudo_labels`), strong view and mixing (`unlabeled_targets`, `strong_augment.build`), each
loss term (`supervised_losses`, `cross_teacher_losses`, `high_level_terms`,
`low_level_terms`), the EMA (`ema_decay`, `ema`) and the bank update (`push_banks`).
What differs between methods comes from the method table (`ctt_jax.methods.Method`): who
teaches whom, whether teachers follow by EMA, when the bank is pushed.
Equations are cited by their number in the paper; the comments of `train_step` number
Algorithm 1's stages.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ctt_jax import resize_normalize
from ctt_jax import losses
from ctt_jax import memory_bank
from ctt_jax import methods as methods_lib
from ctt_jax import metrics as metrics_lib
from ctt_jax import optim
from ctt_jax import stacked_networks
from ctt_jax import strong_augment
from ctt_jax.train_state import TrainState

PyTree = Any


BANK_K_RULES = ('per_labeled', 'authors')


def bank_k_per_step(config, num_labeled: int) -> int:
  """Features one class takes per push: `k_per_step` if set, else by `bank_k_rule`:
  max(1, N_L // N) ('per_labeled') or max(floor(2N / N_L), batch) ('authors', their
  `add_to_memory_bank`); at most N (a whole queue)."""
  size, num_labeled = int(config.bank_size), max(1, int(num_labeled))
  if config.k_per_step > 0:
    k = int(config.k_per_step)
  elif config.bank_k_rule == 'per_labeled':
    k = max(1, num_labeled // size)
  elif config.bank_k_rule == 'authors':
    k = max(2 * size // num_labeled, int(config.batch_size))
  else:
    raise ValueError(f'Unknown bank_k_rule {config.bank_k_rule!r}; valid: '
                     f'{", ".join(BANK_K_RULES)}.')
  return min(k, size)


def pairs_layout(config) -> str:
  return 'vmap' if config.vmap_pairs else 'unroll'


# ----------------------------------------------------------------------------------------
# The labeled and unlabeled halves of one batch
# ----------------------------------------------------------------------------------------


def join_halves(labeled, unlabeled, axis: int):
  """[labeled; unlabeled] as one batch along `axis`, interleaved image by image
  (l0, u0, l1, u1, ...); arrays or matching pytrees of arrays.

  The batch axis is the one sharded over the devices. Interleaving keeps each device's
  labeled and unlabeled images on it (stack, then a reshape that merges the sharded axis
  with the new one of size 2), where concatenating would move half of the batch between
  devices: 30-37 collective-permutes per Cityscapes CTT step on a TPU slice (docs/TPU.md).
  Batch-norm statistics and the per-pixel losses do not depend on the order.
  """
  def join(l, u):
    shape = l.shape
    return jnp.stack([l, u], axis=axis + 1).reshape(
        shape[:axis] + (2 * shape[axis],) + shape[axis + 1:])
  return jax.tree.map(join, labeled, unlabeled)


def split_halves(joined, axis: int):
  """(labeled, unlabeled): the inverse of `join_halves`, for an array or a pytree."""
  def pairs(x):
    shape = x.shape
    return x.reshape(shape[:axis] + (shape[axis] // 2, 2) + shape[axis + 1:])
  paired = jax.tree.map(pairs, joined)
  half = lambda i: jax.tree.map(
      lambda x: jax.lax.index_in_dim(x, i, axis + 1, keepdims=False), paired)
  return half(0), half(1)


# ----------------------------------------------------------------------------------------
# Pseudo-labels (Eqs. 3-4) and the strong view of the unlabeled batch
# ----------------------------------------------------------------------------------------


def pseudo_labels(logits, valid, ignore_label: int, convention: str = 'half_pixel'):
  """Softmax, confidence and class of n networks at input size, the ignore label outside
  `valid`. logits: [n, B, h, w, C]; valid: bool [B, H, W]."""
  logits_up = resize_normalize.upsample_bilinear(logits, valid.shape[-2:], convention)
  probs = jax.nn.softmax(logits_up, axis=-1)
  conf = probs.max(-1)  # [n, B, H, W]
  pred = jnp.where(valid[None], probs.argmax(-1), ignore_label)
  return probs, conf, pred


def ct_pixel_weights(pseudo_conf, valid, threshold: float, weighting: str, power: float):
  """Per-pixel weights of L_ct (Eq. 5), shaped as pseudo_conf [..., B, H, W] (one map
  per supervising network); pseudo_conf is 0 outside `valid` (broadcastable to it)."""
  if weighting == 'batch_confident_fraction':
    # ClassMix: every pixel weighted by the fraction of confident pixels of the batch.
    confident = (pseudo_conf >= threshold) & valid
    return jnp.broadcast_to(confident.mean(axis=(-3, -2, -1), keepdims=True),
                            pseudo_conf.shape)
  if weighting == 'confidence_power':
    # The authors' code's pixel_weight='threshold' (power 6 there): each pixel by its own
    # confidence, so the unsure pixels, where most wrong pseudo-labels are, weigh little.
    return pseudo_conf ** power
  if weighting == 'none':
    return jnp.ones_like(pseudo_conf)
  raise ValueError(f'Unknown ct_weighting {weighting!r}; valid: batch_confident_fraction, '
                   'confidence_power, none.')


def pseudo_label_confusion(pred, truth, valid, num_classes: int, ignore_label: int):
  """int32 [n, C, C]: each network's pseudo-labels against the unlabeled images' ground
  truth (a diagnostic only: rows = truth). pred: [n, B, H, W]; truth, valid: [B, H, W]."""
  score = functools.partial(metrics_lib.confusion_matrix, label=truth, valid=valid,
                            num_classes=num_classes, ignore_label=ignore_label)
  return jax.vmap(score)(pred)


MIX_MASKS = ('shared', 'per_student')


def strong_views(rng, images_01, probs, valid, *, teachers_of, config):
  """The students' strong views and their ClassMix / CutMix masks.

  probs: [n, B, H, W, C] softmax of the pseudo-labelling networks on the weak view.
  `classmix_mask='shared'`: one view for all students, its ClassMix classes from every
  network's mean softmax; returns (images [B, H, W, 3], masks [S, B, H, W], the same mask
  repeated). 'per_student' (the authors' code): student k's view is mixed by classes of the
  networks that teach it, with its own jitter/blur draws; returns (images [S, B, H, W, 3],
  masks [S, B, H, W]).
  """
  build = functools.partial(strong_augment.build, kind=config.unlabeled_aug,
                            aug=config.strong_aug, num_classes=config.num_classes,
                            classes_rounding=config.classmix_classes)
  num_students = len(teachers_of)
  if config.classmix_mask == 'shared':
    strong, mask = build(rng, images_01, probs.mean(0), valid)
    return strong, jnp.broadcast_to(mask, (num_students,) + mask.shape)
  if config.classmix_mask == 'per_student':
    views = [build(jax.random.fold_in(rng, k), images_01, probs[np.asarray(t)].mean(0), valid)
             for k, t in enumerate(teachers_of)]
    return jnp.stack([v[0] for v in views]), jnp.stack([v[1] for v in views])
  raise ValueError(f'Unknown classmix_mask {config.classmix_mask!r}; valid: '
                   f'{", ".join(MIX_MASKS)}.')


def mix_for_students(masks, values, teachers_of):
  """Each student's supervising maps, mixed by its mask: [S, m, B, H, W], entry [k, i] =
  values[teachers_of[k][i]] mixed by masks[k]. values: [n, B, H, W]; masks: [S, B, H, W]."""
  return jnp.stack([strong_augment.mix_stacked(masks[k], values[np.asarray(t)])
                    for k, t in enumerate(teachers_of)])


def unlabeled_targets(pseudo_out, images_01, valid, rng, *, teachers_of, config, truth=None):
  """Strong views of the unlabeled batch and each student's mixed pseudo-labels (Eq. 5).

  pseudo_out: the pseudo-labelling networks' outputs on the weak view, [n, B, ...].
  truth: the unlabeled images' labels [B, H, W] if the data has them, for the
  `pseudo_confusion` diagnostic; they never reach a loss.
  Returns (strong images in [0, 1] (`strong_views`), targets {pseudo, pseudo_conf,
  ct_weight: [S, m, B, H, W], student k's maps from the m networks that teach it},
  metrics).
  """
  ignore = config.ignore_label
  probs, conf, pred = pseudo_labels(pseudo_out['logits'], valid, ignore,
                                    config.resize_convention)
  strong, masks = strong_views(rng, images_01, probs, valid, teachers_of=teachers_of,
                               config=config)
  valid_mix = jax.vmap(strong_augment.mix, in_axes=(0, None))(masks, valid)[:, None]
  pseudo = jnp.where(valid_mix, mix_for_students(masks, pred, teachers_of), ignore)
  pseudo_conf = jnp.where(valid_mix, mix_for_students(masks, conf, teachers_of), 0.0)
  ct_weight = ct_pixel_weights(pseudo_conf, valid_mix, config.ct_confidence_threshold,
                               config.ct_weighting, config.ct_confidence_power)
  n = conf.shape[0]
  metrics = {
      'pseudo_label_confidence': jnp.sum(conf * valid[None]) / jnp.maximum(n * valid.sum(),
                                                                           1),
      'ct_weight': ct_weight.mean()}
  if truth is not None:
    metrics['pseudo_confusion'] = pseudo_label_confusion(
        pred, truth.astype(jnp.int32), valid, config.num_classes, ignore)
  targets = {'pseudo': pseudo, 'pseudo_conf': pseudo_conf, 'ct_weight': ct_weight}
  return strong, targets, metrics


# ----------------------------------------------------------------------------------------
# Loss terms (Eqs. 2 and 5-10)
# ----------------------------------------------------------------------------------------


def supervised_losses(logits_up, labels, ignore_label: int) -> list:
  """L_sup of each student (Eq. 2): logits_up [n, B, H, W, C] on the labeled images."""
  return [losses.cross_entropy(logits_up[k], labels, ignore_label=ignore_label)
          for k in range(logits_up.shape[0])]


def cross_teacher_losses(logits_up, pseudo, ct_weight, ignore_label: int):
  """L_ct of each student (Eq. 5): mean CE against the networks that teach it.

  logits_up: [S, B, H, W, C] on the strong views; pseudo, ct_weight: [S, m, B, H, W],
  student k's maps from the m networks that teach it (`unlabeled_targets`).
  """
  per_student = []
  for k in range(pseudo.shape[0]):
    terms = [losses.cross_entropy(logits_up[k], pseudo[k, i], weights=ct_weight[k, i],
                                  ignore_label=ignore_label) for i in range(pseudo.shape[1])]
    per_student.append(sum(terms) / len(terms))
  return per_student


def contrastive_classes(pred_small, conf_small, labels_small):
  """(class, supervising confidence) of each pixel for each student's contrastive terms
  (Eqs. 6-8): [S, 2B, h, w] each, the halves joined as the students' outputs are
  (`join_halves`).

  Ground truth (confidence 1) on the labeled half; on the unlabeled half the pseudo-label
  and confidence of the most confident of the m networks that teach student k.
  pred_small, conf_small: [S, m, B, h, w]; labels_small: [B, h, w].
  """
  best = jnp.argmax(conf_small, axis=1)[:, None]  # [S, 1, B, h, w]
  unlabeled = jnp.take_along_axis(pred_small, best, axis=1)[:, 0]
  unlabeled_conf = jnp.take_along_axis(conf_small, best, axis=1)[:, 0]
  labeled = jnp.broadcast_to(labels_small, unlabeled.shape)
  return (join_halves(labeled, unlabeled, axis=1),
          join_halves(jnp.ones_like(unlabeled_conf), unlabeled_conf, axis=1))


ANCHOR_RULES = ('student', 'teacher')


def contrastive_anchors(student_conf, teacher_conf, has_class, *, rule: str, phi: float):
  """The quality mask m_k (Eq. 7), HC's anchors; LC's anchors are the other pixels with a
  class. 'student': student k's own confidence > phi; 'teacher' (the authors' code): every
  labeled pixel and the unlabeled pixels whose supervising confidence is >= phi."""
  if rule == 'student':
    return (student_conf > phi) & has_class
  if rule == 'teacher':
    return (teacher_conf >= phi) & has_class
  raise ValueError(f'Unknown contrastive_anchors {rule!r}; valid: {", ".join(ANCHOR_RULES)}.')


def high_level_terms(feats, classes, quality, banks, bank_valid, temperature: float):
  """Σ_k HC_k (Eq. 6): student k's confident pixels against its own teacher's bank."""
  return sum(losses.high_level_contrastive(feats[k], classes[k], quality[k], banks.feats[k],
                                           temperature, bank_valid=bank_valid[k])
             for k in range(feats.shape[0]))


def low_level_terms(feats, classes, quality, has_class, conf, banks, bank_valid,
                    temperature: float, directional: bool, peer_classes=None):
  """(Σ_k LC_k, mean mask fraction) (Eqs. 8-9): unsure pixels of student k learn from each
  peer l's feature at the same pixel; negatives from all banks. peer_classes [n, 2B, h, w]:
  with `lc_class='peer_student'`, the anchor's class is peer l's own prediction there."""
  n = feats.shape[0]
  total, fraction = 0.0, 0.0
  for k in range(n):
    peers = [l for l in range(n) if l != k]
    terms = []
    for l in peers:
      mask = ~quality[k] & has_class[k]
      if directional:
        mask = mask & (conf[k] < conf[l])
      fraction = fraction + mask.mean() / (n * len(peers))
      anchor_classes = classes[k] if peer_classes is None else peer_classes[l]
      terms.append(losses.low_level_contrastive(feats[k], feats[l], anchor_classes, mask,
                                                banks.feats, temperature,
                                                bank_valid=bank_valid))
    total = total + sum(terms) / len(terms)
  return total, fraction


def contrastive_gate(banks, step, start_step: int):
  """1.0 once every queue of every bank is full, or from `start_step` (>= 0): HC and LC
  count in Eq. 10 only then (an empty queue has no entries to contrast with)."""
  gate = memory_bank.is_full(banks)
  if start_step >= 0:
    gate = gate | (step >= start_step)
  return gate.astype(jnp.float32)


LC_CLASSES = ('pseudo_label', 'peer_student')


def contrastive_losses(logits, feats, targets, banks, step, *, method, config):
  """([gated, weighted HC, LC], metrics) for the students' outputs; the caller adds the
  terms to the loss one by one (Eq. 10's order)."""
  size = logits.shape[-3:-1]
  resize = functools.partial(resize_normalize.resize_labels_nearest, size=size,
                             convention=config.resize_convention)
  probs = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
  conf = probs.max(-1)  # [n, 2B, h, w]
  classes, teacher_conf = contrastive_classes(
      resize(targets['pseudo']), resize(targets['pseudo_conf']), resize(targets['labels']))
  has_class = (classes >= 0) & (classes < config.num_classes)
  quality = contrastive_anchors(conf, teacher_conf, has_class,
                                rule=config.contrastive_anchors, phi=config.phi)
  bank_valid = memory_bank.valid_entries(banks)  # [n, C, N]
  gate = contrastive_gate(banks, step, config.contrastive_start_step)
  metrics, terms = {'contrastive_active': gate}, []
  if method.use_hc:
    l_hc = high_level_terms(feats, classes, quality, banks, bank_valid, config.hc_temperature)
    metrics.update(loss_hc=l_hc, hc_mask_fraction=quality.mean())
    terms.append(gate * config.lambda_hc * l_hc)
  if method.use_lc:
    if config.lc_class not in LC_CLASSES:
      raise ValueError(f'Unknown lc_class {config.lc_class!r}; valid: '
                       f'{", ".join(LC_CLASSES)}.')
    peer_classes = probs.argmax(-1) if config.lc_class == 'peer_student' else None
    l_lc, lc_fraction = low_level_terms(feats, classes, quality, has_class, conf, banks,
                                        bank_valid, config.lc_temperature,
                                        config.directional_mask, peer_classes)
    metrics.update(loss_lc=l_lc, lc_mask_fraction=lc_fraction)
    terms.append(gate * config.lambda_lc * l_lc)
  return terms, metrics


def run_students(params, batch_stats, x_labeled, x_strong, dropout_rng, *, model, config):
  """Students in train mode on the labeled and the strong (mixed, jittered, blurred)
  unlabeled batch: (outputs [n, B|2B, ...], new batch_stats).

  `student_bn_passes='separate'` runs the two batches as two passes, as the authors'
  code does: with trained batch-norm each is normalised by its own statistics, and the
  running statistics (what the teachers average) see both in turn. `'joint'` runs one
  pass over both (`join_halves`). With frozen batch-norm the two agree. Every student
  and pass draws its own dropout masks from `dropout_rng`. x_strong is one view for all
  students [B, H, W, 3] or one per student [S, B, H, W, 3] (`strong_views`).
  """
  apply = functools.partial(stacked_networks.apply, model, train=True, how=pairs_layout(config))
  per_student = x_strong is not None and x_strong.ndim == x_labeled.ndim + 1
  if x_strong is None or config.student_bn_passes == 'joint':
    if x_strong is None:
      inputs = x_labeled
    elif per_student:
      inputs = join_halves(jnp.broadcast_to(x_labeled, x_strong.shape), x_strong, axis=1)
    else:
      inputs = join_halves(x_labeled, x_strong, axis=0)
    return apply(params, batch_stats, inputs, dropout_rng=dropout_rng,
                 images_per_network=per_student)
  out_l, stats = apply(params, batch_stats, x_labeled,
                       dropout_rng=jax.random.fold_in(dropout_rng, 0))
  out_u, stats = apply(params, stats, x_strong, dropout_rng=jax.random.fold_in(dropout_rng, 1),
                       images_per_network=per_student)
  return join_halves(out_l, out_u, axis=1), stats


def loss_fn(params, batch_stats, banks, step, x_labeled, x_strong, targets, dropout_rng, *,
            model, method, config):
  """Eq. 10 for every student: (loss, (metrics, new batch_stats)).

  x_labeled: [B, H, W, 3]; x_strong: the strong unlabeled view(s) [B, H, W, 3] or
  [S, B, H, W, 3] (`run_students`), or None for the supervised method.
  """
  out, new_stats = run_students(params, batch_stats, x_labeled, x_strong, dropout_rng,
                                model=model, config=config)
  logits, feats = out['logits'], out['features']  # [n, B|2B, h, w, ...]
  logits_up = resize_normalize.upsample_bilinear(logits, targets['labels'].shape[-2:],
                                                 config.resize_convention)
  if method.semi_supervised:
    logits_l, logits_u = split_halves(logits_up, axis=1)
  else:
    logits_l = logits_up
  sup = supervised_losses(logits_l, targets['labels'], config.ignore_label)
  metrics = {'loss_sup': sum(sup), **{f'loss_sup/{k}': v for k, v in enumerate(sup)}}
  total = config.lambda_sup * metrics['loss_sup']
  if not method.semi_supervised:
    return total, (metrics, new_stats)
  if method.use_ct:
    ct = cross_teacher_losses(logits_u, targets['pseudo'], targets['ct_weight'],
                              config.ignore_label)
    metrics.update(loss_ct=sum(ct), **{f'loss_ct/{k}': v for k, v in enumerate(ct)})
    total = total + config.lambda_ct * metrics['loss_ct']
  if method.use_hc or method.use_lc:
    terms, contrastive_metrics = contrastive_losses(
        logits, feats, targets, banks, step, method=method, config=config)
    metrics.update(contrastive_metrics)
    for term in terms:
      total = total + term
  return total, (metrics, new_stats)


# ----------------------------------------------------------------------------------------
# Teachers (EMA of the students) and memory banks (one per pair)
# ----------------------------------------------------------------------------------------


def ema_decay(step, max_decay: float, ema_teachers: bool):
  """min(1 - 1/(step+1), max_decay); 1 (teachers fixed) when the method has no EMA."""
  step_f = step.astype(jnp.float32)
  decay = jnp.minimum(1.0 - 1.0 / (step_f + 1.0), max_decay)
  return decay if ema_teachers else jnp.ones_like(decay)


def ema(teacher: PyTree, student: PyTree, decay) -> PyTree:
  return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


BANK_SCORES = ('softmax', 'logit')


def push_banks(banks, teacher_out, labels, *, k: int, config):
  """Teacher k's confident labeled features into bank k (the paper's Feature Selection
  Criteria, section 3.3: from the EMA teacher, labeled pixels it predicts correctly, the
  most confident first).

  teacher_out: {'logits': [n, B, h, w, C], 'features': [n, B, h, w, D]} on the weak
  labeled batch; labels: [B, H, W]. Candidates are pixels the teacher predicts correctly
  whose score (max softmax, or max raw logit with `bank_score='logit'` as the authors'
  code) is >= bank_min_score; the highest scores are taken first.
  """
  logits, feats = teacher_out['logits'], teacher_out['features']
  n, (h, w) = logits.shape[0], logits.shape[-3:-1]
  gt = resize_normalize.resize_labels_nearest(labels, (h, w), config.resize_convention)  # [B, h, w]
  if config.bank_score == 'softmax':
    score = jax.nn.softmax(logits, axis=-1).max(-1)
  elif config.bank_score == 'logit':
    score = logits.max(-1)
  else:
    raise ValueError(f'Unknown bank_score {config.bank_score!r}; valid: '
                     f'{", ".join(BANK_SCORES)}.')
  pred = logits.argmax(-1)
  is_candidate = (pred == gt[None]) & (score >= config.bank_min_score)
  candidates = jnp.where(is_candidate, gt[None], config.ignore_label)  # [n, B, h, w]
  dim = feats.shape[-1]
  feats = feats / jnp.maximum(jnp.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
  push = jax.vmap(functools.partial(memory_bank.push, k=k))
  return push(banks, feats.reshape(n, -1, dim), candidates.reshape(n, -1),
              score.reshape(n, -1))


def predict_eval_mode(model, params, batch_stats, images, config):
  """Outputs of stacked networks in eval mode (running statistics), no gradient."""
  out, _ = stacked_networks.apply(model, params, batch_stats, images, train=False,
                                  how=pairs_layout(config))
  return jax.lax.stop_gradient(out)


TEACHER_MODES = ('eval', 'train')


def teach(model, params, batch_stats, images, rng, config):
  """Outputs of the pseudo-labelling networks (teachers, or the students for `mutual`),
  no gradient: in eval mode, or with `teacher_mode='train'` as the authors' code runs
  its EMA teachers: batch statistics and dropout (drawn from `rng`) on, the running
  statistics left as they are (they follow the students' by EMA)."""
  if config.teacher_mode == 'eval':
    return predict_eval_mode(model, params, batch_stats, images, config)
  if config.teacher_mode == 'train':
    out, _ = stacked_networks.apply(model, params, batch_stats, images, train=True,
                                    how=pairs_layout(config), dropout_rng=rng)
    return jax.lax.stop_gradient(out)
  raise ValueError(f'Unknown teacher_mode {config.teacher_mode!r}; valid: '
                   f'{", ".join(TEACHER_MODES)}.')


def update_networks_and_banks(state: TrainState, grads, new_stats, banks, x_labeled,
                              labels, teacher_rng, *, model, method, tx, config,
                              bank_k) -> TrainState:
  """Algorithm 1's stages 6-7: SGD update of the students, EMA teachers (fixed teachers are
  left as they are), then the updated teachers' labeled features into the banks (after
  the EMA update, so that the banks hold the features of the teachers of this step)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = jax.tree.map(lambda p, u: p + u, state.params, updates)
  teacher_params, teacher_stats = state.teacher_params, state.teacher_batch_stats
  if method.ema_teachers:
    decay = ema_decay(state.step, config.ema_decay, ema_teachers=True)
    teacher_params = ema(teacher_params, params, decay)
    teacher_stats = ema(teacher_stats, new_stats, decay)
  if method.semi_supervised and method.bank_push == 'after_update':
    teacher_out = teach(model, teacher_params, teacher_stats, x_labeled, teacher_rng, config)
    banks = push_banks(banks, teacher_out, labels, k=bank_k, config=config)
  return state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                       teacher_params=teacher_params, teacher_batch_stats=teacher_stats,
                       opt_state=opt_state, banks=banks)


def keep_state(state: TrainState, *unused) -> TrainState:
  """The other branch of the finite check: nothing changes."""
  del unused
  return state


# ----------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------


def train_step(state: TrainState, batch: dict[str, Any], rng, *, model,
               method: methods_lib.Method, tx, config: ml_collections.ConfigDict,
               bank_k: int) -> tuple[TrainState, dict[str, Any]]:
  """One step of Algorithm 1 for every method of the table; pure and jit-able.

  batch: docs/INTERFACES.md's train batch. A non-finite loss leaves the state unchanged
  and reports `loss_finite` = 0; the training loop stops on it.
  """
  view_rng, dropout_rng = jax.random.split(rng)
  # Dropout of the teachers in train mode: one key for the pseudo-labels, one for the bank.
  pseudo_rng, bank_rng = jax.random.fold_in(rng, 2), jax.random.fold_in(rng, 3)
  unit = resize_normalize.to_unit_range
  norm = resize_normalize.normalizer(config)
  x_l, labels = norm(unit(batch['labeled']['image'])), batch['labeled']['label'].astype(
      jnp.int32)
  targets, x_strong, banks, metrics = {'labels': labels}, None, state.banks, {}
  if method.semi_supervised:
    images_u, valid = unit(batch['unlabeled']['image']), batch['unlabeled']['valid'].astype(
        bool)
    # 1. Pseudo-labels: the teachers (the peers for `mutual`) on the weak view of xu. In
    #    the paper's order the same pass also runs the labeled batch for the bank (step 7).
    if method.pseudo_labels_from == 'students':
      teaching_params, teaching_stats = state.params, state.batch_stats
    else:
      teaching_params, teaching_stats = state.teacher_params, state.teacher_batch_stats
    before = method.bank_push == 'before_update'
    weak = join_halves(x_l, norm(images_u), axis=0) if before else norm(images_u)
    pseudo_out = teach(model, teaching_params, teaching_stats, weak, pseudo_rng, config)
    if before:
      labeled_out, pseudo_out = split_halves(pseudo_out, axis=1)
      banks = push_banks(banks, labeled_out, labels, k=bank_k, config=config)
    # 2. Strong view (jitter, blur, the ClassMix masks: one per image shared by all
    #    students, or one per student) and each student's pseudo-labels mixed by its mask.
    strong, unlabeled, unlabeled_metrics = unlabeled_targets(
        pseudo_out, images_u, valid, view_rng, teachers_of=method.teachers_of,
        config=config, truth=batch['unlabeled'].get('label'))
    targets.update(unlabeled)
    metrics.update(unlabeled_metrics)
    x_strong = norm(strong)
  # 3-5. Students on xl and the strong xu: L_sup, L_ct, HC, LC (Eq. 10), their gradient.
  (loss, (loss_metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats, banks, state.step, x_l, x_strong, targets,
      dropout_rng, model=model, method=method, config=config)
  # 6-7. Only a finite loss is committed: the update, the teachers and the banks run
  #    inside the taken branch, so a finite step pays nothing for the check; otherwise the
  #    state stays as it was (banks included) and the training loop stops on the flag.
  finite = jnp.isfinite(loss)
  commit = functools.partial(update_networks_and_banks, model=model, method=method, tx=tx,
                             config=config, bank_k=bank_k)
  new_state = jax.lax.cond(finite, commit, keep_state, state, grads, new_stats, banks, x_l,
                           labels, bank_rng)
  metrics.update(loss_metrics)
  metrics.update(
      loss=loss, loss_finite=finite.astype(jnp.float32),
      lr=optim.poly_schedule(config, config.lr)(state.step),
      ema_decay=ema_decay(state.step, config.ema_decay, method.ema_teachers),
      bank_fill=memory_bank.fill_fraction(new_state.banks),
      grad_norm=optim.trained_grad_norm(grads, bool(config.model.freeze_bn)))
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, model, num_labeled: int):
  """`train_step` with its static dependencies bound: (state, batch, rng) -> (state,
  metrics). num_labeled sets the bank's k_per_step."""
  return functools.partial(
      train_step, model=model, method=methods_lib.from_config(config),
      tx=optim.make_optimizer(config), config=config,
      bank_k=bank_k_per_step(config, num_labeled))
