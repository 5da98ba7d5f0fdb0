"""Colour maps, image summaries, the Cityscapes labelId mapping and predict_directory."""
import jax
import numpy as np
import pytest
from PIL import Image

from ctt_jax import inference, predict, train_state, visualize
from tests.train_helpers import IMAGE, tiny_config, tiny_model

PALETTE = np.array([(128, 64, 128), (244, 35, 232), (70, 70, 70)], np.uint8)


def test_colorize():
  class_map = np.array([[0, 1, 2], [255, 2, 7]])
  got = visualize.colorize(class_map, PALETTE)
  assert got.dtype == np.uint8 and got.shape == (2, 3, 3)
  np.testing.assert_array_equal(got[0], PALETTE)
  np.testing.assert_array_equal(got[1, 0], [0, 0, 0])  # ignore -> black
  np.testing.assert_array_equal(got[1, 1], PALETTE[2])
  np.testing.assert_array_equal(got[1, 2], [0, 0, 0])  # not a class -> black


def test_summary_grid_layout():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 6, 8, 3)).astype(np.uint8)
  labels = rng.integers(0, 3, (2, 6, 8))
  preds = {'student_0': labels, 'teacher_0': np.zeros_like(labels)}
  grid = visualize.summary_grid(images, labels, preds, PALETTE, gap=2)
  assert grid.shape == (2, 6, 4 * 8 + 3 * 2, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[:, :, :8], images)
  np.testing.assert_array_equal(grid[:, :, 10:18], visualize.colorize(labels, PALETTE))
  np.testing.assert_array_equal(grid[:, :, 30:38], np.broadcast_to(PALETTE[0], (2, 6, 8, 3)))
  small = visualize.summary_grid(images, labels, preds, PALETTE, max_panel_width=4, gap=0)
  assert small.shape == (2, 3, 4 * 4, 3)


def test_label_ids_round_trip():
  from ctt_jax.data import cityscapes  # the data side's labelId -> trainId table
  train_ids = np.arange(19)
  label_ids = predict.train_ids_to_label_ids(train_ids)
  assert label_ids.dtype == np.uint8
  assert [cityscapes.LABEL_ID_TO_TRAIN_ID[int(l)] for l in label_ids] == list(train_ids)
  np.testing.assert_array_equal(cityscapes.LABEL_SPEC.lut[label_ids], train_ids)
  np.testing.assert_array_equal(predict.train_ids_to_label_ids([255, -1, 19]), [0, 0, 0])


@pytest.fixture(scope='module')
def tiny_state():
  config = tiny_config(num_pairs=2)
  config.data.name = 'cityscapes'
  model = tiny_model(config)
  state = train_state.init_train_state(config, model, jax.random.key(0), IMAGE)
  return config, model, state


def _write_inputs(folder):
  rng = np.random.default_rng(0)
  city = folder / 'frankfurt'
  city.mkdir(parents=True)
  big = rng.integers(0, 256, (*IMAGE, 3)).astype(np.uint8)
  odd = rng.integers(0, 256, (12, 20, 3)).astype(np.uint8)
  Image.fromarray(big).save(city / 'frankfurt_000000_000294_leftImg8bit.png')
  Image.fromarray(odd).save(folder / 'odd.jpg', quality=95)
  (folder / 'notes.txt').write_text('not an image')
  return {'frankfurt/frankfurt_000000_000294_leftImg8bit': big,
          'odd': np.asarray(Image.open(folder / 'odd.jpg').convert('RGB'))}


def test_predict_directory(tiny_state, tmp_path):
  config, model, state = tiny_state
  inputs = _write_inputs(tmp_path / 'in')
  out = tmp_path / 'out'
  written = predict.predict_directory(config, model, state, str(tmp_path / 'in'), str(out),
                                      PALETTE, network='student_1')
  assert len(written) == 4
  for name, image in inputs.items():
    expected = np.asarray(inference.predict_batch(config, model, state, image[None],
                                                   network='student_1'))[0]
    color = Image.open(out / 'color' / f'{name}_color.png')
    assert color.mode == 'P' and color.size == (image.shape[1], image.shape[0])
    np.testing.assert_array_equal(np.asarray(color), expected)  # indices = train ids
    np.testing.assert_array_equal(np.asarray(color.convert('RGB')), PALETTE[expected])
    ids = Image.open(out / 'labelIds' / f'{name}_labelIds.png')
    assert ids.mode == 'L' and ids.size == color.size
    np.testing.assert_array_equal(np.asarray(ids),
                                  predict.TRAIN_ID_TO_LABEL_ID[expected])


