"""Finetunes a pretrained model on VCR, TVQA (multiple choice) or MSRVTT-QA (open-ended), then evaluates.

  python scripts/finetune.py --config configs/finetune_vcr.py --init CKPT --workdir /tmp/vcr \
      --data_dir /data/vcr1 --tokenizer gpt2_dir [--config.train.total_steps=1000]

CKPT is a params checkpoint (scripts/convert_tf_checkpoint.py, or merlot_jax.workdir.save_params); its model
replaces the config's (so --config.model.* overrides have no effect). DATA_DIR is the release's root as
unpacked (merlot_jax/tasks/vcr.py, tvqa.py, msrvtt_qa.py describe each layout). Training resumes from
WORKDIR/checkpoints; the eval split's accuracies are printed next to chance, with the data's skip counts.
"""

import functools
import os

from absl import app, flags

from merlot_jax import flags as flags_lib
from merlot_jax.config import validate
from merlot_jax.data.tokenizer import check_vocab, load_tokenizer
from merlot_jax.tasks import finetune as ft
from merlot_jax.tasks import mc_data, msrvtt_qa
from merlot_jax.train import logs

_CONFIG = flags_lib.define_config(None, 'finetune_vcr, finetune_tvqa or finetune_msrvtt_qa, or a config file')
_INIT = flags.DEFINE_string('init', None, 'the pretrained body: a params checkpoint (config.json + params/) or a '
                            'pretraining workdir (its latest checkpoint)')
_WORKDIR = flags.DEFINE_string('workdir', None, 'checkpoints, TensorBoard events and config.json go here')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'the release root, as unpacked')
_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'the checkpoint\'s tokenizer (.model or GPT-2 dir)')
_TFDS_DATA_DIR = flags.DEFINE_string('tfds_data_dir', None, 'where TFDS prepares VCR / TVQA')
_TRAIN_SPLIT = flags.DEFINE_string('train_split', 'train', 'split trained on')
_EVAL_SPLIT = flags.DEFINE_string('eval_split', 'val', 'split evaluated after training')
_NO_PROGRESS = flags.DEFINE_bool('no_progress', False, 'no progress bar')
_OVERRIDE = flags.DEFINE_bool('config_override_ok', False,
                              'resume WORKDIR even if the config changes what the run trains')
flags.mark_flags_as_required(['config', 'init', 'workdir', 'data_dir', 'tokenizer'])


def finetune_multiple_choice(config, tokenizer) -> str:
  """VCR or TVQA: trains, then the eval split's per-head accuracies next to chance."""
  task = config.finetune.task
  load = functools.partial(mc_data.load_problems, task, _DATA_DIR.value, data_dir=_TFDS_DATA_DIR.value)

  def batches_factory(start, position):
    del position  # the data position is the step: training_batches skips what was seen
    return mc_data.training_batches(lambda seed: load(_TRAIN_SPLIT.value, shuffle_seed=seed), config, tokenizer,
                                    start)

  state = ft.finetune(config, _WORKDIR.value, batches_factory, init_checkpoint=_INIT.value,
                      progress=not _NO_PROGRESS.value, config_override_ok=_OVERRIDE.value)
  eval_batches = mc_data.mc_batches(load(_EVAL_SPLIT.value), config, tokenizer, config.train.global_batch_size)
  metrics = ft.summarize(ft.predict(config, state.params, eval_batches), config.finetune.heads)
  return (f'{task} {_EVAL_SPLIT.value}: ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()) +
          f' (chance per head {ft.uniform_chance(config.finetune.num_options):.4f})')


def finetune_msrvtt_qa(config, tokenizer) -> str:
  """MSRVTT-QA: trains on the train split, then accuracy over every question of the eval split."""
  state, vocabulary = msrvtt_qa.finetune(config, _DATA_DIR.value, _WORKDIR.value, tokenizer,
                                         init_checkpoint=_INIT.value, progress=not _NO_PROGRESS.value,
                                         config_override_ok=_OVERRIDE.value)
  return msrvtt_qa.format_summary(msrvtt_qa.evaluate(config, state.params, _DATA_DIR.value, _EVAL_SPLIT.value,
                                                     tokenizer, vocabulary, workdir=_WORKDIR.value,
                                                     progress=not _NO_PROGRESS.value))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = ft.load_finetune_config(validate(_CONFIG.value), _INIT.value)
  tokenizer = load_tokenizer(_TOKENIZER.value)
  check_vocab(tokenizer, config)
  run = finetune_msrvtt_qa if config.finetune.task == 'msrvtt_qa' else finetune_multiple_choice
  with logs.library_info_to_file(os.path.join(_WORKDIR.value, 'log.txt')):
    summary = run(config, tokenizer)
  print(summary)


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
