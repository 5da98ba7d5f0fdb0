"""The authors' recipe in the train step, against references written from their code
(1181110317/SSL_CTT, first upload: cross_teacher_contr.py = CTC, utils/transformsgpu.py,
model/deeplabv2.py): per-student ClassMix views, teachers in train mode, contrastive
anchors and LC classes, the bank's logit filter and k, the resizing modes, the head init."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from configs import common
from ctt_jax import resize_normalize
from ctt_jax import memory_bank, models, stacked_networks, strong_augment, train_step
from ctt_jax.models import ctt_head
from tests.train_helpers import tiny_config

AUTHORS = common.RECIPES['authors']


def authors_config(**keys):
  return tiny_config({k: v for k, v in AUTHORS.items()
                      if not k.startswith(('model.', 'data.', 'bank_size'))}, **keys)


# ----------------------------------------------------------------------------------------
# ClassMix: one view per student, from the teacher that supervises it (CTC:114-126)


def _class_maps(rng, batch, size, num_classes):
  """Two networks' argmax maps with different classes per pixel, as one-hot softmaxes."""
  maps = rng.integers(0, num_classes, size=(2, batch, size, size))
  probs = np.eye(num_classes, dtype=np.float32)[maps] * 0.9 + 0.1 / num_classes
  return maps, probs


def test_each_student_is_mixed_by_floor_half_of_its_supervising_teachers_classes():
  rng = np.random.default_rng(0)
  maps, probs = _class_maps(rng, 4, 12, 6)
  images = rng.uniform(size=(4, 12, 12, 3)).astype(np.float32)
  valid = np.ones((4, 12, 12), bool)
  config = authors_config(num_classes=6)
  teachers_of = ((1,), (0,))  # ctt with two pairs: each student learns from the other
  strong, masks = train_step.strong_views(jax.random.key(3), images, probs, valid,
                                          teachers_of=teachers_of, config=config)
  assert strong.shape == (2, 4, 12, 12, 3) and masks.shape == (2, 4, 12, 12)
  masks = np.asarray(masks)
  for k, (teacher,) in enumerate(teachers_of):
    for i in range(4):
      # CTC:117-121: classes = unique(argmax of the supervising teacher); choose
      # (n - n % 2) / 2 of them; the mask is exactly their pixels.
      present = np.unique(maps[teacher, i])
      chosen = np.unique(maps[teacher, i][masks[k, i]])
      assert len(chosen) == len(present) // 2
      np.testing.assert_array_equal(masks[k, i], np.isin(maps[teacher, i], chosen))
  assert (masks[0] != masks[1]).any()  # two students, two draws
  # Each student's pseudo-labels are its own teacher's labels mixed by its own mask.
  pred = jnp.asarray(maps)
  mixed = np.asarray(train_step.mix_for_students(jnp.asarray(masks), pred, teachers_of))
  for k, (teacher,) in enumerate(teachers_of):
    np.testing.assert_array_equal(
        mixed[k, 0], np.where(masks[k], maps[teacher], np.roll(maps[teacher], -1, axis=0)))


def test_shared_mask_repeats_one_view_for_every_student():
  rng = np.random.default_rng(1)
  maps, probs = _class_maps(rng, 2, 8, 4)
  config = tiny_config(num_classes=4)
  strong, masks = train_step.strong_views(jax.random.key(0), np.zeros((2, 8, 8, 3), np.float32),
                                          probs, np.ones((2, 8, 8), bool),
                                          teachers_of=((1,), (0,)), config=config)
  assert strong.shape == (2, 8, 8, 3)
  np.testing.assert_array_equal(masks[0], masks[1])
  # ceil(n/2) classes of the argmax of both networks' mean softmax.
  mean_map = probs.mean(0).argmax(-1)
  for i in range(2):
    chosen = np.unique(mean_map[i][np.asarray(masks[0, i])])
    assert len(chosen) == (len(np.unique(mean_map[i])) + 1) // 2


