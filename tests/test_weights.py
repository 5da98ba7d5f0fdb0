"""Weight import: Flax DeepLab == PyTorch reference nets, error messages, the converter.

Tiny networks (ResNet-50 at width 1/8, ResNet-18 at 1/16, ~50x40 inputs) keep each case
a few seconds on CPU; odd/even and non-square sizes exercise padding, ceil-mode pooling and
the bilinear upsampling conventions.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs.common import base_config
from ctt_jax.models import convert, deeplab, weights

torch = pytest.importorskip('torch')
from tests import torch_reference_nets as ref  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_config(name='deeplabv2', backbone='resnet50', layout='torchvision', os_=8,
                 m=0.125, feature_dim=16, projection_dim=0, skip_head=False):
  c = base_config().model
  c.name, c.backbone, c.layout, c.output_stride = name, backbone, layout, os_
  c.width_multiplier, c.feature_dim, c.projection_dim = m, feature_dim, projection_dim
  c.skip_head = skip_head
  return c


def torch_net(c, num_classes, seed=0):
  net = ref.DeepLab(c.name, num_classes, c.backbone, c.layout, c.output_stride,
                    c.width_multiplier, c.feature_dim, c.projection_dim)
  return ref.randomize_(net, seed).eval()


def assert_parity(c, num_classes=5, size=(50, 43), prefix=''):
  net = torch_net(c, num_classes)
  images = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
  with torch.no_grad():
    t_logits, t_features = net(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  t_logits = t_logits.numpy().transpose(0, 2, 3, 1)
  t_features = t_features.numpy().transpose(0, 2, 3, 1)

  variables = weights.from_torch_state_dict(ref.state_dict_numpy(net, prefix), c)
  model = deeplab.build_deeplab(c, num_classes)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  for got, want in ((out['logits'], t_logits), (out['features'], t_features)):
    assert got.shape == want.shape
    err = float(np.max(np.abs(np.asarray(got) - want)))
    assert err <= 1e-4 * float(np.max(np.abs(want))), (err, float(np.max(np.abs(want))))


@pytest.mark.parametrize('head', ['deeplabv2', 'deeplabv3plus'])
@pytest.mark.parametrize('layout', ['torchvision', 'caffe', 'v1c', 'deepbase'])
def test_parity_resnet50_layouts(layout, head):
  # Names carry the prefixes of real checkpoints ('Scale.' of
  # DeepLab_resnet_pretrained_init-f81d91e8.pth, DataParallel's 'module.'). Height 50 is 25 after the stem, 43 gives 22: one odd, one
  # even size, where ceil-mode pooling (caffe) differs from floor mode.
  assert_parity(model_config(head, 'resnet50', layout),
                prefix='Scale.' if layout == 'caffe' else 'module.')


@pytest.mark.parametrize('head', ['deeplabv2', 'deeplabv3plus'])
def test_parity_resnet18_os16_projection(head):
  c = model_config(head, 'resnet18', 'torchvision', os_=16, m=0.0625, projection_dim=8)
  assert_parity(c, num_classes=3, size=(41, 64), prefix='module.')


def test_skip_head_imports_backbone_of_a_classification_checkpoint():
  c = model_config('deeplabv3plus', 'resnet18', 'torchvision', m=0.0625, skip_head=True)
  sd = ref.state_dict_numpy(ref.randomize_(ref.ResNet('resnet18', 'torchvision', 8, 0.0625)))
  sd['fc.weight'] = np.zeros((1000, 32), np.float32)  # ignored: not a backbone name
  sd['fc.bias'] = np.zeros((1000,), np.float32)
  variables = weights.from_torch_state_dict(sd, c)
  assert set(variables['params']) == {'backbone'}
  np.testing.assert_array_equal(variables['params']['backbone']['conv1']['kernel'],
                                sd['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      variables['batch_stats']['backbone']['layer4_1']['bn2']['var'],
      sd['layer4.1.bn2.running_var'])


def test_errors_list_missing_unexpected_and_mismatched_names():
  c = model_config('deeplabv2', 'resnet18', 'torchvision', m=0.0625)
  sd = {k.removeprefix('backbone.'): v
        for k, v in ref.state_dict_numpy(torch_net(c, 3)).items()}
  del sd['layer2.0.downsample.1.running_var']
  sd['layer3.0.conv1.weight'] = sd['layer3.0.conv1.weight'][:, :-1]
  sd['layer4.2.conv1.weight'] = sd['layer4.1.conv1.weight']  # a block resnet18 lacks
  sd['layer5.conv2d_list.0.weight'] = np.zeros((21, 8, 3, 3), np.float32)
  with pytest.raises(ValueError) as e:
    weights.from_torch_state_dict(sd, c)
  msg = str(e.value)
  for name in ('layer2.0.downsample.1.running_var', 'layer3.0.conv1.weight',
               'layer4.2.conv1.weight', 'layer5.conv2d_list.0.weight'):
    assert name in msg, msg
  assert 'missing' in msg and 'shape mismatch' in msg and 'not used' in msg

  # skip_head: head entries may be absent or differ, backbone problems still count.
  head_free = {k: v for k, v in sd.items() if weights.is_backbone_name(k)}
  head_free['layer2.0.downsample.1.running_var'] = np.ones(8, np.float32)
  head_free['layer3.0.conv1.weight'] = np.ones((16, 8, 3, 3), np.float32)
  del head_free['layer4.2.conv1.weight']
  head_free['layer5.conv2d_list.0.weight'] = np.zeros((21, 8, 3, 3), np.float32)
  variables = weights.from_torch_state_dict(head_free, c, num_classes=19, skip_head=True)
  assert set(variables['params']) == set(variables['batch_stats']) == {'backbone'}
  with pytest.raises(ValueError, match='layer4.2.conv1.weight'):
    weights.from_torch_state_dict(sd, c, skip_head=True)
  with pytest.raises(ValueError, match='number of classes'):
    weights.from_torch_state_dict(head_free, c)


def test_merge_pretrained():
  c = model_config('deeplabv2', 'resnet18', 'torchvision', m=0.0625)
  net = torch_net(c, 3)
  pretrained = weights.from_torch_state_dict(ref.state_dict_numpy(net), c)
  shapes = weights.variable_shapes(c, 3)
  init = jax.tree.map(lambda s: np.full(s.shape, -1.0, s.dtype), shapes)

  merged = weights.merge_pretrained(init, pretrained, skip_head=True)
  flat = weights.flatten_variables(merged)
  assert np.all(flat['params/classifier/conv0/kernel'] == -1.0)  # head left at init
  np.testing.assert_array_equal(flat['params/backbone/layer1_0/conv1/kernel'],
                                weights.flatten_variables(pretrained)[
                                    'params/backbone/layer1_0/conv1/kernel'])
  merged = weights.merge_pretrained(init, pretrained, skip_head=False)
  assert not np.any(weights.flatten_variables(merged)['params/classifier/conv0/kernel']
                    == -1.0)

  backbone_only = weights.from_torch_state_dict(ref.state_dict_numpy(net), c,
                                                skip_head=True)
  with pytest.raises(ValueError, match='params/classifier/conv0/bias'):
    weights.merge_pretrained(init, backbone_only, skip_head=False)
  broken = weights.unflatten_variables(weights.flatten_variables(pretrained))
  broken['params']['backbone']['conv1']['kernel'] = np.zeros((3, 3, 3, 4), np.float32)
  del broken['batch_stats']['backbone']['bn1']['mean']
  broken['params']['backbone']['extra'] = {'kernel': np.zeros(1, np.float32)}
  with pytest.raises(ValueError) as e:
    weights.merge_pretrained(init, broken, skip_head=True)
  for key in ('params/backbone/conv1/kernel', 'batch_stats/backbone/bn1/mean',
              'params/backbone/extra/kernel'):
    assert key in str(e.value)


def _write_checkpoints(tmp_path, sd):
  """The same state dict as .pth (wrapped like mmcv), .safetensors and .npz."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  paths = {'pth': tmp_path / 'in.pth', 'safetensors': tmp_path / 'in.safetensors',
           'npz': tmp_path / 'in.npz'}
  torch.save({'meta': {'note': 'x'},
              'state_dict': {k: torch.from_numpy(v) for k, v in sd.items()}}, paths['pth'])
  save_file(sd, str(paths['safetensors']))
  np.savez(paths['npz'], **sd)
  return paths


