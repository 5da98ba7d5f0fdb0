"""The synthetic set and the stream mechanics: formats, determinism, resume, multi-host."""
import numpy as np
import pytest

from tests.data_helpers import build, dataset_config
from ctt_jax import data
from ctt_jax.data import synthetic


def make_config(**data_overrides):
  return dataset_config('synthetic', batch_size=4, **{
      'synthetic_num_train': 48, 'synthetic_num_val': 10, 'eval_batch_size': 4,
      **data_overrides})


def take(stream, n):
  return [next(stream) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_formats_and_metadata():
  ds = build(make_config(split='1_4'))
  labeled, unlabeled = next(ds.labeled), next(ds.unlabeled)
  assert labeled['image'].shape == (4, 64, 64, 3) and labeled['image'].dtype == np.uint8
  assert labeled['label'].shape == (4, 64, 64) and labeled['label'].dtype == np.int32
  assert set(np.unique(labeled['label'])) <= set(range(5)) | {255}
  # 'label': ground truth for diagnostics (data.unlabeled_labels, on by default).
  assert sorted(unlabeled) == ['image', 'label', 'valid']
  assert unlabeled['valid'].dtype == bool and unlabeled['valid'].shape == (4, 64, 64)
  assert ds.num_classes == 5 and len(ds.class_names) == 5
  assert ds.palette.shape == (5, 3) and ds.palette.dtype == np.uint8
  assert ds.num_labeled == 12 and len(ds.unlabeled_ids) == 36  # round(48 / 4)
  assert not set(ds.labeled_ids) & set(ds.unlabeled_ids)
  assert len(set(ds.labeled_ids) | set(ds.unlabeled_ids)) == 48
  ds.close()


def test_eval_stream_pads_the_last_batch():
  ds = build(make_config())
  batches = list(ds.eval_batches())
  assert len(batches) == ds.eval_steps == 3  # 10 images, batches of 4
  index = np.concatenate([b['index'] for b in batches])
  np.testing.assert_array_equal(index, list(range(10)) + [-1, -1])
  last = batches[-1]
  assert last['image'].shape == (4, 64, 64, 3) and last['index'].dtype == np.int32
  assert not last['valid'][2:].any() and (last['label'][2:] == 255).all()
  assert last['valid'][:2].all()
  images, labels = synthetic.make_split(0, 1, 10, 64, 64)
  np.testing.assert_array_equal(batches[0]['image'], images[:4])
  np.testing.assert_array_equal(batches[0]['label'], labels[:4])
  # A second call starts over.
  assert_batches_equal(batches, list(ds.eval_batches()))


def test_streams_are_a_function_of_seed_and_step():
  config = make_config(split='1_4', scale_range=(0.7, 1.4), rotation_degrees=10.0)
  a, b = build(config), build(config)
  first = take(a.labeled, 4)
  assert_batches_equal(first, take(b.labeled, 4))
  assert_batches_equal(take(a.unlabeled, 2), take(b.unlabeled, 2))
  # Resuming at step 3 reads exactly what step 3 read.
  resumed = build(config, start_step=3)
  assert_batches_equal(first[3:], take(resumed.labeled, 1))
  skipped = build(config)
  take(skipped.unlabeled, 3)
  assert_batches_equal(take(skipped.unlabeled, 2), take(resumed.unlabeled, 2))
  # Another seed, other batches; labeled and unlabeled draws differ.
  config.seed = 1
  other = next(build(config).labeled)
  assert not np.array_equal(other['image'], first[0]['image'])


def test_process_slices_concatenate_to_the_single_process_batch():
  config = make_config(split='1_4')
  config.batch_size = 4
  single = build(config)
  parts = [build(config, process_index=p, process_count=2) for p in range(2)]
  for _ in range(3):
    whole = next(single.labeled)
    halves = [next(p.labeled) for p in parts]
    for k in whole:
      np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))
    whole_u = next(single.unlabeled)
    halves_u = [next(p.unlabeled) for p in parts]
    for k in whole_u:
      np.testing.assert_array_equal(whole_u[k], np.concatenate([h[k] for h in halves_u]))
  # Eval: every process yields ceil(10 / 4) batches of 2; together the whole val set.
  single_eval = list(single.eval_batches())
  part_eval = [list(p.eval_batches()) for p in parts]
  assert [len(e) for e in part_eval] == [3, 3]
  for t, whole in enumerate(single_eval):
    for k in whole:
      np.testing.assert_array_equal(
          whole[k], np.concatenate([part_eval[0][t][k], part_eval[1][t][k]]))
  with pytest.raises(data.DataError, match='batch_size=4 does not split evenly over 3'):
    build(config, process_index=0, process_count=3)


