"""The built-in CPU pretraining run: a small MERLOT on the synthetic corpus (`make pretrain`).

scripts/run_demo.py makes the corpus and tokenizer, then sets data.train_pattern, data.eval_pattern and
model.vocab_size (the tokenizer's) itself. Settings that differ from the paper, one line each; docs/demo.md
has the measurements behind them.
"""

from merlot_jax.config import UNKNOWN_POSITION_ROW, default_config


def get_config():
  c = default_config()
  m = c.model
  m.num_segments, m.segment_length, m.segments_per_group = 8, 16, 4
  m.image_size, m.pool_size = (32, 48), 1  # the 2x3 visual tokens of 64x96 pooled 2x2, 1/4 of the ResNet
  m.resnet_blocks = (1, 1, 1)
  m.hidden_size, m.num_heads, m.mlp_dim = 128, 4, 512
  m.num_vision_layers = m.num_joint_layers = m.num_langonly_layers = 2
  m.vocab_size = 4096
  m.max_positions = 256
  m.contrastive_size = 128
  m.init_std = 0.05  # 0.02 * sqrt(768 / 128): the paper's per-layer signal scale at width 128
  c.objectives.shuffled_index_offset = UNKNOWN_POSITION_ROW  # the rows zero-shot story ordering uses for its images
  c.objectives.contrast_weight = 1.0  # 0.25 left the contrastive loss at ln(128) for 200+ steps
  c.objectives.contrast_center = True  # not in the original: from scratch both sides collapse to one direction
  c.optim.learning_rate, c.optim.warmup_steps, c.optim.bf16_moments = 1e-3, 20, False
  t = c.train
  t.global_batch_size = 16
  t.total_steps = 400
  t.log_every = 10
  t.checkpoint_every = 100
  t.keep_checkpoints = 2
  t.eval_every = 100
  t.eval_steps = 4
  c.mesh.fsdp = -1
  return c
