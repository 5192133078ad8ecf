"""The built-in CPU pretraining run: a small MERLOT on the synthetic corpus (about 10 minutes on 2 cores).

Point data.train_pattern / data.eval_pattern at the preprocessed synthetic corpus shards, e.g.
  --config.data.train_pattern='/tmp/corpus/train-*.tfrecord'
and set model.vocab_size to the tokenizer's vocabulary size if it differs.
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
  c.optim.learning_rate, c.optim.warmup_steps, c.optim.bf16_moments = 1e-3, 30, False
  t = c.train
  t.global_batch_size = 16
  t.total_steps = 300
  t.log_every = 10
  t.checkpoint_every = 100
  t.keep_checkpoints = 2
  t.eval_every = 100  # 0: no evaluation (lead: add to default_config)
  t.eval_steps = 4  # batches per evaluation (lead: add to default_config)
  c.mesh.fsdp = -1
  return c
