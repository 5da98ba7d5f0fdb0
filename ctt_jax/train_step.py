"""The CTT train step: a pure function (state, batch, rng) -> (state, metrics).

One step, for every method of SPEC's table (`supervised`, `mean_teacher`, `mutual`,
`dual_teacher`, `ctt`, `ensemble`, `self_training`) and any number of pairs:

1. the pseudo-labelling networks (teachers; the students themselves for `mutual`) predict
   on the weak unlabeled view;
2. the strong view is built on device: colour jitter + blur, then one ClassMix/CutMix mask
   per image shared by all students, which also mixes the pseudo-labels;
3. each student sees [labeled; strong unlabeled] in one forward pass; losses L_sup, L_ct,
   HC and LC (SPEC items 1-9);
4. SGD update, EMA teachers, then the banks take the teachers' confident labeled features.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ctt_jax import losses
from ctt_jax import memory_bank
from ctt_jax import optim
from ctt_jax import strong_view
from ctt_jax.train_state import TrainState, tree_index, tree_stack

METHODS = ('supervised', 'mean_teacher', 'mutual', 'dual_teacher', 'ctt', 'ensemble',
           'self_training')
UNLABELED_AUGS = ('classmix', 'cutmix', 'none')


def pseudo_label_sources(method: str, num_pairs: int) -> list[list[int]]:
  """Which pseudo-labelling networks teach student k on unlabeled data (SPEC table)."""
  everyone = list(range(num_pairs))
  if method == 'supervised':
    return [[] for _ in everyone]
  if method in ('mean_teacher', 'ensemble', 'self_training'):
    return [[k] for k in everyone]
  if method == 'dual_teacher':
    return [everyone for _ in everyone]
  if method in ('ctt', 'mutual'):
    # With one pair there is no other network: it falls back to its own (mean teacher).
    return [[j for j in everyone if j != k] or [k] for k in everyone]
  raise ValueError(f'Unknown method {method!r}; valid methods: {", ".join(METHODS)}.')


def bank_k_per_step(config, num_labeled: int) -> int:
  """SPEC: k = max(1, N_L // N) unless the config sets it; at most N (a whole queue)."""
  if config.k_per_step > 0:
    k = int(config.k_per_step)
  else:
    k = max(1, int(num_labeled) // int(config.bank_size))
  return min(k, int(config.bank_size))


def resize_labels_nearest(labels, size):
  """Nearest-neighbour resize of [..., H, W] labels to [..., h, w] (pixel-centre sampling)."""
  height, width = labels.shape[-2:]
  h, w = size
  if (h, w) == (height, width):
    return labels
  rows = jnp.floor((jnp.arange(h) + 0.5) * height / h).astype(jnp.int32)
  cols = jnp.floor((jnp.arange(w) + 0.5) * width / w).astype(jnp.int32)
  return labels[..., rows, :][..., cols]


def upsample_bilinear(logits, size):
  """[..., h, w, C] -> [..., H, W, C], half-pixel centres (PyTorch align_corners=False)."""
  shape = logits.shape[:-3] + tuple(size) + logits.shape[-1:]
  return jax.image.resize(logits, shape, method='bilinear')


def normalize_images(images_01, config):
  mean = jnp.asarray(config.image_mean, jnp.float32)
  std = jnp.asarray(config.image_std, jnp.float32)
  return (images_01 - mean) / std


def _check_config(config):
  if config.method not in METHODS:
    raise ValueError(f'Unknown method {config.method!r}; valid: {", ".join(METHODS)}.')
  if config.unlabeled_aug not in UNLABELED_AUGS:
    raise ValueError(f'Unknown unlabeled_aug {config.unlabeled_aug!r}; valid: '
                     f'{", ".join(UNLABELED_AUGS)}.')
  if config.ct_weighting not in ('batch_confident_fraction', 'none'):
    raise ValueError(f'Unknown ct_weighting {config.ct_weighting!r}; valid: '
                     'batch_confident_fraction, none.')
  if config.bank_push not in ('after_update', 'before_update', 'none'):
    raise ValueError(f'Unknown bank_push {config.bank_push!r}; valid: after_update, '
                     'before_update, none.')
  if config.num_pairs < 1:
    raise ValueError(f'num_pairs must be >= 1, got {config.num_pairs}.')


class _Pairs:
  """Runs one Flax model for n stacked variable sets (vmapped or unrolled)."""

  def __init__(self, model, num_pairs: int, use_vmap: bool):
    self.model, self.n, self.use_vmap = model, num_pairs, use_vmap

  def __call__(self, params, batch_stats, images, train: bool):
    """Returns (outputs stacked [n, ...], new batch_stats stacked)."""
    def one(p, bs):
      variables = {'params': p, 'batch_stats': bs}
      if train:
        out, updates = self.model.apply(variables, images, train=True,
                                        mutable=['batch_stats'])
        return out, updates.get('batch_stats', bs)
      return self.model.apply(variables, images, train=False), bs

    if self.use_vmap:
      return jax.vmap(one)(params, batch_stats)
    results = [one(tree_index(params, k), tree_index(batch_stats, k)) for k in range(self.n)]
    return tree_stack([r[0] for r in results]), tree_stack([r[1] for r in results])


def _ema(teacher, student, decay):
  return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


def make_train_step(config: ml_collections.ConfigDict, model, num_labeled: int):
  """Builds the (un-jitted) step. `step.trace_count[0]` counts how often it was traced."""
  _check_config(config)
  n = int(config.num_pairs)
  method = config.method
  num_classes = int(config.num_classes)
  ignore = int(config.ignore_label)
  sources = pseudo_label_sources(method, n)
  semi = method != 'supervised'
  use_ct = semi and config.use_ct
  use_hc = semi and config.use_hc
  use_lc = semi and config.use_lc and n > 1
  bank_k = bank_k_per_step(config, num_labeled)
  tx = optim.make_optimizer(config)
  lr_schedule = optim.poly_schedule(config, config.lr)
  pairs = _Pairs(model, n, bool(config.vmap_pairs))
  sa = config.strong_aug
  trace_count = [0]

  def pseudo_labels(state, images_weak, valid):
    """Predictions of the pseudo-labelling networks on the weak view, at input size."""
    if method == 'mutual':
      params, stats = state.params, state.batch_stats  # peers teach, not teachers
    else:
      params, stats = state.teacher_params, state.teacher_batch_stats
    out, _ = pairs(params, stats, images_weak, train=False)
    out = jax.lax.stop_gradient(out)
    probs = jax.nn.softmax(upsample_bilinear(out['logits'], valid.shape[-2:]), axis=-1)
    conf = probs.max(-1)  # [n, B, H, W]
    pred = jnp.where(valid[None], probs.argmax(-1), ignore)
    return probs, conf, pred, out

  def strong_batch(rng, images01, probs, valid):
    """Strong view, and the mixing mask shared by every student."""
    k_jit, k_blur, k_mix = jax.random.split(rng, 3)
    strong = strong_view.color_jitter(
        k_jit, images01, brightness=sa.brightness, contrast=sa.contrast,
        saturation=sa.saturation, hue=sa.hue, prob=sa.color_jitter_prob)
    strong = strong_view.gaussian_blur(k_blur, strong, prob=sa.blur_prob,
                                       sigma_min=sa.blur_sigma_min,
                                       sigma_max=sa.blur_sigma_max)
    batch, height, width = valid.shape
    if config.unlabeled_aug == 'classmix':
      class_map = jnp.where(valid, probs.mean(0).argmax(-1), -1)
      mask = strong_view.classmix_masks(k_mix, class_map, num_classes)
    elif config.unlabeled_aug == 'cutmix':
      mask = strong_view.cutmix_masks(k_mix, batch, height, width, sa.cutmix_area)
    else:
      mask = jnp.ones(valid.shape, bool)
    return strong_view.mix(mask, strong), mask

  def contrastive_classes(pred_small, conf_small, labels_small):
    """Class of each pixel for student k's contrastive terms (SPEC item 5): [n, 2B, h, w]."""
    per_student = []
    for k in range(n):
      src = jnp.asarray(sources[k])
      best = jnp.argmax(conf_small[src], axis=0)  # most confident of k's teachers
      unl = jnp.take_along_axis(pred_small[src], best[None], axis=0)[0]
      per_student.append(jnp.concatenate([labels_small, unl], axis=0))
    return jnp.stack(per_student)

  def loss_fn(params, state, inputs, targets):
    out, new_stats = pairs(params, state.batch_stats, inputs, train=True)
    logits, feats = out['logits'], out['features']  # [n, 2B|B, h, w, ...]
    b = targets['labels'].shape[0]
    height, width = targets['labels'].shape[-2:]
    logits_up = upsample_bilinear(logits, (height, width))
    metrics = {}
    sup = [losses.cross_entropy(logits_up[k, :b], targets['labels'], ignore_label=ignore)
           for k in range(n)]
    l_sup = sum(sup)
    metrics['loss_sup'] = l_sup
    metrics.update({f'loss_sup/{k}': sup[k] for k in range(n)})
    total = config.lambda_sup * l_sup
    if not semi:
      return total, (metrics, new_stats)

    if use_ct:
      ct = []
      for k in range(n):
        terms = [losses.cross_entropy(logits_up[k, b:], targets['pseudo'][j],
                                      weights=targets['ct_weight'][j], ignore_label=ignore)
                 for j in sources[k]]
        ct.append(sum(terms) / len(terms))
      l_ct = sum(ct)
      metrics['loss_ct'] = l_ct
      metrics.update({f'loss_ct/{k}': ct[k] for k in range(n)})
      total = total + config.lambda_ct * l_ct

    if use_hc or use_lc:
      h, w = logits.shape[-3:-1]
      probs_small = jax.nn.softmax(logits, axis=-1)
      conf_s = jax.lax.stop_gradient(probs_small.max(-1))  # [n, 2B, h, w]
      classes = contrastive_classes(
          resize_labels_nearest(targets['pseudo'], (h, w)),
          resize_labels_nearest(targets['pseudo_conf'], (h, w)),
          resize_labels_nearest(targets['labels'], (h, w)))
      has_class = (classes >= 0) & (classes < num_classes)
      quality = (conf_s > config.phi) & has_class  # m_k, Eq. 7
      banks = state.banks
      bank_valid = memory_bank.valid_entries(banks)  # [n, C, N]
      gate = memory_bank.is_full(banks)
      if config.contrastive_start_step >= 0:
        gate = gate | (state.step >= config.contrastive_start_step)
      gate = gate.astype(jnp.float32)
      metrics['contrastive_active'] = gate
      if use_hc:
        l_hc = sum(losses.high_level_contrastive(
            feats[k], classes[k], quality[k], banks.feats[k], config.hc_temperature,
            bank_valid=bank_valid[k]) for k in range(n))
        metrics['loss_hc'] = l_hc
        metrics['hc_mask_fraction'] = quality.mean()
        total = total + gate * config.lambda_hc * l_hc
      if use_lc:
        l_lc, lc_fraction = 0.0, 0.0
        for k in range(n):
          peers = [l for l in range(n) if l != k]
          terms = []
          for l in peers:
            lc_mask = ~quality[k] & has_class[k]
            if config.directional_mask:
              lc_mask = lc_mask & (conf_s[k] < conf_s[l])
            lc_fraction = lc_fraction + lc_mask.mean() / (n * len(peers))
            terms.append(losses.low_level_contrastive(
                feats[k], feats[l], classes[k], lc_mask, banks.feats,
                config.lc_temperature, bank_valid=bank_valid))
          l_lc = l_lc + sum(terms) / len(terms)
        metrics['loss_lc'] = l_lc
        metrics['lc_mask_fraction'] = lc_fraction
        total = total + gate * config.lambda_lc * l_lc
    return total, (metrics, new_stats)

  def push_banks(banks, teacher_out, labels):
    """Teacher k's confident labeled features into bank k (SPEC "Memory bank")."""
    logits, feats = teacher_out['logits'], teacher_out['features']  # [n, B, h, w, ...]
    h, w = logits.shape[-3:-1]
    gt = resize_labels_nearest(labels, (h, w))  # [B, h, w]
    probs = jax.nn.softmax(logits, axis=-1)
    pred, conf = probs.argmax(-1), probs.max(-1)
    cand = jnp.where(pred == gt[None], gt[None], ignore)  # [n, B, h, w]
    dim = feats.shape[-1]
    feats = feats / jnp.maximum(jnp.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
    push = jax.vmap(functools.partial(memory_bank.push, k=bank_k))
    return push(banks, feats.reshape(n, -1, dim), cand.reshape(n, -1), conf.reshape(n, -1))

  def step(state: TrainState, batch: dict[str, Any], rng) -> tuple[TrainState, dict]:
    trace_count[0] += 1
    labeled = batch['labeled']
    images_l01 = labeled['image'].astype(jnp.float32) / 255.0
    labels = labeled['label'].astype(jnp.int32)
    b = labels.shape[0]
    x_l = normalize_images(images_l01, config)
    metrics = {}
    targets = {'labels': labels}
    banks = state.banks
    teacher_out_l = None
    if semi:
      unl = batch['unlabeled']
      images_u01 = unl['image'].astype(jnp.float32) / 255.0
      valid = unl['valid'].astype(bool)
      x_weak = normalize_images(images_u01, config)
      if config.bank_push == 'before_update' and method != 'mutual':
        # Paper's Algorithm 1: one teacher pass over [labeled; unlabeled] feeds both the
        # pseudo-labels and the bank push, before the losses.
        valid_all = jnp.concatenate([jnp.ones_like(labels, bool), valid])
        probs, conf, pred, out = pseudo_labels(state, jnp.concatenate([x_l, x_weak]),
                                               valid_all)
        probs, conf, pred = probs[:, b:], conf[:, b:], pred[:, b:]
        teacher_out_l = jax.tree.map(lambda x: x[:, :b], out)
      else:
        probs, conf, pred, _ = pseudo_labels(state, x_weak, valid)
      strong01, mix_mask = strong_batch(rng, images_u01, probs, valid)
      # The same mask mixes every network's pseudo-labels and confidences: [n, B, H, W].
      mix_pairs = lambda x: jnp.moveaxis(strong_view.mix(mix_mask, jnp.moveaxis(x, 0, -1)),
                                         -1, 0)
      valid_mix = strong_view.mix(mix_mask, valid)
      pseudo = jnp.where(valid_mix[None], mix_pairs(pred), ignore)
      pseudo_conf = jnp.where(valid_mix[None], mix_pairs(conf), 0.0)
      confident = (pseudo_conf >= config.ct_confidence_threshold) & valid_mix[None]
      if config.ct_weighting == 'batch_confident_fraction':
        # ClassMix: every pixel weighted by the fraction of confident pixels of the batch.
        ct_weight = jnp.broadcast_to(confident.mean(axis=(1, 2, 3), keepdims=True),
                                     pseudo_conf.shape)
      else:
        ct_weight = jnp.ones_like(pseudo_conf)
      targets.update(pseudo=pseudo, pseudo_conf=pseudo_conf, ct_weight=ct_weight)
      inputs = jnp.concatenate([x_l, normalize_images(strong01, config)])
      metrics['pseudo_label_confidence'] = (
          jnp.sum(conf * valid[None]) / jnp.maximum(n * valid.sum(), 1))
      metrics['ct_weight'] = ct_weight.mean()
      if teacher_out_l is not None:
        banks = push_banks(banks, teacher_out_l, labels)
    else:
      inputs = x_l
    state_for_loss = state.replace(banks=banks)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (loss_metrics, new_stats)), grads = grad_fn(state.params, state_for_loss,
                                                      inputs, targets)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + u, state.params, updates)

    step_f = state.step.astype(jnp.float32)
    decay = jnp.minimum(1.0 - 1.0 / (step_f + 1.0), config.ema_decay)
    if method == 'self_training':
      decay = jnp.ones_like(decay)  # the stage-1 teacher stays fixed
    teacher_params = _ema(state.teacher_params, params, decay)
    teacher_stats = _ema(state.teacher_batch_stats, new_stats, decay)

    # `mutual` has no teachers before the update, so it always pushes after it.
    push_after = config.bank_push == 'after_update' or (
        method == 'mutual' and config.bank_push == 'before_update')
    if semi and push_after:
      teacher_out_l, _ = pairs(teacher_params, teacher_stats, x_l, train=False)
      banks = push_banks(banks, jax.lax.stop_gradient(teacher_out_l), labels)

    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=new_stats,
        teacher_params=teacher_params, teacher_batch_stats=teacher_stats,
        opt_state=opt_state, banks=banks)
    # A non-finite loss leaves the state as it was; the training loop stops on the flag.
    finite = jnp.isfinite(loss)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)

    metrics.update(loss_metrics)
    metrics.update(
        loss=loss, loss_finite=finite.astype(jnp.float32), lr=lr_schedule(state.step),
        ema_decay=decay, bank_fill=memory_bank.fill_fraction(banks),
        grad_norm=jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2)
                               for g in jax.tree.leaves(grads))))
    return new_state, metrics

  step.trace_count = trace_count
  return step
