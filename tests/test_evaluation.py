"""Evaluation: confusion matrix / IoU (ctt_jax.metrics) against numpy loops, the eval step and
predictions (ctt_jax.inference) on a tiny model."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctt_jax import inference, methods, metrics, resize_normalize, stacked_networks, train_state
from tests.train_helpers import CLASSES, IMAGE, tiny_config, tiny_model


def _loop_confusion(pred, label, valid, num_classes, ignore=255):
  cm = np.zeros((num_classes, num_classes), np.int64)
  for p, t, v in zip(pred.ravel(), label.ravel(), valid.ravel()):
    if v and t != ignore:
      cm[t, p] += 1
  return cm


def _loop_iou(cm):
  ious = []
  for c in range(len(cm)):
    tp = cm[c, c]
    fp = sum(cm[r, c] for r in range(len(cm)) if r != c)
    fn = sum(cm[c, r] for r in range(len(cm)) if r != c)
    ious.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
  present = [v for v in ious if not math.isnan(v)]
  return sum(present) / len(present), np.array(ious)


def test_confusion_and_iou_match_loops():
  rng = np.random.default_rng(0)
  c = 6  # class 4 is never predicted nor present; class 3 only predicted; 5 only truth
  label = rng.choice([0, 1, 2, 5, 255], size=(3, 9, 7)).astype(np.int32)
  pred = rng.choice([0, 1, 2, 3], size=(3, 9, 7)).astype(np.int32)
  valid = rng.random((3, 9, 7)) > 0.2
  valid[2] = False  # a padded image
  expected = _loop_confusion(pred, label, valid, c)
  got = np.asarray(metrics.confusion_matrix(pred, label, valid, c))
  assert got.dtype == np.int32 and got.shape == (c, c)
  np.testing.assert_array_equal(got, expected)

  miou, per_class = metrics.iou_from_confusion(got)
  ref_miou, ref_per_class = _loop_iou(expected)
  np.testing.assert_allclose(per_class, ref_per_class)  # NaN where NaN
  assert math.isnan(per_class[4]) and per_class[3] == 0.0 and per_class[5] == 0.0
  assert miou == pytest.approx(ref_miou)


def test_iou_of_nothing_is_nan():
  miou, per_class = metrics.iou_from_confusion(np.zeros((3, 3), np.int32))
  assert math.isnan(miou) and np.isnan(per_class).all()


def test_network_names():
  assert methods.from_config(tiny_config(num_pairs=2)).network_names() == [
      'student_0', 'student_1', 'teacher_0', 'teacher_1']
  assert methods.from_config(tiny_config(num_pairs=3, method='ensemble')).network_names()[-1] == (
      'ensemble')


def test_window_starts_cover_the_image():
  assert inference.window_starts(16, 16, 11) == [0]
  assert inference.window_starts(10, 16, 11) == [0]
  assert inference.window_starts(1024, 256, 171) == [0, 171, 342, 513, 684, 768]
  for size, window, stride in [(17, 8, 5), (100, 30, 20), (9, 8, 8)]:
    starts = inference.window_starts(size, window, stride)
    covered = np.zeros(size, bool)
    for s in starts:
      covered[s:s + window] = True
    assert covered.all() and starts[-1] + window == size


def _perturbed_state(config, model):
  """Students differ (own init); teachers are reversed, scaled students; BN running stats
  are far from the batch's own, so train-mode BN would give other predictions."""
  state = train_state.init_train_state(config, model, jax.random.key(0), IMAGE)
  rng = np.random.default_rng(1)
  shift = lambda tree: jax.tree.map(
      lambda x: x + jnp.asarray(rng.uniform(0.2, 0.8, x.shape), x.dtype), tree)
  flip = lambda tree: jax.tree.map(lambda x: x[::-1] * 1.3, tree)
  return state.replace(batch_stats=shift(state.batch_stats),
                       teacher_params=flip(state.params),
                       teacher_batch_stats=shift(state.batch_stats))


def _eval_batch(seed=0, padded=1, image=IMAGE):
  rng = np.random.default_rng(seed)
  b = 3
  labels = rng.integers(0, CLASSES, size=(b, *image)).astype(np.int32)
  labels[:, 0, :] = 255
  valid = np.ones((b, *image), bool)
  valid[b - padded:] = False  # padding images: random content, must count for nothing
  return {'image': rng.integers(0, 256, size=(b, *image, 3)).astype(np.uint8),
          'label': labels, 'valid': valid,
          'index': np.where(valid.any((1, 2)), np.arange(b), -1).astype(np.int32)}


def _direct_probs(config, model, params, stats, image_batch):
  """Reference: one eager model.apply in eval mode, upsampled, softmax."""
  x = resize_normalize.normalizer(config)(jnp.asarray(image_batch, jnp.float32) / 255.0)
  logits = model.apply({'params': params, 'batch_stats': stats}, x, train=False)['logits']
  return jax.nn.softmax(resize_normalize.upsample_bilinear(logits, image_batch.shape[1:3]), axis=-1)


@pytest.fixture(scope='module')
def ensemble_setup():
  config = tiny_config(method='ensemble')
  model = tiny_model(config)
  state = _perturbed_state(config, model)
  eval_step = jax.jit(inference.make_eval_step(config, model))  # the module's one compile
  return config, model, state, eval_step


