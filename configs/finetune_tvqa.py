"""Finetuning on TVQA-like multiple-choice video QA (merlot_jax/tasks/mc_data.py has the input format).

The model architecture comes from the --init params checkpoint (tasks/finetune.py: finetune_config); the
`model` here is only the paper default it is replaced by. Differences from pretraining: 6 frames with
their texts in one group per option (the paper's TVQA setting), a small learning rate (1e-5, as the
original VCR finetuning's 1.2e-5) with 10% warmup and few epochs (about 3 over TVQA's 122k questions),
Adam b2 0.98 and weight decay 0.01 as the original's merlot_vcr.yaml, a batch of 64 questions.
"""

from ml_collections import ConfigDict

from merlot_jax.config import default_config


def get_config():
  c = default_config()
  c.finetune = ConfigDict({'task': 'tvqa', 'num_frames': 6, 'segment_length': 32, 'num_options': 5,
                           'heads': ('answer',)})
  p = c.optim
  p.learning_rate, p.weight_decay, p.b2 = 1e-5, 0.01, 0.98
  t = c.train
  t.global_batch_size = 64
  t.total_steps = 6000  # ~3 epochs of 122k questions
  p.warmup_steps = t.total_steps // 10
  t.log_every, t.checkpoint_every, t.eval_every = 50, 1000, 0
  return c
