"""TransformerStack: numpy reference of the original's pre-LN transformer, scan == loop == remat (outputs and
gradients), the `num_layers` subset, padding, dropout."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merlot_jax.models.transformer import TransformerSpec, TransformerStack
from tests.models.test_layers import fake_cudnn
from tests.models.testlib import build_random, fast_jit, np_stack, pure_params, with_params

SPEC = TransformerSpec(num_layers=2, hidden=16, num_heads=4, mlp_dim=32)
B, S = 2, 7


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  x = rng.randn(B, S, SPEC.hidden).astype(np.float32)
  valid = np.ones((B, S), bool)
  valid[1, 4:] = False  # three padding tokens in the second sequence
  return x, valid


@pytest.fixture(scope='module')
def params():
  return pure_params(build_random(lambda: TransformerStack(SPEC, rngs=nnx.Rngs(0)), seed=11))


_COMPILED = {}


def run(spec, params, x, valid, *, num_layers=None, return_probs=False, rng=None):
  """The stack's forward, jitted once per (spec, call options) and shared by the tests -> numpy."""
  key = (spec, num_layers, return_probs, rng is None)
  if key not in _COMPILED:
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: TransformerStack(spec, rngs=nnx.Rngs(0))))

    def forward(p, x, valid, rng):
      state = jax.tree.map(lambda a: a, abstract)
      nnx.replace_by_pure_dict(state, p)
      return nnx.merge(graphdef, state)(x, valid, num_layers=num_layers, return_probs=return_probs,
                                        dropout_rng=rng)

    _COMPILED[key] = fast_jit(forward)
  return jax.tree.map(np.asarray, _COMPILED[key](params, x, valid, rng))


def test_params_are_stacked_on_a_leading_layers_axis(params):
  stack = nnx.eval_shape(lambda: TransformerStack(SPEC, rngs=nnx.Rngs(0)))
  k = stack.layers.mlp.intermediate.kernel
  assert k.shape == (2, 16, 32) and k.out_sharding == ('layers', 'embed', 'mlp')
  assert stack.layers.attn.query.kernel.out_sharding == ('layers', 'embed', 'heads')
  assert stack.layers.attn.out.kernel.out_sharding == ('layers', 'heads', 'embed')
  assert stack.layers.attn_ln.scale.shape == (2, 16)
  assert stack.final_ln.scale.shape == (16,)
  # The layout does not depend on scan_layers (checkpoints are interchangeable).
  loop = nnx.eval_shape(lambda: TransformerStack(dataclasses.replace(SPEC, scan_layers=False), rngs=nnx.Rngs(0)))
  shapes = lambda m: jax.tree.map(lambda a: a.shape, nnx.state(m, nnx.Param).to_pure_dict())
  assert shapes(loop) == shapes(stack)


def test_stack_matches_numpy_reference_including_padding(params):
  x, valid = _inputs()
  h, probs = run(SPEC, params, x, valid, return_probs=True)
  ref_h, ref_probs = np_stack(x, params, valid, SPEC.num_heads)
  np.testing.assert_allclose(h, ref_h, rtol=1e-4, atol=1e-4)
  assert probs.shape == (B, 2, S, S)
  np.testing.assert_allclose(probs, ref_probs, rtol=1e-4, atol=1e-6)
  # Padding queries attend uniformly (finite) in every layer; valid queries never see padding keys.
  np.testing.assert_allclose(probs[1, :, 4:, :], 1 / S, rtol=1e-6)
  assert np.all(probs[1, :, :4, 4:] == 0)
  assert np.all(np.isfinite(h))


def test_padding_content_does_not_reach_valid_tokens(params):
  x, valid = _inputs()
  h1, _ = run(SPEC, params, x, valid, return_probs=True)
  x2 = x.copy()
  x2[1, 4:] = 100 * np.random.RandomState(5).randn(3, SPEC.hidden)
  h2, _ = run(SPEC, params, x2, valid, return_probs=True)
  np.testing.assert_array_equal(h1[1, :4], h2[1, :4])
  np.testing.assert_array_equal(h1[0], h2[0])
  assert np.max(np.abs(h1[1, 4:] - h2[1, 4:])) > 1e-2