def test_mix_then_jitter_jitters_the_mixed_image_as_one():
  """transformsgpu.py strongTransform: mix first, then one jitter per output image; our
  paper reading jitters each source image before the mix."""
  images = np.stack([np.full((4, 4, 3), 0.2), np.full((4, 4, 3), 0.6)]).astype(np.float32)
  mask = np.zeros((2, 4, 4), bool)
  mask[:, :, :2] = True  # left half from image i, right half from image i + 1
  aug = ml_collections.ConfigDict(dict(
      color_jitter_prob=1.0, brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0,
      blur_prob=0.0, blur_sigma_min=0.1, blur_sigma_max=0.2, cutmix_area=0.5, coin='batch'))
  probs = np.zeros((2, 4, 4, 2), np.float32)
  probs[..., 0] = mask  # class 0 on the left, 1 on the right: ClassMix picks one of them
  probs[..., 1] = ~mask
  valid = np.ones((2, 4, 4), bool)
  for order in ('mix_then_jitter', 'jitter_then_mix'):
    aug.order = order
    out, m = strong_augment.build(jax.random.key(5), images, probs, valid, kind='classmix',
                                  aug=aug, num_classes=2, classes_rounding='half_up')
    out, m = np.asarray(out), np.asarray(m)
    for i in range(2):
      own, pasted = out[i][m[i]], out[i][~m[i]]
      ratio = pasted.mean() / own.mean()
      source_ratio = images[(i + 1) % 2].mean() / images[i].mean()
      if order == 'mix_then_jitter':  # one brightness factor for the whole output image
        np.testing.assert_allclose(ratio, source_ratio, rtol=1e-5)
      else:
        assert abs(ratio - source_ratio) > 1e-3


def test_batch_coin_jitters_and_blurs_all_images_or_none():
  images = jax.random.uniform(jax.random.key(0), (16, 8, 8, 3))
  for seed in range(6):
    out = strong_augment.color_jitter(jax.random.key(seed), images, brightness=0.4,
                                      contrast=0.0, saturation=0.0, hue=0.0, prob=0.5,
                                      coin='batch')
    changed = np.abs(np.asarray(out - images)).max(axis=(1, 2, 3)) > 1e-6
    assert changed.all() or not changed.any()
    blurred = strong_augment.gaussian_blur(jax.random.key(seed), images, prob=0.5,
                                           sigma_min=0.15, sigma_max=1.15, coin='batch')
    changed = np.abs(np.asarray(blurred - images)).max(axis=(1, 2, 3)) > 1e-6
    assert changed.all() or not changed.any()
  per_image = strong_augment.color_jitter(jax.random.key(0), images, brightness=0.4,
                                          contrast=0.0, saturation=0.0, hue=0.0, prob=0.5,
                                          coin='image')
  changed = np.abs(np.asarray(per_image - images)).max(axis=(1, 2, 3)) > 1e-6
  assert 0 < changed.sum() < 16


# ----------------------------------------------------------------------------------------
# Teachers in train mode (CTC:732, 735: create_ema_model(...).train())


@pytest.fixture(scope='module')
def dropout_net():
  """A tiny DeepLabV2 with the authors' head (batch-norm and Dropout2d), two networks."""
  config = authors_config()
  common.update(config, {'model.name': 'deeplabv2', 'model.backbone': 'resnet18',
                         'model.layout': 'torchvision', 'model.width_multiplier': 0.0625,
                         'model.head': 'aspp_se', 'model.feature_dim': 16,
                         'model.conv_impl': 'xla', 'model.freeze_bn': False})
  model = models.get_model(config.model, config.num_classes)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = jax.vmap(lambda k: model.init(k, x, train=False))(
      jax.random.split(jax.random.key(0), 2))
  # Running statistics unlike the batch's, so that train and eval mode differ.
  stats = jax.tree.map(lambda s: s + 0.5, variables['batch_stats'])
  return config, model, variables['params'], stats, x


def test_teachers_in_train_mode_use_batch_statistics_and_their_own_dropout(dropout_net):
  config, model, params, stats, x = dropout_net
  teach = functools.partial(train_step.teach, model, params, stats, x)
  key = jax.random.key(4)
  config.teacher_mode = 'train'
  out = teach(key, config)
  for k in range(2):
    one = jax.tree.map(lambda v: v[k], {'params': params, 'batch_stats': stats})
    expect, _ = model.apply(one, x, train=True, mutable=['batch_stats'],
                            rngs={'dropout': jax.random.split(key, 2)[k]})
    np.testing.assert_allclose(out['logits'][k], expect['logits'], rtol=1e-5, atol=1e-5)
  other_key = teach(jax.random.key(5), config)
  assert float(jnp.abs(other_key['logits'] - out['logits']).max()) > 1e-4  # dropout acts
  config.teacher_mode = 'eval'
  evaluated = teach(key, config)
  expect = model.apply(jax.tree.map(lambda v: v[0], {'params': params, 'batch_stats': stats}),
                       x, train=False)
  np.testing.assert_allclose(evaluated['logits'][0], expect['logits'], rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(evaluated['logits'] - out['logits']).max()) > 1e-3


