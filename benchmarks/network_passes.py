"""The CTT step reduced to the network passes it needs: the baseline of the benchmark's
"CTT machinery" row (target: the machinery beyond the passes <= 5% of the step).

The passes CTT cannot do without (n pairs): the teachers on the weak unlabeled view, the
students in train mode on the labeled and the unlabeled batch (forward and backward, two
batch-norm passes as `student_bn_passes='separate'`), the teachers on the labeled batch
(the features the banks take), the SGD update and the EMA. This step does exactly those,
with the cheapest losses that use them (cross-entropy on the labels and on the teachers'
argmax), and returns a sum of the labeled teacher pass so XLA cannot drop it. What the
full step adds on top is the machinery: pseudo-label softmax and confidences, the strong
view (jitter, blur, ClassMix) and mixed targets, the CT weighting, HC, LC, the bank's
candidate ranking and push, metrics.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ctt_jax import resize_normalize as image_ops
from ctt_jax import losses
from ctt_jax import methods as methods_lib
from ctt_jax import optim
from ctt_jax import train_step as ts


def passes_step(state, batch, rng, *, model, tx, config):
  unit = image_ops.to_unit_range
  norm = image_ops.normalizer(config)
  x_l, x_u = norm(unit(batch['labeled']['image'])), norm(unit(batch['unlabeled']['image']))
  labels = batch['labeled']['label'].astype(jnp.int32)
  weak = ts.predict_eval_mode(model, state.teacher_params, state.teacher_batch_stats, x_u,
                              config)
  pseudo = image_ops.upsample_bilinear(weak['logits'], labels.shape[-2:]).argmax(-1)

  def loss_fn(params):
    out, stats = ts.run_students(params, state.batch_stats, x_l, x_u, rng, model=model,
                                 config=config)
    logits = image_ops.upsample_bilinear(out['logits'], labels.shape[-2:])
    b = labels.shape[0]
    total = sum(losses.cross_entropy(logits[k, :b], labels, ignore_label=config.ignore_label)
                + losses.cross_entropy(logits[k, b:], pseudo[k],
                                       ignore_label=config.ignore_label)
                for k in range(logits.shape[0]))
    return total, stats

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  # Stages 6-7 as the full step runs them (update, EMA), without the bank push.
  method = dataclasses.replace(methods_lib.from_config(config), bank_push='none')
  new_state = ts.update_networks_and_banks(state, grads, stats, state.banks, x_l, labels,
                                           jax.random.fold_in(rng, 3), model=model, method=method, tx=tx, config=config,
                                           bank_k=0)
  labeled = ts.predict_eval_mode(model, new_state.teacher_params,
                                 new_state.teacher_batch_stats, x_l, config)
  return new_state, {'loss': loss, 'teacher_labeled_sum': labeled['features'].sum()}


def make_passes_step(config, model, num_labeled: int):
  """Same signature as `train_step.make_train_step`."""
  del num_labeled
  return functools.partial(passes_step, model=model, tx=optim.make_optimizer(config),
                           config=config)