def test_eval_step_matches_direct_apply(ensemble_setup):
  config, model, state, eval_step = ensemble_setup
  batch = _eval_batch()
  got = np.asarray(eval_step(state, batch))
  names = methods.from_config(config).network_names()
  assert got.shape == (len(names), CLASSES, CLASSES) and got.dtype == np.int32

  n = config.num_pairs
  nets = ([(state.params, state.batch_stats, k) for k in range(n)]
          + [(state.teacher_params, state.teacher_batch_stats, k) for k in range(n)])
  probs = [np.asarray(_direct_probs(config, model, stacked_networks.tree_index(p, k),
                                    stacked_networks.tree_index(s, k), batch['image']))
           for p, s, k in nets]
  preds = [p.argmax(-1) for p in probs] + [sum(probs[n:]).argmax(-1)]
  for name, pred, cm in zip(names, preds, got):
    # Only the two real images count: the padded one holds random labels and pixels.
    expected = _loop_confusion(pred[:2], batch['label'][:2], batch['valid'][:2], CLASSES)
    np.testing.assert_array_equal(cm, expected, err_msg=name)
  assert got[0].sum() == (batch['label'][:2] != 255).sum()
  # The test means something: students, teachers and ensemble do not all agree.
  assert len({cm.tobytes() for cm in got}) > 2


def test_ensemble_entry_only_for_ensemble(ensemble_setup):
  config, model, state, _ = ensemble_setup
  ctt = tiny_config(method='ctt')
  shape = jax.eval_shape(inference.make_eval_step(ctt, model), state, _eval_batch()).shape
  assert shape == (2 * ctt.num_pairs, CLASSES, CLASSES)
  assert 'ensemble' not in methods.from_config(ctt).network_names()


def test_students_only_scores_the_students_rows_and_ranks_best_among_them(ensemble_setup):
  config, model, state, eval_step = ensemble_setup
  students = tiny_config(method='ensemble', num_pairs=config.num_pairs,
                         eval_networks='students')
  method = methods.from_config(students)
  assert method.network_names() == ['student_0', 'student_1']
  assert method.default_network == 'student_0' and method.ema_teachers  # teachers still train
  batch = _eval_batch()
  got = np.asarray(jax.jit(inference.make_eval_step(students, model))(state, batch))
  every = np.asarray(eval_step(state, batch))
  np.testing.assert_array_equal(got, every[:config.num_pairs])
  results = metrics.evaluate(lambda s, b: got, state, [batch], method.network_names(),
                             config.num_classes)
  assert results['best'] in method.network_names()  # the checkpoint ranking's network
  with pytest.raises(ValueError, match=r"Unknown eval_networks 'student'; valid: all, "
                     r"students."):
    methods.from_config(tiny_config(eval_networks='student'))


def test_evaluate_accumulates_and_picks_best(ensemble_setup, tmp_path):
  config, _, state, eval_step = ensemble_setup
  batches = [_eval_batch(seed=1), _eval_batch(seed=2, padded=3)]  # 2nd: all padding
  results = metrics.evaluate(eval_step, state, iter(batches),
                             methods.from_config(config).network_names(), config.num_classes)
  names = methods.from_config(config).network_names()
  assert set(results) == set(names) | {'best'}
  first = np.asarray(eval_step(state, batches[0]))
  for i, name in enumerate(names):
    np.testing.assert_array_equal(results[name]['confusion'], first[i])
    miou, per_class = metrics.iou_from_confusion(first[i])
    assert results[name]['miou'] == pytest.approx(miou)
    np.testing.assert_allclose(results[name]['per_class_iou'], per_class)
  assert results['best'] == max(names, key=lambda n: results[n]['miou'])

  class_names = ('a', 'b', 'c')
  path = tmp_path / 'eval' / 'step.json'
  metrics.write_eval_json(results, str(path), class_names)
  written = json.loads(path.read_text())
  assert written['best'] == results['best']
  assert list(written['teacher_0']['per_class_iou']) == list(class_names)
  assert written['teacher_0']['miou'] == pytest.approx(results['teacher_0']['miou'])


def test_evaluate_without_batches_fails(ensemble_setup):
  config, _, state, eval_step = ensemble_setup
  with pytest.raises(ValueError, match='no batches'):
    metrics.evaluate(eval_step, state, iter([]), ['student_0'], config.num_classes)


def test_sliding_window(ensemble_setup):
  """One window as large as the image = plain evaluation; overlapping windows = the
  average of eager per-window softmaxes."""
  config, model, state, eval_step = ensemble_setup
  batch = _eval_batch(seed=3)
  plain = np.asarray(eval_step(state, batch))

  whole = tiny_config({'data.crop_size': IMAGE}, method='ensemble', eval_sliding_window=True)
  sliding = jax.jit(inference.make_eval_step(whole, model))
  np.testing.assert_array_equal(np.asarray(sliding(state, batch)), plain)

  # 8x12 crops at stride (5, 8) on 16x16: rows 0,5,8 x columns 0,4 -> 6 windows.
  small = tiny_config({'data.crop_size': (8, 12)}, method='ensemble',
                      eval_sliding_window=True)
  params = stacked_networks.tree_index(state.teacher_params, 1)
  stats = stacked_networks.tree_index(state.teacher_batch_stats, 1)
  total = np.zeros((*batch['label'].shape, CLASSES))
  counts = np.zeros(IMAGE)
  for y in (0, 5, 8):
    for x in (0, 4):
      crop = batch['image'][:, y:y + 8, x:x + 12]
      total[:, y:y + 8, x:x + 12] += np.asarray(
          _direct_probs(small, model, params, stats, crop))
      counts[y:y + 8, x:x + 12] += 1
  expected = (total / counts[..., None]).argmax(-1)
  got = np.asarray(inference.predict_batch(small, model, state, batch['image'],
                                            network='teacher_1'))
  np.testing.assert_array_equal(got, expected)
