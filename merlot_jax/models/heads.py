"""Output heads: masked-LM head (tied embeddings), contrastive projections, temporal pair classifiers, and the
downstream ones: multiple-choice option scorers and the open-ended QA answer classifier."""

from __future__ import annotations

import math

import chex
import einops
import jax
import jax.numpy as jnp
from flax import nnx

from merlot_jax.models.layers import Dense, LayerNorm, dropout, gelu, l2_normalize, param, truncated_normal


class LMHead(nnx.Module):
  """dense + GELU -> LayerNorm -> x @ word_embeddings^T + bias."""

  def __init__(self, hidden: int, vocab_size: int, *, rngs: nnx.Rngs, init_std: float, dtype=jnp.float32):
    self.projection = Dense(hidden, hidden, ('embed', None), rngs=rngs, init_std=init_std, dtype=dtype)
    self.norm = LayerNorm(hidden, rngs=rngs, dtype=dtype)
    self.output_bias = param(rngs, nnx.initializers.zeros, (vocab_size,), ('vocab',))
    self.dtype = dtype

  def __call__(self, h: jax.Array, word_embeddings: jax.Array) -> jax.Array:
    """h: [..., hidden]; word_embeddings: [vocab, hidden] -> float32 logits [..., vocab]."""
    h = self.norm(gelu(self.projection(h)))
    logits = jnp.einsum('...d,vd->...v', h, word_embeddings.astype(self.dtype),
                        preferred_element_type=jnp.float32)
    return logits + self.output_bias[...]


class ContrastiveProjection(nnx.Module):
  """The original's project_and_norm: dense (width C) + GELU -> LayerNorm -> dense C -> L2 normalise."""

  def __init__(self, hidden: int, size: int, *, rngs: nnx.Rngs, init_std: float, dtype=jnp.float32):
    self.intermediate = Dense(hidden, size, ('embed', None), rngs=rngs, init_std=init_std, dtype=dtype)
    self.norm = LayerNorm(size, rngs=rngs, dtype=dtype)
    self.out = Dense(size, size, (None, None), rngs=rngs, init_std=init_std, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return l2_normalize(self.out(self.norm(gelu(self.intermediate(x)))))


def pairwise_concat(xa: jax.Array, xb: jax.Array) -> jax.Array:
  """All ordered pairs within a group: [g, n, d] x [g, n, d] -> [g * n * n, 2d], row g*n*n + i*n + j
  holding [xa_i, xb_j]."""
  chex.assert_equal_shape((xa, xb))
  n = xa.shape[1]
  a = einops.repeat(xa, 'g i d -> g i j d', j=n)
  b = einops.repeat(xb, 'g j d -> g i j d', i=n)
  return einops.rearrange(jnp.concatenate([a, b], -1), 'g i j d -> (g i j) d')


class TemporalHead(nnx.Module):
  """Classifies every ordered pair (i, j) of a group as other video / same / before / after."""

  def __init__(self, hidden: int, *, rngs: nnx.Rngs, init_std: float, dtype=jnp.float32):
    self.intermediate = Dense(2 * hidden, hidden, (None, 'embed'), rngs=rngs, init_std=init_std, dtype=dtype)
    self.norm = LayerNorm(hidden, rngs=rngs, dtype=dtype)
    self.logits = Dense(hidden, 4, ('embed', None), rngs=rngs, init_std=init_std, dtype=dtype)

  def __call__(self, xa: jax.Array, xb: jax.Array) -> jax.Array:
    """xa, xb: [g, n, hidden] -> float32 logits [g * n * n, 4]."""
    h = self.norm(gelu(self.intermediate(pairwise_concat(xa, xb))))
    return self.logits(h).astype(jnp.float32)


class MultipleChoiceHead(nnx.Module):
  """One or more scoring heads (stacked): [n, hidden] states + head index [n] -> float32 logits [n]."""

  def __init__(self, hidden: int, num_heads: int, num_options: int, *, rngs: nnx.Rngs, init_std: float,
               dropout_rate: float, dtype=jnp.float32):
    mid = hidden // 2
    prior = 1.0 / num_options
    self.kernel0 = param(rngs, truncated_normal(init_std), (num_heads, hidden, mid), (None, 'embed', None))
    self.bias0 = param(rngs, nnx.initializers.zeros, (num_heads, mid), (None, None))
    self.kernel1 = param(rngs, truncated_normal(init_std), (num_heads, mid), (None, None))
    self.bias1 = param(rngs, nnx.initializers.constant(-math.log((1 - prior) / prior)), (num_heads,), (None,))
    self.dropout_rate, self.dtype = dropout_rate, dtype

  def __call__(self, x: jax.Array, head: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
    chex.assert_rank(x, 2)
    chex.assert_shape(head, (x.shape[0],))
    r0, r1 = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    x = dropout(x.astype(self.dtype), self.dropout_rate, r0)
    h = jnp.einsum('nd,kdm->nkm', x, self.kernel0[...].astype(self.dtype)) + self.bias0[...].astype(self.dtype)
    h = dropout(gelu(h), self.dropout_rate, r1)
    logits = jnp.einsum('nkm,km->nk', h, self.kernel1[...].astype(self.dtype), preferred_element_type=jnp.float32)
    logits = logits + self.bias1[...]
    return jnp.take_along_axis(logits, head[:, None], axis=1)[:, 0]  # every head is computed: there are 1 or 2


class AnswerHead(nnx.Module):
  """Open-ended QA: a state [n, hidden] -> float32 logits [n, num_answers] of a softmax over an answer vocabulary.

  The original's multiple-choice head (downstream/vcr `answer_cls`: dropout -> dense to hidden/2 + GELU ->
  dropout -> dense) with one output per answer instead of one score per option; the original released no
  open-ended head. The output bias starts at zero (a uniform softmax).
  """

  def __init__(self, hidden: int, num_answers: int, *, rngs: nnx.Rngs, init_std: float, dropout_rate: float,
               dtype=jnp.float32):
    self.intermediate = Dense(hidden, hidden // 2, ('embed', None), rngs=rngs, init_std=init_std, dtype=dtype)
    self.logits = Dense(hidden // 2, num_answers, (None, 'vocab'), rngs=rngs, init_std=init_std, dtype=dtype)
    self.dropout_rate = dropout_rate

  def __call__(self, x: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
    chex.assert_rank(x, 2)
    r0, r1 = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    h = dropout(gelu(self.intermediate(dropout(x, self.dropout_rate, r0))), self.dropout_rate, r1)
    return self.logits(h).astype(jnp.float32)
