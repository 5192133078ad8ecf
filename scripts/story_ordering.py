"""Zero-shot visual story ordering: a checkpoint's Spearman, pairwise accuracy and mean distance next
to those of a random order (merlot_jax/tasks/story_ordering.py has the method).

  python scripts/story_ordering.py --checkpoint CKPT --tokenizer spm.model --data synthetic:/tmp/corpus
  python scripts/story_ordering.py --checkpoint CKPT --tokenizer gpt2_dir --data vist:/data/vist --split val

CKPT is a params checkpoint (scripts/convert_tf_checkpoint.py, or train.checkpoint.save_params).
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from merlot_jax.data.tokenizer import load_tokenizer  # noqa: E402
from merlot_jax.tasks import story_data  # noqa: E402
from merlot_jax.tasks import story_ordering as so  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', required=True, help='params checkpoint directory (config.json + params/)')
  parser.add_argument('--data', required=True, help='synthetic:CORPUS_DIR or vist:MANUAL_DIR')
  parser.add_argument('--tokenizer', required=True,
                      help='the checkpoint\'s tokenizer: SentencePiece .model, or a GPT-2 BPE directory')
  parser.add_argument('--split', default='val', help='VIST split (train | val | test); unused for synthetic')
  parser.add_argument('--limit', type=int, default=None, help='order only the first N stories')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--seed', type=int, default=0, help='image order shown and unknown-position draws')
  parser.add_argument('--tfds_data_dir', default=None, help='where TFDS prepares vist_story_ordering')
  args = parser.parse_args(argv)

  model, config = so.load_story_model(args.checkpoint)
  tokenizer = load_tokenizer(args.tokenizer)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(f'--tokenizer {args.tokenizer} has {tokenizer.vocab_size} ids but the checkpoint\'s '
                     f'model.vocab_size is {config.model.vocab_size}: not the tokenizer it was trained with')
  stories = story_data.load_stories(args.data, args.split, limit=args.limit, tfds_data_dir=args.tfds_data_dir)
  batches = story_data.story_batches(stories, config, tokenizer, args.batch_size, args.seed)
  predictions = so.evaluate(model, batches, seed=args.seed)
  metrics, baseline = so.summarize(predictions), so.random_baseline()
  print(f'story ordering: {len(predictions)} stories from {args.data}')
  print(f'{"metric":<20}{"model":>10}{"random":>10}')
  for name, value in metrics.items():
    model_value, random_value = (round(v, 4) + 0.0 for v in (value, baseline[name]))  # + 0.0: no '-0.0000'
    print(f'{name:<20}{model_value:>10.4f}{random_value:>10.4f}')
  return metrics


if __name__ == '__main__':
  main()