def test_predict_directory_without_cityscapes_writes_colours_only(tiny_state, tmp_path):
  config, model, state = tiny_state
  config = config.copy_and_resolve_references()
  config.data.name = 'voc_aug'
  folder = tmp_path / 'in'
  folder.mkdir()
  Image.fromarray(np.zeros((*IMAGE, 3), np.uint8)).save(folder / 'a.png')
  written = predict.predict_directory(config, model, state, str(folder),
                                      str(tmp_path / 'out'), PALETTE, network='ensemble')
  assert written == [str(tmp_path / 'out' / 'color' / 'a_color.png')]


def test_unreadable_image_is_skipped_and_reported(tiny_state, tmp_path, capsys):
  config, model, state = tiny_state
  folder = tmp_path / 'in'
  folder.mkdir()
  (folder / 'a_broken.png').write_bytes(b'\x89PNG truncated')
  Image.fromarray(np.zeros((*IMAGE, 3), np.uint8)).save(folder / 'b.png')
  out = tmp_path / 'out'
  written = predict.predict_directory(config, model, state, str(folder), str(out), PALETTE)
  assert str(out / 'color' / 'b_color.png') in written  # the good image after the bad one
  assert not any('a_broken' in path for path in written)
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last == (f'Wrote {len(written)} PNG files for 1 images to {out}; skipped 1 '
                  'unreadable images (a_broken.png).'), last


def test_predict_directory_errors(tiny_state, tmp_path):
  config, model, state = tiny_state
  with pytest.raises(FileNotFoundError, match='does not exist'):
    predict.predict_directory(config, model, state, str(tmp_path / 'missing'),
                              str(tmp_path / 'out'), PALETTE)
  folder = tmp_path / 'in'
  folder.mkdir()
  (folder / 'broken.png').write_bytes(b'not a png at all')
  with pytest.raises(ValueError, match='broken.png'):  # nothing readable: an error
    predict.predict_directory(config, model, state, str(folder), str(tmp_path / 'out'),
                              PALETTE)
  with pytest.raises(ValueError, match='Unknown network'):
    inference.predict_batch(config, model, state, np.zeros((1, *IMAGE, 3), np.uint8),
                             network='teacher_7')


def test_check_request_names_the_flag_and_creates_nothing(tmp_path):
  names = ['student_0', 'student_1', 'teacher_0', 'teacher_1']
  folder, empty = tmp_path / 'in', tmp_path / 'empty'
  folder.mkdir()
  empty.mkdir()
  Image.fromarray(np.zeros((*IMAGE, 3), np.uint8)).save(folder / 'a.png')
  (tmp_path / 'file').write_text('x')
  predict.check_request(str(folder), str(tmp_path / 'out'), 'teacher_0', names)
  assert not (tmp_path / 'out').exists()
  for args, expected in [
      ((folder, tmp_path / 'out', 'student_7'), r'--network=student_7 is not a network of '
       r'this run; use one of student_0, student_1, teacher_0, teacher_1 \(did you mean '
       r'student_1\?\)'),
      ((tmp_path / 'missing', tmp_path / 'out', 'teacher_0'), '--input=.* does not exist'),
      ((empty, tmp_path / 'out', 'teacher_0'), '--input=.* holds no .png'),
      ((folder, tmp_path / 'file', 'teacher_0'), '--output=.* is a file, not a folder'),
      (('', tmp_path / 'out', 'teacher_0'), '--mode=predict needs --input'),
  ]:
    with pytest.raises(predict.RequestError, match=expected) as info:
      predict.check_request(str(args[0]) if args[0] else '', str(args[1]), args[2], names)
    assert '\n' not in str(info.value)