VARIANTS = [(scan, remat) for scan in (True, False) for remat in ('none', 'full', 'dots_saveable')]


@pytest.fixture(scope='module')
def variant_results(params):
  """Outputs, probabilities and gradients (w.r.t. params and input) of every scan x remat variant, with
  padding: one jitted value_and_grad per variant."""
  x, valid = _inputs(1)
  results = {}
  for scan, remat in VARIANTS:
    spec = dataclasses.replace(SPEC, scan_layers=scan, remat_policy=remat)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda spec=spec: TransformerStack(spec, rngs=nnx.Rngs(0))))

    def loss(p, x, valid, graphdef=graphdef, abstract=abstract):
      state = jax.tree.map(lambda a: a, abstract)
      nnx.replace_by_pure_dict(state, p)
      h, probs = nnx.merge(graphdef, state)(x, valid, return_probs=True)
      return jnp.sum(h * jnp.sin(jnp.arange(h.size, dtype=jnp.float32)).reshape(h.shape)), (h, probs)

    (_, (h, probs)), grads = fast_jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x, valid)
    results[scan, remat] = jax.tree.map(np.asarray, (h, probs, grads))
  return results


@pytest.mark.parametrize('scan,remat', VARIANTS[1:])
def test_scan_loop_and_remat_give_the_same_outputs_and_gradients(variant_results, scan, remat):
  h0, probs0, (gp0, gx0) = variant_results[True, 'none']
  h, probs, (gp, gx) = variant_results[scan, remat]
  np.testing.assert_allclose(h, h0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(probs, probs0, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gx, gx0, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gp0), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gradients_are_finite_and_nonzero_through_padding(variant_results):
  h, probs, (gp, gx) = variant_results[True, 'none']
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves((gp, gx)))
  assert all(np.any(g != 0) for g in jax.tree.leaves(gp))
  assert np.any(gx[1, 4:] != 0)  # a padding position still reaches its own output


def test_input_gradient_matches_finite_differences(params, variant_results):
  """Textbook check of the autodiff: d/de loss(x + e v) = <grad_x, v> (central difference)."""
  x, valid = _inputs(1)
  _, _, (_, gx) = variant_results[True, 'none']
  v = np.random.RandomState(9).randn(*x.shape).astype(np.float32)

  def loss(xx):
    h, _ = run(SPEC, params, xx.astype(np.float32), valid, return_probs=True)
    h = h.astype(np.float64)
    return np.sum(h * np.sin(np.arange(h.size)).reshape(h.shape))

  eps = 1e-2
  fd = (loss(x + eps * v) - loss(x - eps * v)) / (2 * eps)
  np.testing.assert_allclose(fd, np.sum(gx.astype(np.float64) * v), rtol=2e-2)


@pytest.mark.parametrize('scan', [True, False])
def test_num_layers_subset_equals_a_k_layer_stack_with_the_first_k_params(params, scan):
  x, valid = _inputs(2)
  spec = dataclasses.replace(SPEC, scan_layers=scan)
  for k in (1,):
    first_k = {'layers': jax.tree.map(lambda a, k=k: a[:k], params['layers']), 'final_ln': params['final_ln']}
    h_sub, probs_sub = run(spec, params, x, valid, num_layers=k, return_probs=True)
    h_small, probs_small = run(dataclasses.replace(spec, num_layers=k), first_k, x, valid, return_probs=True)
    np.testing.assert_allclose(h_sub, h_small, rtol=1e-6, atol=1e-6)
    assert probs_sub.shape == (B, k, S, S)
    np.testing.assert_allclose(probs_sub, probs_small, rtol=1e-6, atol=1e-7)
    ref, _ = np_stack(x, params, valid, SPEC.num_heads, num_layers=k)
    np.testing.assert_allclose(h_sub, ref, rtol=1e-4, atol=1e-4)
  # Perturbing the last layer leaves a 1-layer subset unchanged (and does change the full stack).
  perturbed = jax.tree.map(np.copy, params)
  perturbed['layers']['mlp']['output']['bias'][1] += np.random.RandomState(1).randn(SPEC.hidden)  # not a constant: LN
  h_a, _ = run(spec, params, x, valid, num_layers=1, return_probs=True)
  h_b, _ = run(spec, perturbed, x, valid, num_layers=1, return_probs=True)
  np.testing.assert_array_equal(h_a, h_b)
  h_full, _ = run(spec, perturbed, x, valid, return_probs=True)
  assert np.max(np.abs(h_full - run(spec, params, x, valid, return_probs=True)[0])) > 1e-3


