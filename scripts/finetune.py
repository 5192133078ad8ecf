"""Multiple-choice finetuning (TVQA-like or VCR-like) of a pretrained params checkpoint, then evaluation.

  python scripts/finetune.py --config configs/finetune_vcr.py --init CKPT --workdir /tmp/vcr \
      --data_dir /data/vcr_manual --tokenizer gpt2_dir

CKPT is a params checkpoint (scripts/convert_tf_checkpoint.py, or train.checkpoint.save_params); its model
replaces the config's. The data layout is in merlot_jax/tasks/mc_data.py. Training resumes from
WORKDIR/checkpoints; the eval split's accuracies are printed next to chance.
"""

import argparse
import functools
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from merlot_jax.config import load_config  # noqa: E402
from merlot_jax.data.tokenizer import load_tokenizer  # noqa: E402
from merlot_jax.tasks import finetune as ft  # noqa: E402
from merlot_jax.tasks import mc_data  # noqa: E402
from merlot_jax.train import logs  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, help='configs/finetune_tvqa.py or configs/finetune_vcr.py')
  parser.add_argument('--init', required=True, help='params checkpoint directory (config.json + params/)')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', required=True, help='the manual directory (<split>.jsonl + JPEGs)')
  parser.add_argument('--tokenizer', required=True, help='the checkpoint\'s tokenizer (.model or GPT-2 dir)')
  parser.add_argument('--tfds_data_dir', default=None, help='where TFDS prepares the dataset')
  parser.add_argument('--train_split', default='train')
  parser.add_argument('--eval_split', default='val')
  parser.add_argument('--no_progress', action='store_true')
  parser.add_argument('--config_override_ok', action='store_true',
                      help='resume WORKDIR even if the config changes what the run trains')
  args = parser.parse_args(argv)

  config = ft.load_finetune_config(load_config(args.config), args.init)
  tokenizer = load_tokenizer(args.tokenizer)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(f'--tokenizer {args.tokenizer} has {tokenizer.vocab_size} ids but the checkpoint\'s '
                     f'model.vocab_size is {config.model.vocab_size}')
  task = config.finetune.task
  load = functools.partial(mc_data.load_problems, task, args.data_dir, data_dir=args.tfds_data_dir)

  def batches_factory(start, position):
    del position  # the data position is the step: training_batches skips what was seen
    return mc_data.training_batches(lambda seed: load(args.train_split, shuffle_seed=seed), config, tokenizer,
                                    start)

  with logs.library_info_to_file(pathlib.Path(args.workdir) / 'log.txt'):
    state = ft.finetune(config, args.workdir, batches_factory, init_checkpoint=args.init,
                        progress=not args.no_progress, config_override_ok=args.config_override_ok)
  eval_batches = mc_data.mc_batches(load(args.eval_split), config, tokenizer, config.train.global_batch_size)
  metrics = ft.summarize(ft.predict(config, state.params, eval_batches), config.finetune.heads)
  print(f'{task} {args.eval_split}: ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()) +
        f' (chance per head {ft.chance(config):.4f})')
  return metrics


if __name__ == '__main__':
  main()
