"""Basic layers against plain-numpy references of the original's math (utils/transformer.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merlot_jax.models import layers
from tests.models.testlib import build_random, np_attention, np_gelu, np_layernorm, pure_params


def test_dense_matches_numpy_and_declares_axes():
  d = build_random(lambda: layers.Dense(5, 7, ('embed', 'mlp'), rngs=nnx.Rngs(0)), seed=1)
  p = pure_params(d)
  x = np.random.RandomState(0).randn(3, 4, 5).astype(np.float32)
  np.testing.assert_allclose(d(jnp.asarray(x)), x @ p['kernel'] + p['bias'], rtol=1e-5, atol=1e-6)
  assert d.kernel.out_sharding == ('embed', 'mlp') and d.bias.out_sharding == ('mlp',)
  assert d.kernel[...].dtype == jnp.float32
  nobias = nnx.eval_shape(lambda: layers.Dense(5, 7, (None, None), rngs=nnx.Rngs(0), use_bias=False))
  assert nobias.bias is None


def test_dense_bfloat16_computes_in_bfloat16_with_float32_params():
  d = build_random(lambda: layers.Dense(8, 8, (None, None), rngs=nnx.Rngs(0), dtype=jnp.bfloat16), seed=2)
  x = np.random.RandomState(0).randn(2, 8).astype(np.float32)
  y = d(jnp.asarray(x))
  assert y.dtype == jnp.bfloat16 and d.kernel[...].dtype == jnp.float32
  p = pure_params(d)
  np.testing.assert_allclose(np.asarray(y, np.float32), x @ p['kernel'] + p['bias'], rtol=3e-2, atol=3e-2)


def test_layernorm_matches_numpy_biased_variance_eps_1e5():
  ln = build_random(lambda: layers.LayerNorm(16, rngs=nnx.Rngs(0)), seed=3)
  p = pure_params(ln)
  rng = np.random.RandomState(0)
  # Rows with tiny variance (1e-6 << eps = 1e-5) make the epsilon visible; large offsets test stability.
  x = np.concatenate([rng.randn(4, 16), 3.0 + 1e-3 * rng.randn(4, 16), 100 + rng.randn(2, 16)]).astype(np.float32)
  got = np.asarray(ln(jnp.asarray(x)))
  np.testing.assert_allclose(got, np_layernorm(x, p['scale'], p['bias'], eps=1e-5), rtol=1e-4, atol=1e-4)
  wrong_eps = np_layernorm(x, p['scale'], p['bias'], eps=1e-6)
  assert np.max(np.abs(got[4:8] - wrong_eps[4:8])) > 0.1  # the test can tell the epsilon apart
  assert ln.scale.out_sharding == ('replicated',)


def test_layernorm_outputs_compute_dtype_but_normalises_in_float32():
  ln = build_random(lambda: layers.LayerNorm(8, rngs=nnx.Rngs(0), dtype=jnp.bfloat16), seed=4)
  x = jnp.asarray(np.random.RandomState(1).randn(3, 8), jnp.bfloat16)
  y = ln(x)
  assert y.dtype == jnp.bfloat16
  p = pure_params(ln)
  np.testing.assert_allclose(np.asarray(y, np.float32), np_layernorm(np.asarray(x, np.float32), p['scale'], p['bias']),
                             rtol=2e-2, atol=2e-2)


def test_gelu_is_exact_erf_form():
  x = np.linspace(-6, 6, 1001).astype(np.float32)
  got = np.asarray(layers.gelu(jnp.asarray(x)))
  np.testing.assert_allclose(got, np_gelu(x), rtol=1e-6, atol=1e-6)
  tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  assert np.max(np.abs(got - tanh_form)) > 1e-4  # and not the tanh approximation


def test_dropout_identity_in_eval_and_inverted_scaling_in_training():
  x = jnp.asarray(np.random.RandomState(0).rand(200, 100).astype(np.float32) + 1)
  assert layers.dropout(x, 0.3, None) is x
  assert layers.dropout(x, 0.0, jax.random.key(0)) is x
  y = np.asarray(layers.dropout(x, 0.25, jax.random.key(0)))
  kept = y != 0
  assert abs(kept.mean() - 0.75) < 0.01  # 20,000 draws: the std of the kept fraction is 0.003
  np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  y2 = np.asarray(layers.dropout(x, 0.25, jax.random.key(1)))
  assert not np.array_equal(y, y2)


def _scores_inputs(seed=0, b=2, s=6, h=3, dh=4):
  rng = np.random.RandomState(seed)
  q = rng.randn(b, s, h, dh).astype(np.float32)
  k = rng.randn(b, s, h, dh).astype(np.float32)
  valid = np.ones((b, s), bool)
  valid[0, 4:] = False  # two padding tokens in the first sequence
  return q, k, valid


def test_attention_weights_match_numpy_and_padding_queries_are_uniform():
  q, k, valid = _scores_inputs()
  mask = valid[:, :, None] & valid[:, None, :]
  probs = np.asarray(layers.attention_weights(jnp.asarray(q), jnp.asarray(k), jnp.asarray(mask)))
  assert probs.dtype == np.float32 and probs.shape == (2, 3, 6, 6)
  scores = np.einsum('bqhd,bkhd->bhqk', q.astype(np.float64), k) / 2.0
  scores = np.where(mask[:, None], scores, -1e10)
  ref = np.exp(scores - scores.max(-1, keepdims=True))
  ref /= ref.sum(-1, keepdims=True)
  np.testing.assert_allclose(probs, ref, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(probs))
  # A valid query gives exactly zero weight to padding keys ...
  assert np.all(probs[0, :, :4, 4:] == 0)
  # ... and a padding query (every key masked) attends uniformly over all 6 keys, not NaN.
  np.testing.assert_allclose(probs[0, :, 4:, :], 1 / 6, rtol=1e-6)
  np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-6)


def test_attention_weights_in_bfloat16_stay_finite_for_padding():
  q, k, valid = _scores_inputs(seed=1)
  mask = valid[:, :, None] & valid[:, None, :]
  probs = layers.attention_weights(jnp.asarray(q, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16), jnp.asarray(mask))
  assert probs.dtype == jnp.float32
  probs = np.asarray(probs)
  assert np.all(np.isfinite(probs))
  np.testing.assert_allclose(probs[0, :, 4:, :], 1 / 6, rtol=1e-6)


@pytest.fixture(scope='module')
def attention():
  return build_random(lambda: layers.Attention(16, 4, rngs=nnx.Rngs(0)), seed=5)


@pytest.mark.parametrize('impl', ['xla', 'fused'])
def test_attention_module_matches_numpy(attention, impl):
  attention.impl = impl
  try:
    rng = np.random.RandomState(2)
    x = rng.randn(2, 7, 16).astype(np.float32)
    valid = np.ones((2, 7), bool)
    valid[1, 3:] = False
    mask = jnp.asarray(valid[:, :, None] & valid[:, None, :])
    ref_out, ref_probs = np_attention(x, pure_params(attention), valid, 4)
    out, probs = attention(jnp.asarray(x), mask)
    assert probs is None
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-5)  # padding rows included
    out2, probs2 = attention(jnp.asarray(x), mask, return_probs=True)
    np.testing.assert_allclose(out2, ref_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs2, ref_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(probs2)[1, 3:], 1 / 7, rtol=1e-6)
  finally:
    attention.impl = 'xla'


def test_mlp_matches_numpy():
  mlp = build_random(lambda: layers.Mlp(8, 32, rngs=nnx.Rngs(0)), seed=7)
  p = pure_params(mlp)
  x = np.random.RandomState(4).randn(2, 3, 8).astype(np.float32)
  inner = np_gelu(x @ p['intermediate']['kernel'] + p['intermediate']['bias'])
  ref = inner @ p['output']['kernel'] + p['output']['bias']
  np.testing.assert_allclose(mlp(jnp.asarray(x)), ref, rtol=1e-4, atol=1e-5)
  assert mlp.intermediate.kernel.out_sharding == ('embed', 'mlp')
  assert mlp.output.kernel.out_sharding == ('mlp', 'embed')


def fake_cudnn(monkeypatch):
  """Stands in for jax's cuDNN kernel on CPU: checks what the 'cudnn' impl passes (implementation='cudnn',
  bfloat16 q/k/v), computes jax's 'xla' attention and writes a kernel-specific value (123) into every query row
  whose keys are all masked, which the caller must replace by the original's uniform result."""
  real = jax.nn.dot_product_attention

  def fake(q, k, v, *, mask, implementation):
    assert implementation == 'cudnn' and q.dtype == k.dtype == v.dtype == jnp.bfloat16, (implementation, q.dtype)
    ctx = real(q, k, v, mask=mask, implementation='xla')
    return jnp.where(~jnp.any(mask[:, 0], -1)[:, :, None, None], jnp.asarray(123, ctx.dtype), ctx)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', fake)


