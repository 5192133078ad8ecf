"""Lite ResNet: numpy references of the original's conv2d_fixed_padding / group_norm / bottleneck_block
(utils/vision_transformer.py, utils/model_utils.py), and the golden TF ResNet outputs of reference A."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merlot_jax.models import resnet
from tests.models.testlib import (
  build_random,
  fast_jit,
  max_rel,
  np_avgpool2,
  np_conv,
  np_groupnorm,
  np_same_padding,
  np_weight_standardize,
  pure_params,
  with_params,
)

RS = 'vision_backbone/vision_transformer/resnet50lite'


def _std_conv(cin, cout, k, stride, seed):
  return build_random(lambda: resnet.StdConv(cin, cout, k, stride, rngs=nnx.Rngs(0)), seed=seed)


def test_stem_conv_pads_1_1_explicitly_then_valid():
  """3x3 stride 2 on even sizes: the original pads (1, 1) (fixed_padding), not SAME's (0, 1)."""
  conv = _std_conv(3, 8, 3, 2, seed=0)
  x = np.random.RandomState(0).randn(2, 8, 10, 3).astype(np.float32)
  k = pure_params(conv)['kernel']
  got = np.asarray(conv(jnp.asarray(x)))
  assert got.shape == (2, 4, 5, 8)
  ref = np_conv(x, np_weight_standardize(k), stride=2, padding=((1, 1), (1, 1)))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  same = np_conv(x, np_weight_standardize(k), stride=2, padding=((0, 1), (0, 1)))
  assert np.max(np.abs(got - same)) > 0.1  # SAME padding would be caught


@pytest.mark.parametrize('k', [1, 3])
def test_stride1_conv_is_same_padded_and_weight_standardised(k):
  conv = _std_conv(4, 6, k, 1, seed=k)
  x = np.random.RandomState(1).randn(1, 5, 6, 4).astype(np.float32)
  kernel = pure_params(conv)['kernel']
  ref = np_conv(x, np_weight_standardize(kernel), padding=np_same_padding(k))
  np.testing.assert_allclose(conv(jnp.asarray(x)), ref, rtol=1e-4, atol=1e-4)


def test_weight_standardisation_eps_is_1e5():
  """With kernel variance 1e-6 the epsilon dominates: rsqrt(1e-6 + 1e-5), not rsqrt(1e-6 + eps')."""
  conv = _std_conv(2, 3, 3, 1, seed=3)
  small = pure_params(conv)['kernel'] * 1e-3 / pure_params(conv)['kernel'].std()
  conv = with_params(conv, {'kernel': small.astype(np.float32)})
  x = np.random.RandomState(2).randn(1, 4, 4, 2).astype(np.float32)
  got = np.asarray(conv(jnp.asarray(x)))
  ref = np_conv(x, np_weight_standardize(small, eps=1e-5), padding=np_same_padding(3))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
  other = np_conv(x, np_weight_standardize(small, eps=1e-8), padding=np_same_padding(3))
  assert np.max(np.abs(got - other)) > 0.5 * np.max(np.abs(other))


def test_groupnorm_matches_numpy_32_groups_eps_1e4():
  gn = build_random(lambda: resnet.GroupNorm(64, rngs=nnx.Rngs(0)), seed=4)
  p = pure_params(gn)
  rng = np.random.RandomState(3)
  # Per-channel offsets and scales, so a wrong grouping (e.g. interleaved channels) changes the statistics.
  x = (rng.randn(2, 3, 5, 64) * rng.uniform(0.5, 3, 64) + rng.randn(64)).astype(np.float32)
  got = np.asarray(gn(jnp.asarray(x)))
  np.testing.assert_allclose(got, np_groupnorm(x, p['scale'], p['bias']), rtol=1e-4, atol=1e-4)
  interleaved = np_groupnorm(x.reshape(2, 3, 5, 2, 32).swapaxes(-1, -2).reshape(2, 3, 5, 64), p['scale'], p['bias'])
  assert np.max(np.abs(got - interleaved)) > 0.1
  # Tiny variance (1e-6 << 1e-4): the epsilon is visible.
  tiny = (1e-3 * rng.randn(1, 4, 4, 64) + 2).astype(np.float32)
  got = np.asarray(gn(jnp.asarray(tiny)))
  np.testing.assert_allclose(got, np_groupnorm(tiny, p['scale'], p['bias'], eps=1e-4), rtol=2e-3, atol=2e-3)
  assert np.max(np.abs(got - np_groupnorm(tiny, p['scale'], p['bias'], eps=1e-5))) > 0.1