def test_convert_command_pth_safetensors_npz(tmp_path):
  c = model_config('deeplabv2', 'resnet18', 'caffe', m=0.0625, skip_head=True)
  sd = ref.state_dict_numpy(ref.randomize_(ref.ResNet('resnet18', 'caffe', 8, 0.0625)),
                            prefix='Scale.')
  sd['Scale.layer5.conv2d_list.0.weight'] = np.zeros((21, 32, 3, 3), np.float32)
  paths = _write_checkpoints(tmp_path, sd)
  expected = weights.flatten_variables(weights.from_torch_state_dict(sd, c))
  flags = ['--backbone', 'resnet18', '--layout', 'caffe', '--width-multiplier', '0.0625']

  # The real command once (a subprocess), then in-process for the other formats.
  out = tmp_path / 'pth.npz'
  result = subprocess.run(
      [sys.executable, '-m', 'ctt_jax.models.convert', '--input', str(paths['pth']),
       '--output', str(out)] + flags, cwd=REPO, capture_output=True, text=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)
  assert result.returncode == 0, result.stderr
  assert 'model.pretrained=' in result.stdout
  for kind in ('safetensors', 'npz'):
    convert.main(['--input', str(paths[kind]), '--output', str(tmp_path / f'{kind}.npz')]
                 + flags)
  for kind in ('pth', 'safetensors', 'npz'):
    loaded = weights.load_pretrained(str(tmp_path / f'{kind}.npz'), c)
    flat = weights.flatten_variables(loaded)
    assert flat.keys() == expected.keys()
    for k in expected:
      np.testing.assert_array_equal(flat[k], expected[k])
  # --bgr-to-rgb reverses the input channels of the first conv, nothing else.
  convert.main(['--input', str(paths['npz']), '--output', str(tmp_path / 'rgb.npz'),
                '--bgr-to-rgb'] + flags)
  flipped = weights.flatten_variables(weights.load_pretrained(str(tmp_path / 'rgb.npz'), c))
  for k in expected:
    want = expected[k][:, :, ::-1] if k == 'params/backbone/conv1/kernel' else expected[k]
    np.testing.assert_array_equal(flipped[k], want)
  # load_pretrained also reads PyTorch names directly from .safetensors / .npz.
  direct = weights.flatten_variables(weights.load_pretrained(str(paths['safetensors']), c))
  assert direct.keys() == expected.keys()

  # A converted file remembers its layout: caffe weights in a torchvision net would
  # load silently (same shapes) and compute something else.
  c_tv = model_config('deeplabv2', 'resnet18', 'torchvision', m=0.0625, skip_head=True)
  with pytest.raises(ValueError, match='model.layout=caffe'):
    weights.load_pretrained(str(tmp_path / 'pth.npz'), c_tv)


