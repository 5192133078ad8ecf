"""Shared helpers for the model, sharding and converter tests.

* Plain-numpy (float64) references written from the original TF code's math (rowanz/merlot
  utils/transformer.py, utils/vision_transformer.py), independent of merlot_jax.
* Fast model construction: `nnx.eval_shape` (no compilation) and then parameters drawn with numpy.
  Eager `MerlotModel(...)` init compiles one truncated-normal per parameter shape (seconds each on CPU),
  which the tests cannot afford.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from flax import nnx, traverse_util
from scipy.special import erf

REPO = pathlib.Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------------
# Plain-numpy references (float64).


def np_layernorm(x, scale, bias, eps=1e-5):
  x = np.asarray(x, np.float64)
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def np_gelu(x):
  x = np.asarray(x, np.float64)
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def np_attention(x, p, valid, num_heads):
  """Multi-head self-attention of the original: q/k/v dense with bias, heads split as [head, dh],
  scores / sqrt(dh), masked scores *replaced* by -1e10, softmax, context, output dense.
  Returns (output [b, s, d], head-mean probabilities [b, s, s])."""
  x = np.asarray(x, np.float64)
  b, s, d = x.shape
  dh = d // num_heads
  split = lambda t: t.reshape(b, s, num_heads, dh)
  q = split(x @ p['query']['kernel'] + p['query']['bias'])
  k = split(x @ p['key']['kernel'] + p['key']['bias'])
  v = split(x @ p['value']['kernel'] + p['value']['bias'])
  scores = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(dh)
  mask = valid[:, None, :, None] & valid[:, None, None, :]
  scores = np.where(mask, scores, -1e10)
  scores = scores - scores.max(-1, keepdims=True)
  probs = np.exp(scores)
  probs /= probs.sum(-1, keepdims=True)
  ctx = np.einsum('bhqk,bkhd->bqhd', probs, v).reshape(b, s, d)
  return ctx @ p['out']['kernel'] + p['out']['bias'], probs.mean(1)


def np_block(h, p, valid, num_heads):
  """Pre-LN block: h += attn(LN(h)); h += out(gelu(inter(LN(h))))."""
  a, probs = np_attention(np_layernorm(h, p['attn_ln']['scale'], p['attn_ln']['bias']), p['attn'], valid, num_heads)
  h = h + a
  x = np_layernorm(h, p['mlp_ln']['scale'], p['mlp_ln']['bias'])
  m = p['mlp']
  inner = np_gelu(x @ m['intermediate']['kernel'] + m['intermediate']['bias'])
  h = h + inner @ m['output']['kernel'] + m['output']['bias']
  return h, probs


def np_stack(x, params, valid, num_heads, num_layers=None):
  """A TransformerStack's pure-dict params (stacked [layers, ...]) -> (final hidden, probs [b, l, s, s])."""
  layers = params['layers']
  n = jax.tree.leaves(layers)[0].shape[0] if num_layers is None else num_layers
  h, all_probs = np.asarray(x, np.float64), []
  for i in range(n):
    h, probs = np_block(h, jax.tree.map(lambda a, i=i: np.asarray(a[i], np.float64), layers), valid, num_heads)
    all_probs.append(probs)
  return np_layernorm(h, params['final_ln']['scale'], params['final_ln']['bias']), np.stack(all_probs, 1)


def np_weight_standardize(k, eps=1e-5):
  k = np.asarray(k, np.float64)
  mean = k.mean((0, 1, 2), keepdims=True)
  var = ((k - mean) ** 2).mean((0, 1, 2), keepdims=True)
  return (k - mean) / np.sqrt(var + eps)


def np_conv(x, k, stride=1, padding=((0, 0), (0, 0))):
  """NHWC x HWIO cross-correlation with explicit padding and VALID windows."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), padding[0], padding[1], (0, 0)))
  kh, kw = k.shape[:2]
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, k.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
      out += patch @ np.asarray(k[i, j], np.float64)
  return out


def np_same_padding(size):
  """Stride-1 SAME padding of a k x k kernel."""
  return (((size - 1) // 2, size // 2),) * 2


def np_groupnorm(x, scale, bias, groups=32, eps=1e-4):
  """Statistics over (H, W, channels of a group), one-pass variance E[x^2] - E[x]^2 (in float64 this equals
  the two-pass variance up to rounding)."""
  x = np.asarray(x, np.float64)
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  mean = g.mean((1, 2, 4), keepdims=True)
  var = (g ** 2).mean((1, 2, 4), keepdims=True) - mean ** 2
  return ((g - mean) / np.sqrt(var + eps)).reshape(n, h, w, c) * scale + bias


def np_avgpool2(x):
  n, h, w, c = x.shape
  return np.asarray(x, np.float64).reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))


# ---------------------------------------------------------------------------------------------------
# Fast parameter filling.


def random_value(path, shape, rng: np.random.RandomState) -> np.ndarray:
  """Norm scales near 1, everything else small and non-zero (so biases and tables matter)."""
  if path[-1] == 'scale':
    return (1.0 + 0.1 * rng.randn(*shape)).astype(np.float32)
  if path[-1] == 'kernel' and len(shape) >= 2:
    fan_in = int(np.prod(shape[:3])) if len(shape) == 4 else shape[-2]  # HWIO conv, or [(layers,) in, out]
    return (rng.randn(*shape) / np.sqrt(fan_in)).astype(np.float32)
  return (0.1 * rng.randn(*shape)).astype(np.float32)


def fill_module(abstract: nnx.Module, seed: int = 0) -> nnx.Module:
  """A concrete copy of an `nnx.eval_shape` module with numpy-drawn parameters."""
  graphdef, state = nnx.split(abstract)
  rng = np.random.RandomState(seed)
  flat = traverse_util.flatten_dict(state.to_pure_dict())
  values = {path: random_value(tuple(str(p) for p in path), leaf.shape, rng) for path, leaf in sorted(
      flat.items(), key=lambda kv: tuple(str(p) for p in kv[0]))}
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict({p: jax.numpy.asarray(v) for p, v in values.items()}))
  return nnx.merge(graphdef, state)


def build_random(factory, seed: int = 0) -> nnx.Module:
  return fill_module(nnx.eval_shape(factory), seed)


def pure_params(module: nnx.Module) -> dict:
  return jax.tree.map(np.array, nnx.state(module, nnx.Param).to_pure_dict())  # writable copies


def with_params(module: nnx.Module, pure: dict) -> nnx.Module:
  """A new module with the same graph and the given pure-dict params."""
  graphdef, state = nnx.split(module)
  nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, pure))
  return nnx.merge(graphdef, state)


def max_rel(a, b) -> float:
  """max |a - b| / max |b| (the parity script's measure)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# XLA's backend (LLVM) optimisation dominates compile time on CPU and buys nothing for tiny test shapes:
# level 0 halves the compile time of the model's forward and backward.
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def fast_jit(fun, **kwargs):
  return jax.jit(fun, compiler_options=FAST_COMPILE, **kwargs)
