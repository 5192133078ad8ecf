"""The loop end to end on one device: logs, TensorBoard, eval, checkpoints, and the NaN guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from merlot_jax.config import load_config
from merlot_jax.train import loop, metrics
from merlot_jax.train import step as step_lib
from tests.train.batches import micro_config, synthetic_batch, synthetic_batches

PAPER_GFLOPS = {'vit': 774, 'joint': 294, 'resnet': 212, 'langonly': 97, 'lm_head': 8}


def test_flops_match_the_paper_model():
  config = load_config('configs/base.py')
  for name, gflops in metrics.flops_breakdown(config).items():
    np.testing.assert_allclose(gflops / 1e9, PAPER_GFLOPS[name], rtol=0.03, err_msg=name)
  np.testing.assert_allclose(metrics.model_flops_per_example(config, train=False), 1.385e12, rtol=0.01)


def _config(total_steps: int):
  config = micro_config(data=1, fsdp=1, tensor=1)
  config.train.update(total_steps=total_steps, checkpoint_every=2, log_every=2, eval_every=2, eval_steps=1)
  return config


def test_train_logs_evaluates_and_checkpoints(tmp_path):
  config = _config(4)
  state = loop.train(config, tmp_path, lambda start, _: synthetic_batches(config, 8, start_step=start),
                     eval_batches_factory=lambda: synthetic_batches(config, 8, seed=99), progress=False,
                     devices=jax.devices()[:1])
  assert int(state.step) == 4
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()) == ['2', '4']
  tags = set()
  for path in (tmp_path / 'train').glob('events.out.tfevents.*'):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      tags |= {v.tag for v in event.summary.value}
  assert {'loss', 'mlm/loss', 'eval/loss', 'grad_norm', 'examples_per_sec', 'tflops_per_sec', 'compile_seconds'} <= tags


def test_nan_loss_stops_with_step_and_metric(tmp_path, monkeypatch):
  config = _config(6)
  real_loss = step_lib.pretraining_loss

  def poisoned_loss(model, batch, rng, config, train=True):
    loss, m = real_loss(model, batch, rng, config, train=train)
    bad = jnp.where(batch['video_src_ids'][0, 0] == 7, jnp.nan, 0.0)  # the marked batch
    return loss + bad, {**m, 'loss': m['loss'] + bad}

  def batches(start, _):
    for i, b in enumerate(synthetic_batches(config, 8, start_step=start)):
      if start + i == 2:  # the third step (step 3 after its update)
        b['video_src_ids'] = np.full_like(b['video_src_ids'], 7)
      yield b

  monkeypatch.setattr(step_lib, 'pretraining_loss', poisoned_loss)
  with pytest.raises(metrics.NonFiniteError, match=r"step 3: metric 'loss' is nan"):
    loop.train(config, tmp_path, batches, progress=False, devices=jax.devices()[:1])
  saved = [p.name for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()]
  assert saved == ['2'], f'a checkpoint after the NaN was written: {saved}'


def test_check_finite_names_the_metric():
  metrics.check_finite(5, {'loss': 1.0, 'grad_norm': float('inf')})  # only losses are guarded
  with pytest.raises(metrics.NonFiniteError, match=r"step 5: metric 'temporal/loss' is inf"):
    metrics.check_finite(5, {'loss': 1.0, 'temporal/loss': float('inf')})


def test_synthetic_batch_matches_the_layout():
  config = micro_config()
  b = synthetic_batch(config, 2, seed=0)
  assert b['images'].shape == (2, 2, 32, 32, 3) and b['images'].dtype == np.uint8
  assert (b['input_ids'][:, :, 0] == 2).all()
