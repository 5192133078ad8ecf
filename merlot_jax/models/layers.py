"""Basic layers with logical axis names: dense, LayerNorm, attention, MLP.

Parameters are float32 and carry logical axis names (`out_sharding` metadata) that
`merlot_jax.sharding` maps onto the device mesh. Activations are computed in the module's `dtype`;
normalisations and softmax run in float32, as in the original.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from merlot_jax import sharding

MASK_FILL = -1e10  # the original replaces masked scores by -1e10, so fully masked rows are uniform
L2_EPS = 1e-12  # tf.math.l2_normalize's epsilon on the squared norm


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / ||x|| over the last axis, as tf.math.l2_normalize (float32)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), L2_EPS))


def truncated_normal(std: float) -> nnx.Initializer:
  """The original's `tf.truncated_normal_initializer(stddev=std)` (truncated at 2 std)."""
  return nnx.initializers.truncated_normal(stddev=std)


def param(rngs: nnx.Rngs, init: nnx.Initializer, shape: Sequence[int], axes: Sequence[str | None]) -> nnx.Param:
  """A float32 parameter that records its logical axis names.

  Placement happens once, for the whole state, in train/state.py (jit with out_shardings), so the
  variable itself is not sharded eagerly.
  """
  chex.assert_equal(len(shape), len(axes))
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), out_sharding=tuple(axes),
                   eager_sharding=False)


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as the original."""
  return jax.nn.gelu(x, approximate=False)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout; identity when `rng` is None (evaluation) or the rate is 0."""
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Dense(nnx.Module):
  """y = x @ kernel + bias with a [in, out] kernel named by logical axes."""

  def __init__(self, in_features: int, out_features: int, axes: tuple[str | None, str | None], *,
               rngs: nnx.Rngs, init_std: float = 0.02, kernel_init: nnx.Initializer | None = None,
               use_bias: bool = True, dtype=jnp.float32):
    kernel_init = truncated_normal(init_std) if kernel_init is None else kernel_init
    self.kernel = param(rngs, kernel_init, (in_features, out_features), axes)
    self.bias = param(rngs, nnx.initializers.zeros, (out_features,), axes[1:]) if use_bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis in float32 (biased variance, eps 1e-5 as the original)."""

  def __init__(self, features: int, *, rngs: nnx.Rngs, eps: float = 1e-5, dtype=jnp.float32):
    self.scale = param(rngs, nnx.initializers.ones, (features,), ('replicated',))
    self.bias = param(rngs, nnx.initializers.zeros, (features,), ('replicated',))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
    return y.astype(self.dtype)


def attention_weights(q: jax.Array, k: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention probabilities [b, heads, q, k] in float32.

  Masked scores are replaced by MASK_FILL (not added to), exactly as the original, so a query whose
  keys are all masked (a padding token) attends uniformly and stays finite.
  """
  scale = q.shape[-1] ** -0.5
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask[:, None], scores, MASK_FILL)
  return jax.nn.softmax(scores, axis=-1)


def uniform_padding_queries(ctx: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """ctx [b, q, heads, dh] with every query that has no unmasked key replaced by the mean of v over all keys:
  what the original's MASK_FILL softmax gives such a query (uniform weights), whatever a kernel computed there."""
  no_key = ~jnp.any(mask, axis=-1)[:, :, None, None]
  mean_v = jnp.mean(v.astype(jnp.float32), axis=1, keepdims=True).astype(ctx.dtype)
  return jnp.where(no_key, mean_v, ctx)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """cuDNN flash attention (`jax.nn.dot_product_attention(implementation='cudnn')`): [b, s, heads, dh] in
  bfloat16 or float16 only, CUDA GPUs only.

  jax passes the boolean mask to cuDNN as an additive bias of -2**41 (not a replacement of the scores by
  MASK_FILL); a valid query's masked keys still get weight 0, but what the kernel gives a query whose keys are
  all masked is cuDNN's business, so those rows are set to the original's uniform result afterwards.
  """
  try:
    ctx = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation='cudnn')
  except (RuntimeError, NotImplementedError) as e:  # no cuDNN (CPU/TPU backend), or a shape cuDNN cannot run
    raise RuntimeError(f"config.model.attention_impl = 'cudnn' cannot run here ({type(e).__name__}: {e}); it needs "
                       f"a CUDA GPU (backend now: {jax.default_backend()!r}, q {q.dtype} {q.shape}): use 'xla' "
                       "or 'fused' elsewhere") from e
  return uniform_padding_queries(ctx, v, mask)


class Attention(nnx.Module):
  """Multi-head self-attention; heads are split from channels as [head, head_dim].

  impl: 'xla' the original's math (explicit softmax, MASK_FILL); 'fused' jax.nn.dot_product_attention with its
  default implementation; 'cudnn' its cuDNN flash kernel (`cudnn_attention`, needs dtype bfloat16 or float16).
  All three give a query whose keys are all masked (padding) the mean of v. Probabilities (return_probs) always
  come from the 'xla' math.
  """

  def __init__(self, hidden: int, num_heads: int, *, rngs: nnx.Rngs, init_std: float = 0.02,
               dtype=jnp.float32, impl: str = 'xla'):
    if impl == 'cudnn' and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
      raise ValueError(f"attention impl 'cudnn' takes bfloat16/float16 inputs, but dtype is {jnp.dtype(dtype)}: "
                       "set config.model.dtype = 'bfloat16'")
    dense = lambda axes: Dense(hidden, hidden, axes, rngs=rngs, init_std=init_std, dtype=dtype)
    self.query, self.key, self.value = dense(('embed', 'heads')), dense(('embed', 'heads')), dense(('embed', 'heads'))
    self.out = dense(('heads', 'embed'))
    self.num_heads = num_heads
    self.impl = impl
    self.dtype = dtype

  def __call__(self, x: jax.Array, mask: jax.Array, *, return_probs: bool = False
               ) -> tuple[jax.Array, jax.Array | None]:
    """x: [b, s, hidden]; mask: bool [b, s, s]. Returns (output, head-mean probs [b, s, s] or None)."""
    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, -1)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    probs_mean = None
    if return_probs or self.impl == 'xla':
      probs = attention_weights(q, k, mask)
      ctx = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(self.dtype), v)
      probs_mean = jnp.mean(probs, axis=1) if return_probs else None
    elif self.impl == 'cudnn':
      ctx = cudnn_attention(q, k, v, mask)
    else:
      ctx = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
    ctx = ctx.reshape(*x.shape[:-1], -1)
    return self.out(ctx), probs_mean


class Mlp(nnx.Module):
  """dense -> exact GELU -> dense."""

  def __init__(self, hidden: int, mlp_dim: int, *, rngs: nnx.Rngs, init_std: float = 0.02, dtype=jnp.float32):
    self.intermediate = Dense(hidden, mlp_dim, ('embed', 'mlp'), rngs=rngs, init_std=init_std, dtype=dtype)
    self.output = Dense(mlp_dim, hidden, ('mlp', 'embed'), rngs=rngs, init_std=init_std, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = gelu(self.intermediate(x))
    return self.output(sharding.constrain(h, ('batch', 'seq', 'mlp')))
