"""Finetuning on TVQA: scripts/finetune.py trains, scripts/predict.py writes val accuracy and the leaderboard
files (merlot_jax/tasks/tvqa.py reads the release: frames and subtitles of each question's moment).

The original MERLOT code has no TVQA recipe; where the paper gives none, the values follow MERLOT Reserve's
finetune/tvqa/tvqa_finetune.py (its base-size recipe) or the original's VCR finetuning, as noted per field. The
architecture comes from the --init params checkpoint; only the layout below replaces the pretrained one.
"""

from ml_collections import ConfigDict

from merlot_jax.config import default_config

TRAIN_QUESTIONS = 122_112  # tvqa_train.jsonl (MERLOT Reserve's TRAIN_SIZE)


def get_config():
  c = default_config()
  c.finetune = ConfigDict({
      'task': 'tvqa',  # = 'tvqa/frames_6': the frames stored per question match num_frames
      'num_frames': 6,  # frames of the question's window, one group with their subtitles (this project's choice)
      'segment_length': 32,  # pretraining's segment length: 6 x 32 = 192 text tokens per option
      'num_options': 5,
      'heads': ('answer',),
  })
  d = c.data
  d.random_scale_min, d.random_scale_max = 0.9, 1.1  # as the original's VCR finetuning (dataloader_joint.py)
  d.augment_prob = 0.0  # as the original's VCR finetuning: no colour augmentation
  p = c.optim
  p.learning_rate = 1e-5  # MERLOT Reserve's base-size finetuning rate (finetune/vcr/README.md); paper: none for MERLOT
  p.b2 = 0.98  # the original's merlot_vcr.yaml beta_2
  p.weight_decay = 0.1  # tvqa_finetune.py weight_decay_rate
  p.clip_norm = 0.0  # merlot_vcr.yaml clip_norm
  t = c.train
  t.global_batch_size = 32  # tvqa_finetune.py device.batch_size
  steps_per_epoch = TRAIN_QUESTIONS // t.global_batch_size
  t.total_steps = 3 * steps_per_epoch  # tvqa_finetune.py -ne=3 (MERLOT Reserve's README)
  p.warmup_steps = steps_per_epoch // 2  # tvqa_finetune.py num_warmup_steps: half an epoch
  t.log_every, t.checkpoint_every, t.eval_every = 100, steps_per_epoch, 0
  return c