def test_teacher_dropout_draws_differ_from_the_students(dropout_net):
  """In the step, the teachers' pseudo-label pass and the bank pass draw dropout from keys
  of their own: the teacher run with the students' key gives other outputs."""
  config, model, params, stats, x = dropout_net
  rng = jax.random.key(9)
  _, dropout_rng = jax.random.split(rng)
  pseudo_rng = jax.random.fold_in(rng, 2)
  config.teacher_mode = 'train'
  as_teacher = train_step.teach(model, params, stats, x, pseudo_rng, config)
  student_out, _ = stacked_networks.apply(model, params, stats, x, train=True, how='unroll',
                                          dropout_rng=jax.random.fold_in(dropout_rng, 0))
  assert float(jnp.abs(as_teacher['logits'] - student_out['logits']).max()) > 1e-4


# ----------------------------------------------------------------------------------------
# Contrastive anchors and LC's class (CTC:944-984, contr_self_loss, contr_net_loss)


def _cosine(a, b):
  """[len(a), len(b)] cosine similarities, computed as the authors' kernels do."""
  return (a @ b.T) / (np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None])


def _contr_self_loss(bank, rep, labels, mask, num_classes, temp):
  """CTC:576-624 in numpy (features [P, D], labels and mask [P])."""
  size = bank.shape[1]
  loss, class_count = 0.0, 0
  for i in range(num_classes):
    choice = mask & (labels == i)
    if not choice.any():
      continue
    class_count += 1
    neg = bank[[j for j in range(num_classes) if j != i]].reshape(-1, bank.shape[-1])
    feats = np.concatenate([bank[i], neg])
    r = rep[choice]
    logits = np.exp(_cosine(r, feats) / temp)
    down = logits[:, size:].sum(1, keepdims=True)
    pos = logits[:, :size]
    loss += (-np.log(pos / (pos + down + 1e-12) + 1e-12)).sum() / (size * len(r))
  return loss / class_count


def _contr_net_loss(banks, rep_l, rep_r, labels, mask, num_classes, temp):
  """CTC:627-679 in numpy: banks [C, 2N, D] (both banks), peer features rep_r."""
  loss, class_count = 0.0, 0
  for i in range(num_classes):
    choice = mask & (labels == i)
    if not choice.any():
      continue
    class_count += 1
    neg = banks[[j for j in range(num_classes) if j != i]].reshape(-1, banks.shape[-1])
    a, p = rep_l[choice], rep_r[choice]
    down = np.exp(_cosine(a, neg) / temp).sum(1)
    pos = np.exp((a * p).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(p, axis=1))
                 / temp)
    loss += (-np.log(pos / (pos + down + 1e-12) + 1e-12)).sum() / len(a)
  return loss / class_count


def test_contrastive_terms_equal_the_authors_losses():
  """HC: every valid labeled pixel + unlabeled pixels where the supervising teacher is
  >= 0.75 confident, classed by GT / its pseudo-label, tau 0.1, against the own bank. LC:
  the other unlabeled pixels, classed by the peer student's argmax, positive = the peer's
  feature, negatives from both banks, tau 0.5, no directional mask."""
  rng = np.random.default_rng(0)
  n, b, h, w, c, d, size = 2, 2, 4, 5, 3, 6, 4
  config = authors_config(num_classes=c, bank_size=size, lc_temperature=0.5)
  logits = rng.normal(size=(n, 2 * b, h, w, c)).astype(np.float32) * 2
  feats = rng.normal(size=(n, 2 * b, h, w, d)).astype(np.float32)
  labels = rng.integers(0, c, size=(b, h, w))
  labels[0, 0, :2] = 255
  pseudo = rng.integers(0, c, size=(n, 1, b, h, w))
  pseudo_conf = rng.uniform(0.5, 1.0, size=(n, 1, b, h, w)).astype(np.float32)
  bank_feats = rng.normal(size=(n, c, size, d)).astype(np.float32)
  banks = memory_bank.MemoryBank(feats=jnp.asarray(bank_feats),
                                 ptr=jnp.zeros((n, c), jnp.int32),
                                 count=jnp.full((n, c), size, jnp.int32))
  targets = {'labels': jnp.asarray(labels), 'pseudo': jnp.asarray(pseudo),
             'pseudo_conf': jnp.asarray(pseudo_conf)}
  method = train_step.methods_lib.from_config(config)
  terms, metrics = train_step.contrastive_losses(
      jnp.asarray(logits), jnp.asarray(feats), targets, banks, jnp.asarray(10),
      method=method, config=config)
  labeled, unlabeled = train_step.split_halves(feats, axis=1)  # [n, b, h, w, d] each
  student_pred = np.asarray(train_step.split_halves(logits, axis=1)[1]).argmax(-1)
  hc, lc = 0.0, 0.0
  for k in range(n):
    rep = np.concatenate([labeled[k], unlabeled[k]]).reshape(-1, d)
    classes = np.concatenate([labels, pseudo[k, 0]]).reshape(-1)
    mask = np.concatenate([labels != 255, pseudo_conf[k, 0] >= 0.75]).reshape(-1)
    hc += _contr_self_loss(bank_feats[k], rep, classes, mask, c, 0.1)
    peer = 1 - k
    lc += _contr_net_loss(np.concatenate([bank_feats[0], bank_feats[1]], axis=1),
                          unlabeled[k].reshape(-1, d), unlabeled[peer].reshape(-1, d),
                          student_pred[peer].reshape(-1),
                          (pseudo_conf[k, 0] < 0.75).reshape(-1), c, 0.5)
  np.testing.assert_allclose(float(metrics['loss_hc']), hc, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['loss_lc']), lc, rtol=1e-5)
  assert len(terms) == 2


