"""Finetuning on VCR-like multiple-choice image QA (merlot_jax/tasks/mc_data.py has the input format).

As the original's downstream/vcr with model/configs/merlot_vcr.yaml: one image, Q->A and QA->R trained
together with a head each; learning rate 1.2e-5, warmup 10% of the steps, Adam b2 0.98, weight decay
0.01, batch 64. Differences from pretraining: one frame and one long text per option (segment_length
134, the original's answer-mode length; rationales longer than that are cut), far fewer steps (18
epochs in the original: 60k steps; here ~5 epochs of the 2 x 213k problems), no MLM/contrastive/
temporal losses. The architecture comes from the --init params checkpoint.
"""

from ml_collections import ConfigDict

from merlot_jax.config import default_config


def get_config():
  c = default_config()
  c.finetune = ConfigDict({'task': 'vcr', 'num_frames': 1, 'segment_length': 134, 'num_options': 4,
                           'heads': ('answer', 'rationale')})
  p = c.optim
  p.learning_rate, p.weight_decay, p.b2 = 1.2e-5, 0.01, 0.98
  t = c.train
  t.global_batch_size = 64
  t.total_steps = 33_000
  p.warmup_steps = t.total_steps // 10
  t.log_every, t.checkpoint_every, t.eval_every = 100, 2000, 0
  return c
