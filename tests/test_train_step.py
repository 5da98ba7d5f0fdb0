"""The train step on a tiny model: learning, EMA, cross-teacher routing, methods, traces,
no pair favoured."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctt_jax import inference, methods, train_state, train_step
from tests import fake_devices
from tests.train_helpers import IMAGE, counting, make_batch, tiny_config, tiny_model


def _setup(**overrides):
  config = tiny_config(**overrides)
  model = tiny_model(config)
  state = train_state.init_train_state(config, model, jax.random.key(0), IMAGE)
  step = train_step.make_train_step(config, model, num_labeled=8)
  return config, model, state, step


@pytest.fixture(scope='module')
def ctt_run():
  """One compile of the default CTT step, 25 steps on a fixed batch."""
  config, model, state0, step = _setup()
  step = counting(step)
  jitted = jax.jit(step)
  batch = make_batch()
  history, states = [], [state0]
  state = state0
  for i in range(25):
    state, metrics = jitted(state, batch, jax.random.key(i))
    history.append(jax.device_get(metrics))
    states.append(state)
  return config, step, states, history


def test_loss_falls_on_a_fixed_batch(ctt_run):
  _, _, _, history = ctt_run
  first, last = history[0]['loss_sup'], history[-1]['loss_sup']
  assert last < 0.7 * first, (first, last)
  assert all(h['loss_finite'] == 1.0 for h in history)


def test_compiled_once(ctt_run):
  _, step, _, _ = ctt_run
  assert step.calls == 1


def test_teachers_follow_the_ema_formula(ctt_run):
  config, _, states, history = ctt_run
  for t in (1, 10):  # state t -> t+1 is optimiser step number t
    decay = min(1 - 1 / (t + 1), config.ema_decay)
    np.testing.assert_allclose(history[t]['ema_decay'], decay, rtol=1e-6)
    expected = jax.tree.map(lambda tp, p: decay * tp + (1 - decay) * p,
                            states[t].teacher_params, states[t + 1].params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 states[t + 1].teacher_params, expected)
    expected_bs = jax.tree.map(lambda tb, b: decay * tb + (1 - decay) * b,
                               states[t].teacher_batch_stats, states[t + 1].batch_stats)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 states[t + 1].teacher_batch_stats, expected_bs)


def test_banks_fill_and_contrastive_terms_act(ctt_run):
  _, _, states, history = ctt_run
  assert history[-1]['bank_fill'] > history[0]['bank_fill']
  banks = states[-1].banks
  assert banks.feats.shape[:3] == (2, 3, 4)
  # Stored features are L2-normalised (where written).
  norms = np.linalg.norm(np.asarray(banks.feats), axis=-1)
  written = np.asarray(jax.vmap(lambda c: jnp.arange(4)[None] < c[:, None])(banks.count))
  np.testing.assert_allclose(norms[written], 1.0, rtol=1e-5)
  assert any(h['loss_lc'] > 0 for h in history) and any(h['loss_hc'] > 0 for h in history)
  for key in ('lr', 'bank_fill', 'hc_mask_fraction', 'lc_mask_fraction',
              'pseudo_label_confidence', 'loss_ct', 'loss_sup', 'grad_norm'):
    assert np.isfinite(history[-1][key]), key


def test_cross_teacher_reaches_only_the_other_students():
  """With ctt, changing teacher k changes the CT loss of every student but k."""
  config, model, state, step = _setup(num_pairs=3, unlabeled_aug='none', ct_weighting='none')
  state = jax.device_get(state)
  other = train_state.init_variables(model, jax.random.key(7), IMAGE, 3)
  step = jax.jit(step)
  batch = make_batch(1)
  _, base = step(state, batch, jax.random.key(0))
  for k in range(3):
    teacher = jax.tree.map(lambda t, o: jnp.asarray(t).at[k].set(o[k]), state.teacher_params,
                           other['params'])
    _, changed = step(state.replace(teacher_params=teacher), batch, jax.random.key(0))
    for j in range(3):
      delta = abs(float(changed[f'loss_ct/{j}']) - float(base[f'loss_ct/{j}']))
      if j == k:
        assert delta < 1e-6, (k, j, delta)
      else:
        assert delta > 1e-4, (k, j, delta)


@pytest.mark.parametrize('overrides', [
    dict(method='supervised'),
    dict(method='supervised', supervised_ema=False),
    dict(method='mean_teacher', num_pairs=1, unlabeled_aug='cutmix'),
    dict(method='mutual', ct_weighting='confidence_power'),
    dict(method='dual_teacher', ct_weighting='none'),
    dict(method='ensemble', use_hc=False, use_lc=False),
    dict(method='self_training', use_ct=True, use_hc=False),
    dict(method='ctt', use_ct=False, directional_mask=False, bank_push='before_update'),
    dict(method='ctt', bank_push='none'),  # the benchmark's step without the bank
], ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items()))
def test_every_method_and_switch_runs(overrides):
  config, _, state, step = _setup(**overrides)
  init_teacher = jax.device_get(state.teacher_params)
  batch = make_batch(2)
  jitted = jax.jit(step)
  for i in range(2):
    state, metrics = jitted(state, batch, jax.random.key(i))
  metrics = jax.device_get(metrics)
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  method = config.method
  assert ('loss_ct' in metrics) == (method != 'supervised' and config.use_ct)
  assert ('loss_hc' in metrics) == (method != 'supervised' and config.use_hc)
  assert ('loss_lc' in metrics) == (method != 'supervised' and config.use_lc
                                    and config.num_pairs > 1)
  teacher_moved = any(not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(init_teacher), jax.tree.leaves(state.teacher_params)))
  assert teacher_moved == methods.from_config(config).ema_teachers
  if method != 'supervised':
    pushed = float(np.asarray(state.banks.count).sum())
    assert (pushed == 0) if config.bank_push == 'none' else (pushed > 0)


def test_vmapped_pairs_equal_unrolled_pairs():
  results = []
  for vmap_pairs in (False, True):
    _, _, state, step = _setup(vmap_pairs=vmap_pairs)
    state, metrics = jax.jit(step)(state, make_batch(3), jax.random.key(0))
    results.append((state, metrics))
  (s0, m0), (s1, m1) = results
  np.testing.assert_allclose(m0['loss'], m1['loss'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               s0.params, s1.params)


@pytest.mark.parametrize('method', ['supervised', 'ctt'])
def test_non_finite_loss_keeps_the_state(method):
  """NaN parameters, or finite ones whose loss overflows: nothing of the state changes
  (students, teachers, statistics, optimiser, banks, step)."""
  _, _, state, step = _setup(method=method)
  step = jax.jit(step)
  state = jax.device_get(state)
  bad = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
  _, _, _, overflowing = _setup(method=method, lambda_sup=float('inf'))
  for start, fn in ((bad, step), (state, jax.jit(overflowing))):
    new_state, metrics = fn(start, make_batch(4), jax.random.key(0))
    assert float(metrics['loss_finite']) == 0.0
    for old, new in zip(jax.tree.leaves(start), jax.tree.leaves(jax.device_get(new_state))):
      np.testing.assert_array_equal(old, new)


def test_supervised_without_ema_has_only_students():
  """`supervised_ema=False`: the step keeps no teacher and evaluation scores the students."""
  config, model, state, _ = _setup(method='supervised', num_pairs=1, supervised_ema=False)
  method = methods.from_config(config)
  assert not method.ema_teachers and not method.has_teachers
  assert method.network_names() == ['student_0'] and method.default_network == 'student_0'
  labeled = make_batch(3)['labeled']
  batch = {**labeled, 'valid': np.ones(labeled['label'].shape, bool)}
  confusion = jax.jit(inference.make_eval_step(config, model))(state, batch)
  assert confusion.shape == (1, config.num_classes, config.num_classes)
  with_ema = methods.from_config(tiny_config(method='supervised', num_pairs=1))
  assert with_ema.network_names() == ['student_0', 'teacher_0']


def test_pseudo_label_confusion_against_a_hand_count():
  pred = np.array([[[[0, 1], [2, 2]]],   # network 0, one 2x2 image
                   [[[1, 1], [2, 0]]]])  # network 1
  truth = np.array([[[0, 1], [2, 255]]])
  valid = np.array([[[True, True], [False, True]]])  # (1, 0) is padding; (1, 1) ignored
  got = np.asarray(train_step.pseudo_label_confusion(pred, truth, valid, 3, 255))
  expected = np.zeros((2, 3, 3), np.int32)
  expected[0, 0, 0] = expected[0, 1, 1] = 1  # rows = truth, columns = pseudo-label
  expected[1, 0, 1] = expected[1, 1, 1] = 1
  np.testing.assert_array_equal(got, expected)


def test_ct_pixel_weights_against_hand_values():
  conf = np.array([[[[0.99, 0.5], [0.97, 0.0]]],   # network 0, one 2x2 image; (1, 1) is
                   [[[0.6, 0.6], [0.6, 0.0]]]])   # outside `valid`, its confidence 0
  valid = np.array([[[True, True], [True, False]]])
  weights = lambda how: np.asarray(train_step.ct_pixel_weights(conf, valid, 0.968, how, 6.0))
  # ClassMix: every pixel of a network's batch weighs its fraction of pixels >= 0.968.
  np.testing.assert_allclose(weights('batch_confident_fraction'),
                             np.broadcast_to([[[[0.5]]], [[[0.0]]]], conf.shape))
  np.testing.assert_allclose(weights('confidence_power'), conf ** 6, rtol=1e-6)
  np.testing.assert_array_equal(weights('none'), np.ones_like(conf))
  with pytest.raises(ValueError, match='confidence_power'):
    weights('sigmoid')


def test_step_reports_pseudo_label_confusion_only_with_unlabeled_truth():
  _, _, state, step = _setup()
  step = jax.jit(step)
  batch = make_batch(5)
  _, metrics = step(state, batch, jax.random.key(0))
  assert 'pseudo_confusion' not in metrics
  truth = make_batch(5)['labeled']['label']  # any labels of the right shape
  batch['unlabeled']['label'] = truth
  _, with_truth = step(state, batch, jax.random.key(0))
  cm = np.asarray(with_truth['pseudo_confusion'])
  assert cm.shape == (2, 3, 3)
  counted = ((truth != 255) & batch['unlabeled']['valid']).sum()
  np.testing.assert_array_equal(cm.sum(axis=(1, 2)), [counted, counted])
  # The labels are a diagnostic: the losses do not change.
  for key in ('loss', 'loss_ct', 'loss_hc', 'loss_lc'):
    assert float(with_truth[key]) == float(metrics[key]), key


@pytest.mark.parametrize('freeze_bn', [True, False])
def test_separate_and_joint_student_passes(freeze_bn):
  """Frozen batch-norm: one pass over [labeled; unlabeled] = two passes. Trained: not."""
  results = {}
  for passes in ('separate', 'joint'):
    _, _, state, step = _setup(**{'student_bn_passes': passes, 'model.freeze_bn': freeze_bn})
    new_state, metrics = jax.jit(step)(state, make_batch(6), jax.random.key(0))
    results[passes] = (float(metrics['loss']), jax.device_get(new_state.batch_stats))
  (sep_loss, sep_stats), (joint_loss, joint_stats) = results['separate'], results['joint']
  if freeze_bn:
    np.testing.assert_allclose(sep_loss, joint_loss, rtol=1e-6)
  else:
    assert abs(sep_loss - joint_loss) > 1e-4, (sep_loss, joint_loss)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(sep_stats),
                                                     jax.tree.leaves(joint_stats)))


def test_swapping_the_pairs_swaps_the_result():
  """No pair is favoured by the code: the CTT step (CT, HC and LC all acting from step 1)
  run on a state whose pair axis is reversed gives the reversed result. Pairs differ only
  by their initialisation and dropout keys (the tiny model has no dropout)."""
  _, _, state, step = _setup(ct_weighting='none', phi=0.5)  # some pixels unsure: LC acts
  step = jax.jit(step)
  pair_fields = ('params', 'batch_stats', 'teacher_params', 'teacher_batch_stats',
                 'opt_state', 'banks')

  def swapped(s):
    flip = lambda tree: jax.tree.map(
        lambda x: x[::-1] if getattr(x, 'ndim', 0) and x.shape[0] == 2 else x, tree)
    return s.replace(**{f: flip(getattr(s, f)) for f in pair_fields})

  a, b = state, swapped(state)
  for i in range(3):
    a, ma = step(a, make_batch(i), jax.random.key(i))
    b, mb = step(b, make_batch(i), jax.random.key(i))
    np.testing.assert_allclose([ma['loss_ct/0'], ma['loss_ct/1'], ma['loss_hc'], ma['loss_lc']],
                               [mb['loss_ct/1'], mb['loss_ct/0'], mb['loss_hc'], mb['loss_lc']],
                               rtol=1e-5)
  assert min(float(ma[k]) for k in ('loss_ct/0', 'loss_ct/1', 'loss_hc', 'loss_lc')) > 0
  pair_gap = max(float(jnp.max(jnp.abs(x[0] - x[1]))) for x in jax.tree.leaves(a.params))
  assert pair_gap > 1e-2  # the pairs really differ, so the check can fail
  for field in pair_fields:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                 getattr(a, field), getattr(swapped(b), field))


def test_halves_join_image_by_image_and_split_back():
  labeled = jnp.arange(2 * 3 * 2).reshape(2, 3, 2)  # [n, B, ...]
  unlabeled = 100 + labeled
  joined = train_step.join_halves(labeled, unlabeled, axis=1)
  assert joined.shape == (2, 6, 2)
  np.testing.assert_array_equal(joined[:, 0::2], labeled)  # l0, u0, l1, u1, ...
  np.testing.assert_array_equal(joined[:, 1::2], unlabeled)
  back_l, back_u = train_step.split_halves(joined, axis=1)
  np.testing.assert_array_equal(back_l, labeled)
  np.testing.assert_array_equal(back_u, unlabeled)
  # Pytrees (the networks' outputs) join and split leaf by leaf.
  tree_l, tree_u = train_step.split_halves(
      train_step.join_halves({'a': labeled}, {'a': unlabeled}, axis=1), axis=1)
  np.testing.assert_array_equal(tree_l['a'], labeled)
  np.testing.assert_array_equal(tree_u['a'], unlabeled)


# Joining the halves and splitting them again around a batch-wide statistic, on a batch
# sharded over 4 fake devices: interleaved, each device keeps its rows (one all-reduce,
# the statistic); concatenated, half the batch moves between devices.
_HALVES_PROGRAM = r'''
import json
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from ctt_jax import sharding, tpu_compile, train_step
mesh = sharding.make_mesh(jax.devices())
data = NamedSharding(mesh, P(None, 'data'))
x = jax.ShapeDtypeStruct((2, 8, 6, 5, 3), jnp.float32, sharding=data)
def count(fn):
  hlo = jax.jit(fn, out_shardings=(data, data)).lower(x, x).compile().as_text()
  return {k: v for k, v in tpu_compile.count_collectives(hlo).items() if v}
def normalise(joined):
  return (joined - joined.mean(axis=1, keepdims=True)) * 2.0
def interleaved(l, u):
  return train_step.split_halves(normalise(train_step.join_halves(l, u, axis=1)), axis=1)
def concatenated(l, u):
  joined = normalise(jnp.concatenate([l, u], axis=1))
  return joined[:, :8], joined[:, 8:]
print(json.dumps({'interleaved': count(interleaved), 'concatenated': count(concatenated)}))
'''


def test_joined_halves_stay_on_their_devices():
  out = fake_devices.run_program(_HALVES_PROGRAM, num_devices=4)
  assert out['interleaved'] == {'all-reduce': 1}
  assert out['concatenated'].get('collective-permute', 0) + out['concatenated'].get(
      'all-gather', 0) + out['concatenated'].get('all-to-all', 0) > 0  # what it avoids
