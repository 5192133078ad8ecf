"""The built-in CPU pretraining run: a small MERLOT on the synthetic corpus (about 10 minutes on 2 cores).

`make pretrain` (scripts/run_demo.py) makes the corpus and tokenizer, then sets data.train_pattern,
data.eval_pattern and model.vocab_size (the tokenizer's) itself.
"""

from merlot_jax.config import default_config


def get_config():
  c = default_config()
  m = c.model
  m.num_segments, m.segment_length, m.segments_per_group = 8, 16, 4
  m.image_size = (64, 96)
  m.resnet_blocks = (1, 1, 1)
  m.hidden_size, m.num_heads, m.mlp_dim = 128, 4, 512
  m.num_vision_layers = m.num_joint_layers = m.num_langonly_layers = 2
  m.vocab_size = 4096
  m.max_positions = 256
  m.contrastive_size = 128
  c.optim.learning_rate, c.optim.warmup_steps, c.optim.bf16_moments = 1e-3, 15, False
  t = c.train
  t.global_batch_size = 16
  t.total_steps = 150
  t.log_every = 10
  t.checkpoint_every = 50
  t.keep_checkpoints = 2
  t.eval_every = 50
  t.eval_steps = 4
  c.mesh.fsdp = -1
  return c