@pytest.mark.parametrize('impl, dtype', [('xla', jnp.float32), ('fused', jnp.float32), ('cudnn', jnp.bfloat16)])
def test_padding_query_output_is_the_mean_of_v_over_all_keys(monkeypatch, impl, dtype):
  """A query whose keys are all masked attends uniformly (MASK_FILL), so its context is mean_k v[k], in plain
  numpy; for 'cudnn', whatever the kernel puts there is replaced by that mean."""
  if impl == 'cudnn':
    fake_cudnn(monkeypatch)
  attn = build_random(lambda: layers.Attention(16, 4, rngs=nnx.Rngs(0), dtype=dtype, impl=impl), seed=6)
  p = pure_params(attn)
  rng = np.random.RandomState(3)
  x = rng.randn(2, 6, 16).astype(np.float32)
  valid = np.ones((2, 6), bool)
  valid[0, 2:] = False
  out, _ = attn(jnp.asarray(x), jnp.asarray(valid[:, :, None] & valid[:, None, :]))
  v = x.astype(np.float64) @ p['value']['kernel'] + p['value']['bias']
  ref = v[0].mean(0) @ p['out']['kernel'] + p['out']['bias']  # every key (valid or not) weighs 1/6
  tol = 1e-5 if dtype == jnp.float32 else 5e-2
  np.testing.assert_allclose(np.asarray(out[0, 2:], np.float32), np.broadcast_to(ref, (4, 16)), rtol=tol, atol=tol)
  ref_out, _ = np_attention(x, p, valid, 4)
  np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, rtol=tol, atol=tol)  # valid queries too