# ----------------------------------------------------------------------------------------
# The bank (CTC:476-512, add_to_memory_bank)


def _authors_bank_update(bank, size_of, logits, rep, labels, num_classes, k):
  """add_to_memory_bank in numpy for one network (one image's pixels flattened)."""
  prob, pred = logits.max(-1), logits.argmax(-1)
  accurate = (labels == pred) & (prob >= 0.95)
  for i in range(num_classes):
    if i not in labels:
      continue
    mask = (labels == i) & accurate
    rep_i, count = rep[mask], k
    if len(rep_i) >= count:
      rep_i = rep_i[np.argsort(-prob[mask], kind='stable')][:count]
    else:
      count = len(rep_i)
    n = bank.shape[1]
    if size_of[i] + count <= n:
      bank[i, size_of[i]:size_of[i] + count] = rep_i
      size_of[i] += count
    else:
      kept = bank[i, count - (n - size_of[i]):size_of[i]].copy()
      bank[i, :n - count] = kept
      bank[i, n - count:] = rep_i
      size_of[i] = n
  return bank, size_of


def test_bank_takes_correct_pixels_with_logit_at_least_095_ranked_by_logit():
  rng = np.random.default_rng(2)
  c, d, size, pixels = 3, 4, 6, 40
  config = authors_config(num_classes=c, bank_size=size)
  k = 2
  bank = memory_bank.create(c, size, d)
  banks = jax.tree.map(lambda x: x[None], bank)
  ours_count = np.zeros(c, int)
  theirs, theirs_size = np.zeros((c, size, d), np.float32), np.zeros(c, int)
  for step in range(5):
    logits = rng.normal(size=(pixels, c)).astype(np.float32) * 1.5
    feats = rng.normal(size=(pixels, d)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = rng.integers(0, c, size=pixels)
    out = {'logits': jnp.asarray(logits)[None, None, :, None],
           'features': jnp.asarray(feats)[None, None, :, None]}
    banks = train_step.push_banks(banks, out, jnp.asarray(labels)[None, :, None], k=k,
                                  config=config)
    theirs, theirs_size = _authors_bank_update(theirs, theirs_size, logits, feats, labels, c,
                                               k)
  ours = np.asarray(banks.feats[0])
  count = np.asarray(banks.count[0])
  np.testing.assert_array_equal(count, theirs_size)
  for i in range(c):  # the same set of entries (a ring buffer vs their shifted queue)
    a = np.sort(ours[i, :count[i]].round(5), axis=0)
    b = np.sort(theirs[i, :theirs_size[i]].round(5), axis=0)
    np.testing.assert_allclose(a, b, atol=1e-5)
  # The filter acts: ranked by softmax with no threshold, the last batch fills more slots.
  config.bank_score, config.bank_min_score = 'softmax', 0.0
  empty = jax.tree.map(lambda x: x[None], bank)
  push = functools.partial(train_step.push_banks, teacher_out=out, k=k,
                           labels=jnp.asarray(labels)[None, :, None])
  filtered = push(empty, config=authors_config(num_classes=c, bank_size=size))
  assert int(push(empty, config=config).count.sum()) > int(filtered.count.sum())


@pytest.mark.parametrize('num_labeled,batch,size,expect', [
    (100, 2, 256, 5),  # Cityscapes 1/30: int(2 * 256 / 100)
    (372, 2, 256, 2),  # Cityscapes 1/8: int(512 / 372) = 1 < batch
    (212, 10, 256, 10),  # VOC aug 1/50: the batch
    (46, 4, 64, 4),  # the CamVid check
    (1, 2, 8, 8),  # at most a whole queue
])
def test_bank_k_rule_of_the_authors(num_labeled, batch, size, expect):
  config = authors_config(batch_size=batch, bank_size=size)
  assert train_step.bank_k_per_step(config, num_labeled) == expect
  config.bank_k_rule = 'per_labeled'
  assert train_step.bank_k_per_step(config, num_labeled) == min(
      max(1, num_labeled // size), size)


# ----------------------------------------------------------------------------------------
# Resizing (CTC:824 nn.Upsample(align_corners=True); F.interpolate(mode='nearest'))


@pytest.mark.parametrize('size_in,size_out', [((33, 65), (256, 512)), ((22, 30), (176, 240)),
                                              ((5, 7), (5, 7)), ((1, 3), (4, 9))])
def test_align_corners_upsampling_equals_torch(size_in, size_out):
  x = np.random.default_rng(0).normal(size=(2, 3, *size_in)).astype(np.float32)
  expect = torch.nn.functional.interpolate(torch.tensor(x), size=size_out, mode='bilinear',
                                           align_corners=True).numpy()
  ours = resize_normalize.upsample_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), size_out,
                                            'align_corners')
  np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), expect, atol=5e-5)
  half = torch.nn.functional.interpolate(torch.tensor(x), size=size_out, mode='bilinear',
                                         align_corners=False).numpy()
  ours = resize_normalize.upsample_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), size_out)
  np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), half, atol=5e-5)


