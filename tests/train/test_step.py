"""State creation, the train step (overfitting a batch, skipping a non-finite one), equality of one step
across meshes, and the batch checks of the setup."""

import dataclasses

import jax
import numpy as np
import pytest

from merlot_jax.pretraining.loss import pretraining_loss
from merlot_jax.pretraining.task import PRETRAINING
from merlot_jax.train import setup
from tests.train.batches import mark_poisoned, micro_config, nan_gradient_loss, synthetic_batch


def test_state_is_created_sharded():
  config = micro_config(data=2, fsdp=4, tensor=1)
  s = setup.build(config, PRETRAINING)
  state = s.init_state()
  for leaf, sh in zip(jax.tree.leaves(state), jax.tree.leaves(s.state_shardings), strict=True):
    assert leaf.sharding == sh
  fsdp = [leaf for leaf in jax.tree.leaves(state.params) if 'fsdp' in str(leaf.sharding.spec)]
  assert fsdp, 'no parameter is sharded over fsdp'
  assert int(state.step) == 0


def test_overfits_a_fixed_batch():
  config = micro_config(data=1, fsdp=1, tensor=1)
  s = setup.build(config, PRETRAINING, devices=jax.devices()[:1])
  state, batch = s.init_state(), s.global_batch(synthetic_batch(config, 8, seed=0))
  losses, rates = [], []
  for _ in range(30):
    state, metrics = s.train_step(state, batch)
    losses.append(float(metrics['loss']))
    rates.append(float(metrics['learning_rate']))
  assert int(state.step) == 30
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses
  assert float(metrics['grad_norm']) > 0 and float(metrics['param_norm']) > 0
  # The rate each step used, from the schedule's closed form (linear warmup from 0, then linear decay to 0 at
  # total_steps, scaled by s = total / (total - warmup + 1)): lr(t) = lr * t / warmup for t < warmup, else
  # lr * s * (1 - t / total). micro_config: lr 3e-3, warmup 1, total 100, so s = 100 / 100 = 1 and the steps
  # t = 0..29 used 0, 2.97e-3, 2.94e-3, ..., 2.13e-3.
  assert (config.optim.learning_rate, config.optim.warmup_steps, config.train.total_steps) == (3e-3, 1, 100)
  t = np.arange(30)
  np.testing.assert_allclose(rates, np.where(t < 1, 0.0, 3e-3 * (1 - t / 100)), rtol=1e-6, atol=0)
  assert rates[0] == 0 and rates[-1] == pytest.approx(2.13e-3, rel=1e-6)


def test_a_step_with_nonfinite_gradients_changes_nothing_but_the_step():
  config = micro_config(data=1, fsdp=1, tensor=1)
  task = dataclasses.replace(PRETRAINING, loss_fn=nan_gradient_loss(pretraining_loss))
  s = setup.build(config, task, devices=jax.devices()[:1])
  state, train_step, batch = s.init_state(), s.train_step, s.global_batch
  good = synthetic_batch(config, 8, seed=0)
  state, metrics = train_step(state, batch(good))
  assert float(metrics['skipped']) == 0
  before = jax.device_get(state)  # the state is donated to the next call
  state, metrics = train_step(state, batch(mark_poisoned(good)))
  assert int(state.step) == 2 and np.isfinite(float(metrics['loss']))  # the loss itself stays finite
  assert {k: float(metrics[f'nonfinite/{k}']) for k in ('loss', 'grads', 'updates')} == {
      'loss': 0, 'grads': 1, 'updates': 1}
  assert float(metrics['skipped']) == 1
  after = jax.device_get(state)
  for a, b in zip(jax.tree.leaves((before.params, before.opt_state)), jax.tree.leaves((after.params, after.opt_state)),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  state, metrics = train_step(state, batch(good))  # and the next finite step updates again
  assert float(metrics['skipped']) == 0
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after.params),
                                                      jax.tree.leaves(jax.device_get(state.params)), strict=True)]
  assert any(changed)


MESHES = [(8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]


def _one_step(config, devices, host_state, batch):
  s = setup.build(config, PRETRAINING, devices=devices)
  state, metrics = s.train_step(jax.device_put(host_state, s.state_shardings), s.global_batch(batch))
  return jax.device_get(state.params), float(metrics['loss'])


def test_one_step_is_the_same_on_every_mesh():
  base = micro_config(data=1, fsdp=1, tensor=1)
  batch = synthetic_batch(base, 8, seed=1)
  host_state = jax.device_get(setup.build(base, PRETRAINING, devices=jax.devices()[:1]).init_state())
  ref_params, ref_loss = _one_step(base, jax.devices()[:1], host_state, batch)
  for data, fsdp, tensor in MESHES:
    params, loss = _one_step(micro_config(data=data, fsdp=fsdp, tensor=tensor), None, host_state, batch)
    where = f'mesh {(data, fsdp, tensor)}'
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=where)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=where)


def test_global_batch_names_missing_keys_and_wrong_shapes():
  config = micro_config(data=1, fsdp=1, tensor=1)
  s = setup.build(config, PRETRAINING, devices=jax.devices()[:1])
  batch = synthetic_batch(config, 8, seed=0)
  with pytest.raises(KeyError, match='image_index'):
    s.global_batch({k: v for k, v in batch.items() if k != 'image_index'})
  with pytest.raises(ValueError, match=r'pretraining batch.*input_ids: \(4, 2, 8\) int32, expected \(8, 2, 8\) int32'):
    s.global_batch({**batch, 'input_ids': batch['input_ids'][:4]})
  with pytest.raises(ValueError, match=r'images: \(8, 2, 32, 32, 3\) float32, expected \(8, 2, 32, 32, 3\) uint8'):
    s.global_batch({**batch, 'images': batch['images'].astype(np.float32)})
