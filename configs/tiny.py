"""A tiny MERLOT for CPU tests: every code path of the paper model at a few million parameters."""

from merlot_jax.config import default_config


def get_config():
  c = default_config()
  m = c.model
  m.num_segments, m.segment_length, m.segments_per_group = 4, 8, 2
  m.image_size = (64, 96)
  m.resnet_blocks = (1, 1, 1)
  m.hidden_size, m.num_heads, m.mlp_dim = 64, 4, 128
  m.num_vision_layers = m.num_joint_layers = m.num_langonly_layers = 2
  m.vocab_size = 512
  m.max_positions = 256
  m.contrastive_size = 64
  c.train.global_batch_size = 8
  c.train.total_steps = 10
  c.train.log_every = 1
  c.optim.warmup_steps = 2
  c.mesh.fsdp = -1
  return c