def test_convert_errors(tmp_path):
  flags = ['--backbone', 'resnet18', '--layout', 'torchvision']
  garbage = tmp_path / 'broken.pth'
  garbage.write_bytes(b'not a checkpoint')
  (tmp_path / 'weights.h5').write_bytes(b'')
  for path, message in ((garbage, 'Could not read'),
                        (tmp_path / 'absent.pth', 'does not exist'),
                        (tmp_path / 'weights.h5', 'Unknown input format')):
    with pytest.raises(SystemExit) as e:
      convert.main(['--input', str(path), '--output', str(tmp_path / 'o.npz')] + flags)
    assert message in str(e.value), str(e.value)
  bad_npz = tmp_path / 'bad.npz'
  bad_npz.write_bytes(b'PK garbage')
  with pytest.raises(ValueError, match='Could not read'):
    weights.load_pretrained(str(bad_npz), model_config())
  with pytest.raises(ValueError, match='convert it to .npz first'):
    weights.load_pretrained(str(garbage), model_config())
  with pytest.raises(FileNotFoundError, match='does not exist'):
    weights.load_pretrained(str(tmp_path / 'absent.npz'), model_config())


def test_load_pretrained_from_an_orbax_directory(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  c = model_config('deeplabv2', 'resnet18', 'torchvision', m=0.0625, skip_head=True)
  sd = ref.state_dict_numpy(ref.randomize_(ref.ResNet('resnet18', 'torchvision', 8, 0.0625)))
  variables = weights.from_torch_state_dict(sd, c)
  ocp.PyTreeCheckpointer().save(str(tmp_path / 'ckpt'), variables)
  loaded = weights.flatten_variables(weights.load_pretrained(str(tmp_path / 'ckpt'), c))
  for k, v in weights.flatten_variables(variables).items():
    np.testing.assert_array_equal(loaded[k], v)


def test_torchvision_checkpoint_in_the_caffe_layout_as_the_authors_load_it(tmp_path):
  """Their second student (cross_teacher_contr.py 709-727): a caffe-layout Res_Deeplab
  whose entries are copied from torchvision's ResNet wherever name and size match.
  Converting the same file with --layout caffe must give exactly that network."""
  tv_sd = ref.state_dict_numpy(ref.randomize_(ref.ResNet('resnet50', 'torchvision', 8, 0.0625),
                                              seed=3))
  tv_sd['fc.weight'] = np.ones((1000, 128), np.float32)  # their loop skips it: no such name
  tv_sd['fc.bias'] = np.ones((1000,), np.float32)
  theirs = ref.randomize_(ref.ResNet('resnet50', 'caffe', 8, 0.0625), seed=4)
  new_params = theirs.state_dict().copy()
  copied = set()
  for name, param in new_params.items():
    if name in tv_sd and tuple(param.size()) == tv_sd[name].shape:
      new_params[name].copy_(torch.from_numpy(tv_sd[name]))
      copied.add(name)
  theirs.load_state_dict(new_params)
  assert copied == set(new_params)  # every entry came from the file, none kept its init

  c = model_config('deeplabv2', 'resnet50', 'caffe', m=0.0625, skip_head=True)
  want = weights.flatten_variables(
      weights.from_torch_state_dict(ref.state_dict_numpy(theirs), c))
  torch.save({k: torch.from_numpy(v) for k, v in tv_sd.items()}, tmp_path / 'tv.pth')
  convert.main(['--input', str(tmp_path / 'tv.pth'), '--output', str(tmp_path / 'tv.npz'),
                '--backbone', 'resnet50', '--layout', 'caffe', '--width-multiplier', '0.0625'])
  got = weights.flatten_variables(weights.load_pretrained(str(tmp_path / 'tv.npz'), c))
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_pretrained_paths_one_for_all_or_one_per_pair():
  assert weights.pretrained_paths('', 2) == []
  assert weights.pretrained_paths('a.npz', 3) == ['a.npz'] * 3
  assert weights.pretrained_paths('(coco.npz, tv.npz)', 2) == ['coco.npz', 'tv.npz']
  assert weights.pretrained_paths('coco.npz,tv.npz', 2) == ['coco.npz', 'tv.npz']
  with pytest.raises(ValueError, match=r'model.pretrained names 2 checkpoints for 3 pairs; '
                     r'give one checkpoint for every pair or one per pair, comma-separated.'):
    weights.pretrained_paths('coco.npz,tv.npz', 3)
