"""The original's AdamW (utils/optimization.py of rowanz/merlot) as an optax transformation.

It differs from `optax.adamw` in three ways that change the numbers, so it is written out here:
  * the bias correction scales the step, sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), so eps acts
    on the uncorrected v;
  * the decoupled weight decay is added to the Adam direction before the learning rate and that same
    bias-correction factor multiply it: p -= lr_t * c_t * (m / (sqrt(v) + eps) + wd * p);
  * the schedule warms up linearly from 0 (the first step has learning rate 0) and then decays linearly
    to 0 at total_steps from a peak slightly above learning_rate (see `learning_rate_schedule`).
Optional bfloat16 moments store m as bfloat16 and v as bfloat16 with its (always positive) sign bit
reused as a ninth mantissa bit, as the original's `use_bfloat16_adam`.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

_NINTH_BIT = 1.0 + 2.0**-8  # a negative stored v means |v| * (1 + 2^-8): halfway to the next bfloat16
_NORM_MODULE = re.compile(r'norm|(^|_)(ln|gn)(\d|_|$)', re.IGNORECASE)


def learning_rate_schedule(learning_rate: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """step -> learning rate: step / warmup_steps * lr, then s * lr * (1 - step / total_steps), 0 after.

  s = total / (total - warmup + 1) is the original's attempt to make the decay start at lr; it reaches
  lr * (total - warmup) / (total - warmup + 1) at the end of the warmup.
  """
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f'optim.warmup_steps = {warmup_steps}: must be in [0, train.total_steps = '
                     f'{total_steps})')
  scale = total_steps / (total_steps - warmup_steps + 1.0) if warmup_steps else 1.0

  def schedule(step: chex.Numeric) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    decay = scale * (1.0 - jnp.minimum(step, total_steps) / total_steps)
    if not warmup_steps:
      return learning_rate * decay
    return learning_rate * jnp.where(step < warmup_steps, step / warmup_steps, decay)

  return schedule


def _key_name(key: Any) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _decays(path: tuple[Any, ...]) -> bool:
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == 'value':
    path = path[:-1]  # an nnx.Variable's own pytree key
  names = [_key_name(k) for k in path]
  if not names:
    return True
  last = names[-1]
  return not ('bias' in last.lower() or last == 'scale' or any(_NORM_MODULE.search(n) for n in names))


def decay_mask(params: Any) -> Any:
  """Pytree of bools like params: True where weight decay applies.

  The original exempts names matching LayerNorm / layer_norm / GroupNorm / bias and decays everything
  else (kernels, embeddings, position tables). Here: no decay for a leaf whose name contains 'bias',
  is 'scale' (NNX norm parameters), or lies in a module whose name contains 'norm' or an 'ln' / 'gn'
  word (ln_final, attn_ln0, final_ln, gn1).
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _decays(path), params)


def _to_bf16_v(v: jax.Array) -> jax.Array:
  """Encodes a non-negative f32 v as bfloat16, using the sign for the half-step in between."""
  b = v.astype(jnp.bfloat16)
  b32 = b.astype(jnp.float32)
  return jnp.where(jnp.abs(b32 - v) <= jnp.abs(b32 * _NINTH_BIT - v), b, -b)


def _from_bf16_v(stored: jax.Array) -> jax.Array:
  v = jnp.abs(stored.astype(jnp.float32))
  return jnp.where(stored > 0, v, v * _NINTH_BIT)


class MerlotAdamState(NamedTuple):
  count: jax.Array  # steps taken so far (t - 1 of the bias correction)
  mu: Any
  nu: Any


def scale_by_merlot_adam(b1: float, b2: float, eps: float, weight_decay: float,
                         bf16_moments: bool) -> optax.GradientTransformation:
  """Adam direction with decoupled decay, both scaled by sqrt(1 - b2^t) / (1 - b1^t) (see module doc)."""
  moment_dtype = jnp.bfloat16 if bf16_moments else jnp.float32

  def init_fn(params):
    zeros = lambda p: jnp.zeros(jnp.shape(p), moment_dtype)
    return MerlotAdamState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                           jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    if params is None and weight_decay > 0:
      raise ValueError('scale_by_merlot_adam: weight decay needs the params in update()')
    t = state.count.astype(jnp.float32) + 1.0
    correction = jnp.sqrt(1.0 - b2**t) / (1.0 - b1**t)
    params_or_grads = updates if params is None else params
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    mu = jax.tree.map(lambda g, m: b1 * f32(m) + (1.0 - b1) * f32(g), updates, state.mu)
    nu = jax.tree.map(lambda g, v: b2 * (_from_bf16_v(v) if bf16_moments else v) + (1.0 - b2) * f32(g)**2,
                      updates, state.nu)

    def leaf_step(m, v, p, decays):
      step = m / (jnp.sqrt(v) + eps)
      if decays and weight_decay > 0:
        step = step + weight_decay * f32(p)
      return correction * step

    step = jax.tree.map(leaf_step, mu, nu, params_or_grads, decay_mask(params_or_grads))
    if bf16_moments:
      mu, nu = jax.tree.map(lambda m: m.astype(jnp.bfloat16), mu), jax.tree.map(_to_bf16_v, nu)
    return step, MerlotAdamState(optax.safe_increment(state.count), mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """config.optim -> [global-norm clipping if clip_norm > 0] -> Adam with decay -> -learning rate."""
  schedule = learning_rate_schedule(cfg.learning_rate, cfg.warmup_steps, total_steps)
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
  parts += [scale_by_merlot_adam(cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay, cfg.bf16_moments),
            optax.scale_by_learning_rate(schedule)]
  return optax.chain(*parts)