def test_each_epoch_shows_every_labeled_image_once():
  # No augmentation (crop = image, no flip): batch images are the stored images.
  config = make_config(split='1_4', hflip=False, scale_range=(1.0, 1.0))
  ds = build(config)
  images, _ = synthetic.make_split(0, 0, 48, 64, 64)
  labeled_rows = [int(i.split('_')[1]) for i in ds.labeled_ids]
  key = lambda im: im.tobytes()
  expected = sorted(key(images[r]) for r in labeled_rows)
  orders = []
  for _ in range(2):  # two epochs of 12 images = 3 steps each, in different orders
    epoch = np.concatenate([b['image'] for b in take(ds.labeled, 3)])
    assert sorted(key(im) for im in epoch) == expected
    orders.append([key(im) for im in epoch])
  assert orders[0] != orders[1]


def test_full_split_reuses_labeled_images_as_unlabeled():
  ds = build(make_config(split='full'))
  assert ds.num_labeled == 48 and ds.unlabeled_ids == ()
  assert next(ds.unlabeled)['image'].shape == (4, 64, 64, 3)


def test_labeled_fraction_and_partition_seed():
  a = build(make_config(labeled_fraction=0.25, split='1_8'))
  assert a.num_labeled == 12  # labeled_fraction wins over the split name
  b = build(make_config(labeled_fraction=0.25, partition_seed=1))
  assert set(a.labeled_ids) != set(b.labeled_ids)
  config = make_config(labeled_fraction=0.25)
  config.seed = 5  # the training seed does not move the partition
  assert build(config).labeled_ids == a.labeled_ids


def test_write_labeled_ids(tmp_path):
  ds = build(make_config(split='1_8'))
  path = data.write_labeled_ids(ds, str(tmp_path / 'work'))
  assert open(path).read().split() == list(ds.labeled_ids)
  assert len(ds.labeled_ids) == 6


def test_scenes_are_deterministic_and_colour_alone_does_not_solve_them():
  a = synthetic.render_scene(np.random.default_rng([0, 0, 3]), 64, 64)
  b = synthetic.render_scene(np.random.default_rng([0, 0, 3]), 64, 64)
  np.testing.assert_array_equal(a[0], b[0])
  images, labels = synthetic.make_split(0, 0, 256, 64, 64)
  val_images, val_labels = synthetic.make_split(0, 1, 64, 64, 64)
  # Every class is present in a good share of pixels.
  share = np.bincount(labels.ravel(), minlength=5) / labels.size
  assert share.min() > 0.04, share
  # The best colour-only classifier (majority class per 16^3 RGB bin, fit on train).
  bins = lambda x: ((x // 16).astype(np.int64) * [256, 16, 1]).sum(-1)
  counts = np.zeros((4096, 5))
  np.add.at(counts, (bins(images).ravel(), labels.ravel()), 1)
  pred = counts.argmax(1)[bins(val_images)]
  iou = [((pred == c) & (val_labels == c)).sum() / ((pred == c) | (val_labels == c)).sum()
         for c in range(5)]
  assert np.mean(iou) < 0.4, iou  # a tiny CNN reaches > 0.5 (docs/DATA.md)
