"""The lite ResNet-50 stem of MERLOT's hybrid ViT (the original's utils/vision_transformer.py).

Weight-standardised convolutions without bias, GroupNorm(32 groups, eps 1e-4, one-pass variance),
downsampling by 2x2 average pooling (never by conv strides, except the stem's first conv), and a
fixed width of 64: the output has stride 16 and 4 * 4 * width channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import einops
import jax
import jax.numpy as jnp
from flax import nnx

from merlot_jax.models.layers import param

WS_EPS = 1e-5  # weight standardisation
GN_EPS = 1e-4
GN_GROUPS = 32


def avg_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 average pool with stride 2 on NHWC (even sizes, so TF's SAME and VALID agree)."""
  chex.assert_rank(x, 4)
  if x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f'avg_pool_2x2 needs even height and width, got {x.shape}')
  return einops.reduce(x, 'b (h p) (w q) c -> b h w c', 'mean', p=2, q=2)


class StdConv(nnx.Module):
  """Conv with per-output-channel weight standardisation: (k - mean) * rsqrt(var + 1e-5)."""

  def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    init = nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
    self.kernel = param(rngs, init, (kernel_size, kernel_size, cin, cout), (None, None, None, 'replicated'))
    self.stride = stride
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel[...]
    mean = jnp.mean(k, axis=(0, 1, 2), keepdims=True)
    var = jnp.mean(jnp.square(k - mean), axis=(0, 1, 2), keepdims=True)
    k = (k - mean) * jax.lax.rsqrt(var + WS_EPS)
    size = k.shape[0]
    if size == 1 and self.stride == 1:  # a matmul over channels: the same sums, 1.3-2x faster on CPU
      return jnp.einsum('nhwc,cd->nhwd', x.astype(self.dtype), k[0, 0].astype(self.dtype),
                        preferred_element_type=jnp.float32).astype(self.dtype)
    if self.stride > 1:  # the original pads (k-1)//2 before and the rest after, then VALID
      padding = [((size - 1) // 2, size - 1 - (size - 1) // 2)] * 2
    else:
      padding = 'SAME'
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), k.astype(self.dtype), (self.stride, self.stride), padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), preferred_element_type=jnp.float32).astype(self.dtype)


class GroupNorm(nnx.Module):
  """GroupNorm over (H, W, channels of a group) per example, with a one-pass variance E[x^2] - E[x]^2."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.scale = param(rngs, nnx.initializers.ones, (channels,), ('replicated',))
    self.bias = param(rngs, nnx.initializers.zeros, (channels,), ('replicated',))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """(x - mean) * rsqrt(var + eps) * scale + bias, computed as one per-channel x * a + b.

    The moments are reduced per channel first, then per group, and the normalisation is folded into
    the affine: the same function as normalising a [b, h, w, groups, c] view, but 3-10x cheaper
    forward and backward on CPU (no 5-D intermediate with a non-minor reduction).
    """
    x = x.astype(jnp.float32)
    b, h, w, channels = x.shape
    per_group = channels // GN_GROUPS
    count = h * w * per_group
    group_sum = lambda t: jnp.sum(t, axis=(1, 2)).reshape(b, GN_GROUPS, per_group).sum(-1)  # [b, groups]
    mean = group_sum(x) / count
    var = group_sum(jnp.square(x)) / count - jnp.square(mean)
    to_channels = lambda t: jnp.repeat(t, per_group, axis=1)  # [b, groups] -> [b, channels]
    a = to_channels(jax.lax.rsqrt(var + GN_EPS)) * self.scale[...]
    shift = self.bias[...] - to_channels(mean) * a
    return (x * a[:, None, None] + shift[:, None, None]).astype(self.dtype)


class ConvNorm(nnx.Module):
  """StdConv -> GroupNorm -> optional ReLU."""

  def __init__(self, cin: int, cout: int, kernel_size: int, *, relu: bool, stride: int = 1,
               rngs: nnx.Rngs, dtype=jnp.float32):
    self.conv = StdConv(cin, cout, kernel_size, stride, rngs=rngs, dtype=dtype)
    self.norm = GroupNorm(cout, rngs=rngs, dtype=dtype)
    self.relu = relu

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.norm(self.conv(x))
    return jax.nn.relu(y) if self.relu else y


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 -> [avg pool] -> 1x1 (4f), plus a projection shortcut in a stage's first block."""

  def __init__(self, cin: int, filters: int, *, downsample: bool, project: bool, rngs: nnx.Rngs,
               dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype)
    self.proj = ConvNorm(cin, 4 * filters, 1, relu=False, **kw) if project else None
    self.conv1 = ConvNorm(cin, filters, 1, relu=True, **kw)
    self.conv2 = ConvNorm(filters, filters, 3, relu=True, **kw)
    self.conv3 = ConvNorm(filters, 4 * filters, 1, relu=False, **kw)
    self.downsample = downsample

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    if self.proj is not None:
      shortcut = self.proj(avg_pool_2x2(x) if self.downsample else x)
    y = self.conv2(self.conv1(x))
    if self.downsample:
      y = avg_pool_2x2(y)
    return jax.nn.relu(self.conv3(y) + shortcut)


class LiteResNet(nnx.Module):
  """Stem (3 convs + avg pool, stride 4) and 3 stages of bottlenecks (stride 16 overall)."""

  def __init__(self, blocks: Sequence[int], width: int = 64, *, rngs: nnx.Rngs, dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype)
    self.stem = nnx.List([
        ConvNorm(3, width // 2, 3, relu=True, stride=2, **kw),
        ConvNorm(width // 2, width // 2, 3, relu=True, **kw),
        ConvNorm(width // 2, width, 3, relu=True, **kw),
    ])
    stages, cin = [], width
    for i, n in enumerate(blocks):
      f = width * 2**i
      stages.append(nnx.List([
          Bottleneck(cin if b == 0 else 4 * f, f, downsample=(i > 0 and b == 0), project=(b == 0), **kw)
          for b in range(n)]))
      cin = 4 * f
    self.stages = nnx.List(stages)
    self.out_channels = cin

  def __call__(self, x: jax.Array, *, return_intermediates: bool = False):
    """x: [n, H, W, 3] (already centred) -> [n, H/16, W/16, 16 * width]."""
    chex.assert_rank(x, 4)
    for conv in self.stem:
      x = conv(x)
    x = avg_pool_2x2(x)
    intermediates = {'stem': x}
    for i, stage in enumerate(self.stages):
      for block in stage:
        x = block(x)
      intermediates[f'stage{i + 1}'] = x
    return (x, intermediates) if return_intermediates else x