def test_avg_pool_2x2():
  x = np.random.RandomState(4).randn(2, 6, 4, 3).astype(np.float32)
  np.testing.assert_allclose(resnet.avg_pool_2x2(jnp.asarray(x)), np_avgpool2(x), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='even'):
    resnet.avg_pool_2x2(jnp.zeros((1, 5, 4, 3)))


def np_conv_norm(x, p, relu, stride=1):
  k = p['conv']['kernel']
  size = k.shape[0]
  pad = ((1, 1), (1, 1)) if stride > 1 else np_same_padding(size)
  y = np_groupnorm(np_conv(x, np_weight_standardize(k), stride, pad), p['norm']['scale'], p['norm']['bias'])
  return np.maximum(y, 0) if relu else y


def np_bottleneck(x, p, downsample):
  shortcut = x
  if 'proj' in p and p['proj'] is not None:
    shortcut = np_conv_norm(np_avgpool2(x) if downsample else x, p['proj'], relu=False)
  y = np_conv_norm(np_conv_norm(x, p['conv1'], True), p['conv2'], True)
  if downsample:
    y = np_avgpool2(y)
  return np.maximum(np_conv_norm(y, p['conv3'], False) + shortcut, 0)


@pytest.mark.parametrize('downsample,project', [(True, True), (False, True), (False, False)])
def test_bottleneck_matches_numpy(downsample, project):
  cin = 64 if project else 128
  block = build_random(lambda: resnet.Bottleneck(cin, 32, downsample=downsample, project=project,
                                                 rngs=nnx.Rngs(0)), seed=5)
  x = np.maximum(np.random.RandomState(5).randn(1, 4, 6, cin), 0).astype(np.float32)
  got = np.asarray(block(jnp.asarray(x)))
  assert got.shape == ((1, 2, 3, 128) if downsample else (1, 4, 6, 128))
  np.testing.assert_allclose(got, np_bottleneck(x, pure_params(block), downsample), rtol=1e-4, atol=1e-4)


# --- the whole lite ResNet on reference A ----------------------------------------------------------


def tf_resnet_numpy(v, image):
  """The original lite_resnet50 on one image with the TF variables (names of reference A), in numpy."""
  gn = lambda x, name: np_groupnorm(x, v[f'{name}/gamma'], v[f'{name}/beta'])
  conv = lambda x, name, stride=1: np_conv(
      x, np_weight_standardize(v[f'{name}/kernel']), stride,
      ((1, 1), (1, 1)) if stride > 1 else np_same_padding(v[f'{name}/kernel'].shape[0]))
  relu = lambda x: np.maximum(x, 0)
  x = image[None].astype(np.float64) - 0.5
  x = relu(gn(conv(x, f'{RS}/stem/conv2d', 2), f'{RS}/stem/GroupNorm_stem0'))
  x = relu(gn(conv(x, f'{RS}/stem/conv2d_1'), f'{RS}/stem/GroupNorm_stem1'))
  x = relu(gn(conv(x, f'{RS}/stem/conv2d_2'), f'{RS}/stem/GroupNorm_stem2'))
  x = np_avgpool2(x)
  out = {'stem': x}
  for g in (1, 2, 3):  # reference A has one block per group: conv2d (shortcut), conv2d_1..3
    s = f'{RS}/block_group{g}'
    down = g > 1
    shortcut = gn(conv(np_avgpool2(x) if down else x, f'{s}/conv2d'), f'{s}/GroupNorm')
    y = relu(gn(conv(x, f'{s}/conv2d_1'), f'{s}/GroupNorm_1'))
    y = relu(gn(conv(y, f'{s}/conv2d_2'), f'{s}/GroupNorm_2'))
    if down:
      y = np_avgpool2(y)
    x = relu(gn(conv(y, f'{s}/conv2d_3'), f'{s}/GroupNorm_3') + shortcut)
    out[f'stage{g}'] = x
  return out


