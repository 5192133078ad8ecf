"""The loop end to end on one device: logs, TensorBoard, eval, checkpoints, and the non-finite guard."""

import dataclasses

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from merlot_jax.config import load_config
from merlot_jax.data.host_batches import StepIndexed
from merlot_jax.models import flops
from merlot_jax.pretrained import load_pretrained
from merlot_jax.pretraining import report
from merlot_jax.pretraining.loss import pretraining_loss
from merlot_jax.pretraining.task import PRETRAINING
from merlot_jax.train import loop, metrics
from tests.train.batches import mark_poisoned, micro_config, nan_gradient_loss, synthetic_batch, synthetic_batches

# Forward GFLOPs per example of configs/base.py by component, as counted for the original TF code's graph
# (rowanz/merlot; the project's DESIGN notes): 1.385 TFLOP in all. The paper itself gives no such breakdown.
ORIGINAL_CODE_GFLOPS = {'vit': 774, 'joint': 294, 'resnet': 212, 'langonly': 97, 'lm_head': 8}


def test_flops_match_the_original_codes_count_for_the_paper_model():
  config = load_config('configs/base.py')
  for name, gflops in flops.flops_breakdown(config).items():
    np.testing.assert_allclose(gflops / 1e9, ORIGINAL_CODE_GFLOPS[name], rtol=0.03, err_msg=name)
  np.testing.assert_allclose(flops.model_flops_per_example(config, train=False), 1.385e12, rtol=0.01)


def _config(total_steps: int):
  config = micro_config(data=1, fsdp=1, tensor=1)
  config.train.update(total_steps=total_steps, checkpoint_every=2, log_every=2, eval_every=2, eval_steps=1)
  return config


def test_train_logs_evaluates_and_checkpoints(tmp_path):
  config = _config(4)
  state = loop.train(config, PRETRAINING, tmp_path, lambda start, _: synthetic_batches(config, 8, start_step=start),
                     eval_batches_factory=lambda: synthetic_batches(config, 8, seed=99), progress=False,
                     devices=jax.devices()[:1])
  assert int(state.step) == 4
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()) == ['2', '4']
  # TensorFlow's own reader (an independent one) sees TF2 scalars: the tags, steps and values ours reads back.
  by_tf: dict[str, dict[int, float]] = {}
  for path in (tmp_path / 'train').glob('events.out.tfevents.*'):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for v in event.summary.value:
        by_tf.setdefault(v.tag, {})[event.step] = float(tf.make_ndarray(v.tensor))
        assert v.tensor.dtype == tf.float32.as_datatype_enum and not v.tensor.tensor_shape.dim, v
  tags = {'loss', 'mlm/loss', 'eval/loss', 'grad_norm', 'examples_per_sec', 'tflops_per_sec', 'compile_seconds'}
  assert tags <= set(by_tf), sorted(by_tf)
  assert {tag: sorted(steps.items()) for tag, steps in by_tf.items()} == report.read_scalars(tmp_path / 'train')
  assert sorted(by_tf['loss']) == sorted(by_tf['eval/loss']) == [2, 4] and sorted(by_tf['compile_seconds']) == [1]
  assert all(np.isfinite(v) and v > 0 for v in by_tf['loss'].values())


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run_when_persistent(tmp_path):
  """Gradients NaN while the loss stays finite: step 3 alone is skipped and counted; steps 6-8 in a row
  stop the run at step 8 (max_consecutive_skips = 3), and the last checkpoint's params are finite."""
  config = _config(10)
  config.train.max_consecutive_skips = 3
  task = dataclasses.replace(PRETRAINING, loss_fn=nan_gradient_loss(pretraining_loss))

  def batches(start, _):
    poisoned = lambda i, b: mark_poisoned(b) if start + i + 1 in (3, 6, 7, 8) else b
    return StepIndexed(poisoned(i, b) for i, b in enumerate(synthetic_batches(config, 8, start_step=start)))

  with pytest.raises(metrics.NonFiniteError, match=r'step 8: 3 steps in a row had non-finite grads, updates'):
    loop.train(config, task, tmp_path, batches, progress=False, devices=jax.devices()[:1])
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved == [2, 4, 6], saved
  scalars = report.read_scalars(tmp_path / 'train')
  # Step 8's interval (steps 7 and 8, both skipped) is written before the stop: its counts, no means.
  assert dict(scalars['skipped_steps']) == {2: 0, 4: 1, 6: 2, 8: 4}, scalars['skipped_steps']
  assert [s for s, _ in scalars['loss']] == [2, 4, 6]
  assert all(np.isfinite(v) for _, v in scalars['loss'] + scalars['grad_norm'])  # means over kept steps
  (tmp_path / 'config.json').write_text(config.to_json())
  model, _ = load_pretrained(tmp_path)  # the step-6 checkpoint
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_synthetic_batch_matches_the_layout():
  config = micro_config()
  b = synthetic_batch(config, 2, seed=0)
  assert b['images'].shape == (2, 2, 32, 32, 3) and b['images'].dtype == np.uint8
  assert (b['input_ids'][:, :, 0] == 2).all()
