"""Pre-LN transformer blocks stacked along a leading 'layers' axis, run by scan or a loop.

The stack stores every layer's parameters stacked ([layers, ...]) whether or not it scans, so the
checkpoint layout does not depend on `scan_layers`. A pass may run only the first `num_layers` layers:
MERLOT's language-only pass shares the joint encoder's first layers and its final LayerNorm.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from merlot_jax import sharding
from merlot_jax.config import CHOICES
from merlot_jax.models.layers import Attention, LayerNorm, Mlp, dropout

REMAT_POLICIES = {
    'full': None,  # recompute everything in the backward pass
    'dots_saveable': jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
}
assert {'none', *REMAT_POLICIES} == set(CHOICES['model.remat_policy'])  # 'none': no jax.checkpoint


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
  """Everything a stack needs to know (kept out of the config tree so stacks stay reusable)."""

  num_layers: int
  hidden: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  scan_layers: bool = True
  remat_policy: str = 'none'
  attention_impl: str = 'xla'


class Block(nnx.Module):
  """h += attn(LN(h)); h += mlp(LN(h)) (the original's utils/transformer.py)."""

  def __init__(self, spec: TransformerSpec, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, init_std=spec.init_std, dtype=spec.dtype)
    self.attn_ln = LayerNorm(spec.hidden, rngs=rngs, dtype=spec.dtype)
    self.attn = Attention(spec.hidden, spec.num_heads, impl=spec.attention_impl, **kw)
    self.mlp_ln = LayerNorm(spec.hidden, rngs=rngs, dtype=spec.dtype)
    self.mlp = Mlp(spec.hidden, spec.mlp_dim, **kw)
    self.dropout_rate = spec.dropout_rate

  def __call__(self, h: jax.Array, mask: jax.Array, rng: jax.Array | None, return_probs: bool
               ) -> tuple[jax.Array, jax.Array | None]:
    rng_attn, rng_mlp = (None, None) if rng is None else jax.random.split(rng)
    attn_out, probs = self.attn(self.attn_ln(h), mask, return_probs=return_probs)
    h = h + dropout(attn_out, self.dropout_rate, rng_attn)
    h = h + dropout(self.mlp(self.mlp_ln(h)), self.dropout_rate, rng_mlp)
    return sharding.constrain(h, ('batch', 'seq', 'embed')), probs


class TransformerStack(nnx.Module):
  """`num_layers` pre-LN blocks and a final LayerNorm."""

  def __init__(self, spec: TransformerSpec, *, rngs: nnx.Rngs):
    @nnx.split_rngs(splits=spec.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
    def make_layers(rngs: nnx.Rngs) -> Block:
      return Block(spec, rngs=rngs)

    self.layers = make_layers(rngs)
    self.final_ln = LayerNorm(spec.hidden, rngs=rngs, dtype=spec.dtype)
    self.spec = spec

  def __call__(self, x: jax.Array, valid: jax.Array, *, num_layers: int | None = None,
               dropout_rng: jax.Array | None = None, return_probs: bool = False
               ) -> tuple[jax.Array, jax.Array | None]:
    """x: [b, s, hidden]; valid: bool [b, s] (a pair attends iff both tokens are valid).

    Returns the final hidden states [b, s, hidden] and, with return_probs, the head-averaged attention
    probabilities [b, layers, s, s].
    """
    chex.assert_rank(x, 3)
    chex.assert_equal_shape_prefix((x, valid), 2)
    n = self.spec.num_layers if num_layers is None else num_layers
    if not 1 <= n <= self.spec.num_layers:
      raise ValueError(f'num_layers={n} but the stack has {self.spec.num_layers} layers')
    mask = valid[:, :, None] & valid[:, None, :]
    graphdef, params = nnx.split(self.layers)
    if n < self.spec.num_layers:
      params = jax.tree.map(lambda a: a[:n], params)

    def layer(h, inputs):
      layer_params, index = inputs
      rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
      return nnx.merge(graphdef, layer_params)(h, mask, rng, return_probs)

    if self.spec.remat_policy != 'none':
      layer = jax.checkpoint(layer, policy=REMAT_POLICIES[self.spec.remat_policy],
                             prevent_cse=not self.spec.scan_layers)
    h = x.astype(self.spec.dtype)
    if self.spec.scan_layers:
      h, probs = jax.lax.scan(layer, h, (params, jnp.arange(n)))
    else:
      per_layer = []
      for i in range(n):
        h, p = layer(h, (jax.tree.map(lambda a, i=i: a[i], params), i))
        per_layer.append(p)
      probs = jnp.stack(per_layer) if return_probs else None
    if return_probs:
      probs = jnp.moveaxis(probs, 0, 1)
    return self.final_ln(h), probs
