"""Finetuning on MSRVTT-QA, open-ended (merlot_jax/tasks/msrvtt_qa.py has the release layout).

The architecture comes from the --init params checkpoint (tasks/finetune.py: finetune_config); the `model`
here is only the paper default it is replaced by. The task's frames are one group of the joint encoder with
the question as segment 0's text, and a softmax over the answer vocabulary (tasks/open_qa.py).

Sources. The MERLOT paper reports MSRVTT-QA (43.1% test accuracy) but the finetuning code was never released,
and the appendix's per-task settings could not be checked for this file (the reference store here holds only
the opening of the paper's text). So each value below names where it comes from instead:
  * frames: MERLOT Reserve's own MSRVTT-QA code (rowanz/merlot_reserve demo/zero_shot_qa/extract_feat.py)
    cuts each clip into 3 s chunks and notes the average clip length, 15.18 s: 5 chunks, a frame each.
  * answers: the 1500 most frequent training answers, as ClipBERT (jayleicn/ClipBERT, msrvtt_qa) and the
    works that compare with it; a test answer outside them counts as wrong.
  * optimizer, batch and warmup: the original's only released finetuning config, model/configs/
    merlot_vcr.yaml (Adam, lr 1.2e-5, b2 0.98, weight decay 0.01, 10% linear warmup, batch 64).
  * epochs: 10, as ClipBERT's src/configs/msrvtt_qa_base_resnet50.json (num_train_epochs); not published
    for MERLOT here.
"""

from ml_collections import ConfigDict

from merlot_jax.config import default_config

TRAIN_QUESTIONS = 158_581  # train_qa.json of the MSRVTT-QA release (Xu et al. 2017)


def get_config():
  c = default_config()
  c.finetune = ConfigDict({
      'task': 'msrvtt_qa',
      'num_frames': 5,  # MERLOT Reserve's MSRVTT-QA code: 3 s chunks of ~15 s clips (see above)
      'segment_length': 32,  # pretraining's segment length (merlot.yaml); questions are ~8 tokens
      'num_options': 1500,  # the answer vocabulary: the most frequent training answers (ClipBERT)
      'heads': ('answer',),  # one classifier (tasks/open_qa.py)
  })
  p = c.optim
  p.learning_rate, p.weight_decay, p.b2 = 1.2e-5, 0.01, 0.98  # merlot_vcr.yaml
  t = c.train
  t.global_batch_size = 64  # merlot_vcr.yaml
  t.total_steps = 10 * TRAIN_QUESTIONS // t.global_batch_size  # 10 epochs (ClipBERT): 24,778 steps
  p.warmup_steps = t.total_steps // 10  # merlot_vcr.yaml: 6000 of 60000 steps
  t.log_every, t.checkpoint_every, t.eval_every = 100, 2000, 0
  return c