@pytest.mark.parametrize('size_in,size_out', [((256, 512), (33, 65)), ((176, 240), (22, 30)),
                                              ((321, 321), (41, 41)), ((100, 60), (100, 60))])
def test_label_downsampling_equals_torch_legacy_nearest(size_in, size_out):
  labels = np.random.default_rng(1).integers(0, 19, size=(2, *size_in)).astype(np.float32)
  expect = torch.nn.functional.interpolate(torch.tensor(labels)[:, None], size=size_out,
                                           mode='nearest')[:, 0].numpy()
  ours = resize_normalize.resize_labels_nearest(jnp.asarray(labels), size_out, 'align_corners')
  np.testing.assert_array_equal(np.asarray(ours), expect)
  if size_in != size_out:  # the pixel-centre rule really is another one
    centre = resize_normalize.resize_labels_nearest(jnp.asarray(labels), size_out)
    assert (np.asarray(centre) != expect).mean() > 0.05


def test_unknown_resize_convention_is_one_sentence():
  with pytest.raises(ValueError, match=r"Unknown resize_convention 'torch'; valid: "
                                       r"half_pixel, align_corners\."):
    resize_normalize.upsample_bilinear(jnp.zeros((1, 2, 2, 1)), (4, 4), 'torch')


# ----------------------------------------------------------------------------------------
# The head's initialisation (deeplabv2.py:235-238 re-draws every conv N(0, 0.01))


def test_authors_head_init_draws_every_conv_from_n_0_001():
  x = jnp.zeros((1, 9, 9, 256))
  paper = ctt_head.CTTHead(5, 256, 256).init(jax.random.key(0), x)['params']
  authors = ctt_head.CTTHead(5, 256, 256, init_scheme='authors').init(
      jax.random.key(0), x)['params']
  for name in ('branch0', 'branch2', 'fuse'):
    np.testing.assert_allclose(float(authors[name]['conv']['kernel'].std()), 0.01, rtol=0.05)
  np.testing.assert_allclose(float(authors['classifier']['kernel'].std()), 0.01, rtol=0.05)
  np.testing.assert_allclose(float(paper['classifier']['kernel'].std()), 0.001, rtol=0.05)
  # Branch biases keep PyTorch's U(+-1/sqrt(fan_in)); the fuse conv's stays 0.
  bound = 1 / np.sqrt(256 * 9)
  bias = np.asarray(authors['branch1']['conv']['bias'])
  assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.5 * bound
  assert not np.asarray(authors['fuse']['conv']['bias']).any()
  assert not np.asarray(paper['branch1']['conv']['bias']).any()
  fc1 = np.asarray(authors['se']['fc1']['kernel'])
  assert np.abs(fc1).max() <= 1 / np.sqrt(fc1.shape[0]) + 1e-7
