"""Zero-shot visual story ordering: a checkpoint's Spearman, pairwise accuracy and mean distance next
to those of a random order (merlot_jax/tasks/story_ordering.py has the method).

  python scripts/story_ordering.py --checkpoint CKPT --tokenizer spm.model --data synthetic:/tmp/corpus
  python scripts/story_ordering.py --checkpoint CKPT --tokenizer gpt2_dir --data vist:/data/vist --split val

CKPT is a params checkpoint (scripts/convert_tf_checkpoint.py, or merlot_jax.workdir.save_params).
"""

from absl import app, flags

from merlot_jax.data.tokenizer import check_vocab, load_tokenizer
from merlot_jax.tasks import story_data
from merlot_jax.tasks import story_ordering as so

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'params checkpoint directory (config.json + params/)')
_DATA = flags.DEFINE_string('data', None, 'synthetic:CORPUS_DIR or vist:MANUAL_DIR')
_TOKENIZER = flags.DEFINE_string('tokenizer', None,
                                 'the checkpoint\'s tokenizer: SentencePiece .model, or a GPT-2 BPE directory')
_SPLIT = flags.DEFINE_string('split', 'val', 'VIST split (train | val | test); unused for synthetic')
_LIMIT = flags.DEFINE_integer('limit', None, 'order only the first N stories')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'stories per forward')
_SEED = flags.DEFINE_integer('seed', 0, 'image order shown and unknown-position draws')
_TFDS_DATA_DIR = flags.DEFINE_string('tfds_data_dir', None, 'where TFDS prepares vist_story_ordering')
flags.mark_flags_as_required(['checkpoint', 'data', 'tokenizer'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  model, config = so.load_story_model(_CHECKPOINT.value)
  tokenizer = load_tokenizer(_TOKENIZER.value)
  check_vocab(tokenizer, config)
  stories = story_data.load_stories(_DATA.value, _SPLIT.value, limit=_LIMIT.value, tfds_data_dir=_TFDS_DATA_DIR.value)
  batches = story_data.story_batches(stories, config, tokenizer, _BATCH_SIZE.value, _SEED.value)
  predictions = so.evaluate(model, batches, seed=_SEED.value)
  metrics, baseline = so.summarize(predictions), so.random_baseline()
  print(f'story ordering: {len(predictions)} stories from {_DATA.value}')
  print(f'{"metric":<20}{"model":>10}{"random":>10}')
  for name, value in metrics.items():
    model_value, random_value = (round(v, 4) + 0.0 for v in (value, baseline[name]))  # + 0.0: no '-0.0000'
    print(f'{name:<20}{model_value:>10.4f}{random_value:>10.4f}')


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
