"""Finetuning on VCR: scripts/finetune.py trains, scripts/predict.py writes val accuracies and the leaderboard CSV
(merlot_jax/tasks/vcr.py reads the release and renders and draws as the original).

As the original's downstream/vcr: train.py with dataloader_joint.py and model/configs/merlot_vcr.yaml (each
field's source beside it). Q->A and QA->R are trained jointly with a head each and Q->AR is reported. The
architecture comes from the --init params checkpoint; only the layout below replaces the pretrained one.
"""

from ml_collections import ConfigDict

from merlot_jax.config import default_config


def get_config():
  c = default_config()
  c.finetune = ConfigDict({
      'task': 'vcr',  # = 'vcr/segm': segmentation outlines drawn (merlot_vcr.yaml data.draw: "segm"); or 'vcr/bbox'
      'num_frames': 1,  # one image
      'segment_length': 184,  # dataloader_joint.py MAX_NUM_TOKENS, for Q->A and QA->R alike
      'num_options': 4,
      'heads': ('answer', 'rationale'),  # modeling.py cls_head: answer_cls and rationale_cls
      'image_size': (384, 704),  # merlot_vcr.yaml model.image_size (pretraining: 192 x 352)
  })
  d = c.data
  d.random_scale_min, d.random_scale_max = 0.9, 1.1  # dataloader_joint.py resize_and_pad(do_random_scale=is_training)
  d.augment_prob = 0.0  # dataloader_joint.py applies no colour augmentation
  p = c.optim
  p.learning_rate = 1.2e-5  # merlot_vcr.yaml optimizer.learning_rate
  p.warmup_steps = 6000  # num_warmup_steps
  p.b2 = 0.98  # beta_2
  p.weight_decay = 0.01  # weight_decay_rate (norms and biases exempt, as param_overrides)
  p.clip_norm = 0.0  # clip_norm
  p.bf16_moments = True  # use_bfloat16_adam
  t = c.train
  # device.train_batch_size 64 annotations, each giving a Q->A and a QA->R problem: 128 problems per step.
  t.global_batch_size = 128
  t.total_steps = 60_000  # num_train_steps ("18 epochs" of the 213k training annotations)
  t.log_every, t.checkpoint_every, t.eval_every = 100, 2500, 0  # iterations_per_loop 2500
  return c
