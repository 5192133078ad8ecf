"""The original's AdamW: schedule, decay mask, and updates against a numpy transcription."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from merlot_jax.config import default_config
from merlot_jax.train import optim


def _optim_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = default_config().optim
  cfg.update(dict(learning_rate=1e-2, warmup_steps=2, bf16_moments=False), **overrides)
  return cfg


def test_schedule_points():
  lr, warmup, total = 3e-4, 10_000, 460_000
  schedule = optim.learning_rate_schedule(lr, warmup, total)
  scale = total / (total - warmup + 1)
  np.testing.assert_allclose(schedule(0), 0.0)
  np.testing.assert_allclose(schedule(warmup // 2), lr / 2, rtol=1e-6)
  np.testing.assert_allclose(schedule(warmup), lr * scale * (1 - warmup / total), rtol=1e-6)
  np.testing.assert_allclose(schedule(warmup), lr * 450_000 / 450_001, rtol=1e-6)  # just under the peak
  np.testing.assert_allclose(schedule(230_000), lr * scale * 0.5, rtol=1e-6)
  np.testing.assert_allclose(schedule(total), 0.0, atol=1e-12)
  np.testing.assert_allclose(schedule(total + 5), 0.0, atol=1e-12)
  no_warmup = optim.learning_rate_schedule(lr, 0, 100)
  np.testing.assert_allclose([no_warmup(0), no_warmup(25)], [lr, 0.75 * lr], rtol=1e-6)


def test_decay_mask_nested_dict():
  z = np.zeros(2)
  params = {
      'word_embeddings': {'embedding': z},
      'img_idx_pe': z,
      'pos_embs': {'cls_emb': z, 'pos_embs': z},
      'encoder': {
          'layer00': {'attn_ln0': {'scale': z, 'bias': z}, 'query': {'kernel': z, 'bias': z},
                      'linear_out': {'kernel': z}},
          'ln_final': {'scale': z, 'bias': z},
          'LayerNorm_embed_norm': {'gamma': z, 'beta': z},
      },
      'resnet': {'GroupNorm_stem0': {'scale': z}, 'gn1': {'scale': z}, 'conv': {'kernel': z}},
      'lm_head': {'output_bias': z, 'final_ln': {'scale': z}},
      'layers': [{'kernel': z}, {'bias': z}],
  }
  decays = {'/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path): d
            for path, d in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
  assert {k for k, d in decays.items() if d} == {
      'word_embeddings/embedding', 'img_idx_pe', 'pos_embs/cls_emb', 'pos_embs/pos_embs',
      'encoder/layer00/query/kernel', 'encoder/layer00/linear_out/kernel', 'resnet/conv/kernel',
      'layers/0/kernel'}
  assert len(decays) == 20


def test_decay_mask_nnx_state():
  class Tiny(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(3, 2, rngs=rngs)
      self.ln_final = nnx.LayerNorm(2, rngs=rngs)
      self.pos_table = nnx.Param(jnp.zeros((4, 2)))

  mask = optim.decay_mask(nnx.state(Tiny(nnx.Rngs(0)), nnx.Param))
  assert mask['dense']['kernel'].value and mask['pos_table'].value
  assert not (mask['dense']['bias'].value or mask['ln_final']['scale'].value
              or mask['ln_final']['bias'].value)


def np_merlot_adamw(params, grads_seq, cfg, total, decays):
  """The original AdamOptimizer.apply_gradients, step by step in float64."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  scale = total / (total - cfg.warmup_steps + 1.0)
  for step, grads in enumerate(grads_seq):
    lr = cfg.learning_rate * (step / cfg.warmup_steps if step < cfg.warmup_steps
                              else scale * (1 - min(step, total) / total))
    if cfg.clip_norm > 0:
      norm = np.sqrt(sum((g.astype(np.float64)**2).sum() for g in grads.values()))
      grads = {k: g * cfg.clip_norm / max(norm, cfg.clip_norm) for k, g in grads.items()}
    t = step + 1
    lr_t = lr * np.sqrt(1 - cfg.b2**t) / (1 - cfg.b1**t)
    for k, g in grads.items():
      m[k] = cfg.b1 * m[k] + (1 - cfg.b1) * g
      v[k] = cfg.b2 * v[k] + (1 - cfg.b2) * g**2
      update = m[k] / (np.sqrt(v[k]) + cfg.eps)
      if decays[k]:
        update = update + cfg.weight_decay * params[k]
      params[k] = params[k] - lr_t * update
  return params