def test_uniform_padding_queries_replaces_only_rows_without_keys():
  rng = np.random.RandomState(4)
  ctx, v = rng.randn(2, 5, 3, 4).astype(np.float32), rng.randn(2, 5, 3, 4).astype(np.float32)
  mask = np.ones((2, 5, 5), bool)
  mask[1, 3:] = False  # queries 3, 4 of the second example see no key
  mask[0, :, 4] = False  # a masked key alone changes nothing
  got = np.asarray(layers.uniform_padding_queries(jnp.asarray(ctx), jnp.asarray(v), jnp.asarray(mask)))
  want = ctx.copy()
  want[1, 3:] = v[1].mean(0)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(got[0], ctx[0])


def test_cudnn_impl_on_cpu_raises_naming_the_option():
  attn = build_random(lambda: layers.Attention(16, 2, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, impl='cudnn'), seed=8)
  mask = jnp.ones((1, 4, 4), bool)
  with pytest.raises(RuntimeError, match=r"config.model.attention_impl = 'cudnn'.*CUDA GPU.*'cpu'"):
    attn(jnp.ones((1, 4, 16), jnp.float32), mask)


def test_cudnn_impl_refuses_float32():
  with pytest.raises(ValueError, match="bfloat16/float16.*config.model.dtype = 'bfloat16'"):
    layers.Attention(16, 2, rngs=nnx.Rngs(0), impl='cudnn')