def lite_resnet_params_from_tf(v):
  """Our LiteResNet((1, 1, 1)) params from TF names (written here, independently of merlot_jax.convert)."""
  cn = lambda conv, norm: {'conv': {'kernel': v[f'{conv}/kernel']},
                           'norm': {'scale': v[f'{norm}/gamma'], 'bias': v[f'{norm}/beta']}}
  stem = {i: cn(f'{RS}/stem/conv2d' + (f'_{i}' if i else ''), f'{RS}/stem/GroupNorm_stem{i}') for i in range(3)}
  stages = {}
  for g in range(3):
    s = f'{RS}/block_group{g + 1}'
    stages[g] = {0: {'proj': cn(f'{s}/conv2d', f'{s}/GroupNorm'),
                     **{f'conv{j}': cn(f'{s}/conv2d_{j}', f'{s}/GroupNorm_{j}') for j in (1, 2, 3)}}}
  return {'stem': stem, 'stages': stages}


@pytest.fixture(scope='module')
def golden(golden_dir):
  return (dict(np.load(golden_dir / 'variables.npz')), dict(np.load(golden_dir / 'inputs.npz')),
          dict(np.load(golden_dir / 'outputs.npz')))


def test_numpy_reference_resnet_reproduces_tf_golden(golden):
  """Validates the numpy reference itself against the original TF run (README: float64 re-derivation within
  4.3e-5 on this path)."""
  v, inputs, outputs = golden
  ref = tf_resnet_numpy(v, inputs['images'][0])
  assert max_rel(ref['stem'][0], outputs['debug_resnet_stem_img0']) < 1e-5
  for g in (1, 2, 3):
    assert max_rel(ref[f'stage{g}'][0], outputs[f'debug_resnet_block_group{g}_img0']) < 2e-5, g


def test_lite_resnet_matches_numpy_and_golden(golden):
  v, inputs, outputs = golden
  net = nnx.eval_shape(lambda: resnet.LiteResNet((1, 1, 1), 64, rngs=nnx.Rngs(0)))
  assert net.out_channels == 1024
  net = with_params(net, lite_resnet_params_from_tf(v))
  graphdef, state = nnx.split(net)
  run = fast_jit(lambda s, x: nnx.merge(graphdef, s)(x, return_intermediates=True))
  images = inputs['images'][:2]
  final, inter = run(state, jnp.asarray(images) - 0.5)
  assert final.shape == (2, 4, 6, 1024)
  assert inter['stem'].shape == (2, 16, 24, 64) and inter['stage1'].shape == (2, 16, 24, 256)
  assert inter['stage2'].shape == (2, 8, 12, 512) and inter['stage3'].shape == (2, 4, 6, 1024)
  np.testing.assert_array_equal(final, inter['stage3'])
  ref = tf_resnet_numpy(v, images[1])  # the second image (golden debug outputs only have image 0)
  for name in ('stem', 'stage1', 'stage2', 'stage3'):
    assert max_rel(inter[name][1], ref[name][0]) < 1e-4, name
  assert max_rel(inter['stem'][0], outputs['debug_resnet_stem_img0']) < 1e-4
  for g in (1, 2, 3):
    assert max_rel(inter[f'stage{g}'][0], outputs[f'debug_resnet_block_group{g}_img0']) < 1e-4


def test_lite_resnet_block_counts_and_shapes():
  net = nnx.eval_shape(lambda: resnet.LiteResNet((2, 1, 3), 64, rngs=nnx.Rngs(0)))
  assert [len(s) for s in net.stages] == [2, 1, 3]
  assert [b.proj is not None for s in net.stages for b in s] == [True, False, True, True, False, False]
  assert [b.downsample for s in net.stages for b in s] == [False, False, True, True, False, False]
  out = jax.eval_shape(lambda: resnet.LiteResNet((2, 1, 3), 64, rngs=nnx.Rngs(0))(jnp.zeros((1, 64, 96, 3))))
  assert out.shape == (1, 4, 6, 1024)