@pytest.mark.parametrize('clip_norm', [0.0, 0.5])
def test_updates_match_numpy(clip_norm):
  cfg, total = _optim_cfg(clip_norm=clip_norm), 10
  rng = np.random.default_rng(0)
  params = {'kernel': rng.normal(size=(3, 2)), 'bias': rng.normal(size=2)}
  params = jax.tree.map(lambda x: x.astype(np.float32), params)
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(5)]
  tx = optim.make_optimizer(cfg, total)
  state = tx.init(params)
  update = jax.jit(tx.update)
  got = params
  for i, grads in enumerate(grads_seq):
    updates, state = update(grads, state, got)
    got = optax.apply_updates(got, updates)
    if i == 0:  # the first step has learning rate 0
      jax.tree.map(np.testing.assert_array_equal, got, params)
  want = np_merlot_adamw(params, grads_seq, cfg, total, {'kernel': True, 'bias': False})
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=1e-7, err_msg=k)


def test_decay_is_scaled_by_lr_and_bias_correction():
  """With zero gradients only the decay moves a decayed weight: p *= 1 - lr_t * c_t * wd."""
  cfg = _optim_cfg(weight_decay=0.1)
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  model.bias.value = jnp.ones(2)
  kernel0 = np.asarray(model.kernel.value)
  opt = nnx.Optimizer(model, optim.make_optimizer(cfg, 10), wrt=nnx.Param)
  zero = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  factor = 1.0
  for step in range(3):
    opt.update(model, zero)
    lr, t = 1e-2 * (step / 2 if step < 2 else 10 / 9 * (1 - step / 10)), step + 1
    factor *= 1 - lr * np.sqrt(1 - 0.98**t) / (1 - 0.9**t) * 0.1
  np.testing.assert_allclose(model.kernel.value, kernel0 * factor, rtol=1e-6)
  np.testing.assert_array_equal(model.bias.value, np.ones(2))


def _np_bf16(x):
  return np.asarray(x, np.float32).astype(jnp.bfloat16).astype(np.float32)


def test_bf16_moments_match_numpy():
  """m stored as bfloat16; v as bfloat16 whose sign bit selects |v| or |v| * (1 + 2^-8)."""
  cfg, total = _optim_cfg(bf16_moments=True, weight_decay=0.0), 10
  rng = np.random.default_rng(1)
  params = {'kernel': rng.normal(size=(4, 8)).astype(np.float32)}
  grads_seq = [{'kernel': rng.normal(size=(4, 8)).astype(np.float32)} for _ in range(4)]
  tx = optim.make_optimizer(cfg, total)
  state = tx.init(params)
  got = params
  for grads in grads_seq:
    updates, state = tx.update(grads, state, got)
    got = optax.apply_updates(got, updates)

  ninth = np.float32(1 + 2**-8)
  p, m, v = params['kernel'].copy(), np.zeros((4, 8), np.float32), np.zeros((4, 8), np.float32)
  for step, grads in enumerate(grads_seq):
    g = grads['kernel']
    m = np.float32(0.9) * m + np.float32(0.1) * g
    v = np.float32(0.98) * v + np.float32(0.02) * g * g
    lr = 1e-2 * (step / 2 if step < 2 else 10 / 9 * (1 - step / 10))
    p = p - lr * np.sqrt(1 - 0.98**(step + 1)) / (1 - 0.9**(step + 1)) * m / (np.sqrt(v) + 1e-6)
    m = _np_bf16(m)
    b = _np_bf16(v)
    v = np.where(np.abs(b - v) <= np.abs(b * ninth - v), b, b * ninth)
  adam_state = state[0]
  assert adam_state.mu['kernel'].dtype == jnp.bfloat16 and adam_state.nu['kernel'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(adam_state.mu['kernel'], np.float32), m)
  stored = np.asarray(adam_state.nu['kernel'], np.float32)
  np.testing.assert_allclose(np.where(stored > 0, stored, -stored * ninth), v, rtol=1e-6)
  assert (stored < 0).any()  # the ninth bit is in use
  np.testing.assert_allclose(got['kernel'], p, rtol=1e-5, atol=1e-7)