@pytest.mark.parametrize('n', [0, 3, -1])
def test_num_layers_out_of_range_raises(params, n):
  stack = with_params(nnx.eval_shape(lambda: TransformerStack(SPEC, rngs=nnx.Rngs(0))), params)
  x, valid = _inputs()
  with pytest.raises(ValueError, match='num_layers'):
    stack(jnp.asarray(x), jnp.asarray(valid), num_layers=n)


def test_fused_attention_impl_matches_xla(params):
  x, valid = _inputs(3)
  h_xla, _ = run(SPEC, params, x, valid, return_probs=True)
  h_fused, probs = run(dataclasses.replace(SPEC, attention_impl='fused'), params, x, valid)
  assert probs is None
  np.testing.assert_allclose(h_fused, h_xla, rtol=1e-5, atol=1e-5)


def test_cudnn_attention_impl_matches_xla_in_bfloat16_outputs_and_gradients(params, monkeypatch):
  """'cudnn' (jax's kernel replaced by a CPU stand-in that writes its own value into padding queries' rows)
  against 'xla', both bfloat16: same outputs, padding rows included, and the same gradients."""
  fake_cudnn(monkeypatch)
  x, valid = _inputs(4)

  def value_and_grads(impl):
    spec = dataclasses.replace(SPEC, dtype=jnp.bfloat16, attention_impl=impl)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: TransformerStack(spec, rngs=nnx.Rngs(0))))

    def loss(p):
      state = jax.tree.map(lambda a: a, abstract)
      nnx.replace_by_pure_dict(state, p)
      h, _ = nnx.merge(graphdef, state)(jnp.asarray(x), jnp.asarray(valid))
      h = h.astype(jnp.float32)
      return jnp.sum(h * jnp.sin(jnp.arange(h.size, dtype=jnp.float32)).reshape(h.shape)), h

    return jax.tree.map(np.asarray, fast_jit(jax.value_and_grad(loss, has_aux=True))(params))

  (_, h_xla), g_xla = value_and_grads('xla')
  (_, h_cudnn), g_cudnn = value_and_grads('cudnn')
  np.testing.assert_allclose(h_cudnn, h_xla, rtol=5e-2, atol=5e-2)
  for a, b in zip(jax.tree.leaves(g_cudnn), jax.tree.leaves(g_xla), strict=True):
    np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-2 * max(1.0, float(np.abs(b).max())))


def test_dropout_only_with_an_rng_and_identical_in_scan_and_loop(params):
  x, valid = _inputs(3)
  spec = dataclasses.replace(SPEC, dropout_rate=0.3)
  h_ref, _ = run(dataclasses.replace(SPEC, attention_impl='fused'), params, x, valid)
  h_eval, _ = run(dataclasses.replace(spec, attention_impl='fused'), params, x, valid)
  np.testing.assert_array_equal(h_eval, h_ref)  # no rng: no dropout
  rng = jax.random.key(3)
  h_scan, _ = run(spec, params, x, valid, rng=rng)
  h_loop, _ = run(dataclasses.replace(spec, scan_layers=False), params, x, valid, rng=rng)
  assert np.max(np.abs(h_scan - h_eval)) > 1e-2
  np.testing.assert_allclose(h_scan, h_loop, rtol=1e-5, atol=1e-5)  # per-layer keys: fold_in(rng, layer)
  h_other, _ = run(spec, params, x, valid, rng=jax.random.key(4))
  assert not np.allclose(h_other, h_scan)
