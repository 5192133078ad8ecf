"""MERLOT's hybrid ViT: lite ResNet patches, 2 CLS slots, 2-D position table, pooled patch grid."""

from __future__ import annotations

import dataclasses

import chex
import einops
import jax
import jax.numpy as jnp
from flax import nnx

from merlot_jax.models.layers import Dense, LayerNorm, param, truncated_normal
from merlot_jax.models.resnet import LiteResNet
from merlot_jax.models.transformer import TransformerSpec, TransformerStack


class PositionTable2D(nnx.Module):
  """The original's `position_embedder2d`: a [side, side, hidden] grid indexed (row, col), plus one
  row per CLS slot. Returns [num_cls + h * w, hidden], CLS rows first, the grid row-major."""

  def __init__(self, num_cls: int, side: int, hidden: int, *, rngs: nnx.Rngs, init_std: float = 0.02):
    self.grid = param(rngs, truncated_normal(init_std), (side, side, hidden), (None, None, 'embed'))
    self.cls = param(rngs, truncated_normal(init_std), (num_cls, hidden), (None, 'embed'))

  def __call__(self, h: int, w: int) -> jax.Array:
    grid = einops.rearrange(self.grid[:h, :w], 'h w d -> (h w) d')
    return jnp.concatenate([self.cls[...], grid], axis=0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VisionOutput:
  cls: jax.Array  # [n, num_cls, hidden]; CLS 0 feeds the joint encoder, CLS 1 is the contrastive target
  pooled: jax.Array  # [n, pooled_h * pooled_w, hidden]: patch states average-pooled, row-major
  hidden: jax.Array  # [n, num_cls + grid_h * grid_w, hidden]: ViT output after its final LayerNorm
  patches: jax.Array  # [n, grid_h, grid_w, hidden]: projected ResNet features
  tokens: jax.Array  # [n, num_cls + grid_h * grid_w, hidden]: ViT input after the pre-LayerNorm
  resnet: dict[str, jax.Array]  # ResNet stem and stage outputs


class HybridViT(nnx.Module):
  """images in [0, 1] -> ResNet -> 1x1 projection -> [CLS x2, patches] + 2-D positions -> LN -> ViT."""

  def __init__(self, m, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.resnet = LiteResNet(m.resnet_blocks, m.resnet_width, rngs=rngs, dtype=dtype)
    # A 1x1 conv with bias (the original's conv_postresnet_proj), with its fan-in init.
    self.proj = Dense(self.resnet.out_channels, m.hidden_size, (None, 'embed'), rngs=rngs, dtype=dtype,
                      kernel_init=nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'))
    self.pos = PositionTable2D(m.num_cls_tokens, m.max_2d_positions, m.hidden_size, rngs=rngs, init_std=m.init_std)
    self.pre_ln = LayerNorm(m.hidden_size, rngs=rngs, dtype=dtype)
    self.transformer = TransformerStack(TransformerSpec(
        m.num_vision_layers, m.hidden_size, m.num_heads, m.mlp_dim, m.dropout_rate, m.init_std, dtype,
        m.scan_layers, m.remat_policy, m.attention_impl), rngs=rngs)
    self.num_cls = m.num_cls_tokens
    self.pool = m.pool_size

  def __call__(self, images: jax.Array, *, dropout_rng: jax.Array | None = None) -> VisionOutput:
    """images: float [n, H, W, 3] in [0, 1]."""
    chex.assert_rank(images, 4)
    features, resnet = self.resnet(images - 0.5, return_intermediates=True)  # no std normalisation
    patches = self.proj(features)
    n, gh, gw, d = patches.shape
    tokens = jnp.concatenate([jnp.zeros((n, self.num_cls, d), patches.dtype),
                              einops.rearrange(patches, 'n h w d -> n (h w) d')], axis=1)
    tokens = self.pre_ln(tokens + self.pos(gh, gw))
    valid = jnp.ones(tokens.shape[:2], bool)
    hidden, _ = self.transformer(tokens, valid, dropout_rng=dropout_rng)
    grid = einops.rearrange(hidden[:, self.num_cls:], 'n (h w) d -> n h w d', h=gh)
    pooled = einops.reduce(grid, 'n (h p) (w q) d -> n (h w) d', 'mean', p=self.pool, q=self.pool)
    return VisionOutput(hidden[:, :self.num_cls], pooled, hidden, patches, tokens, resnet)
