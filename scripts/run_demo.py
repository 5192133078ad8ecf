"""The built-in CPU pretraining run behind `make pretrain`; every stage is skipped when its output exists.

  synthetic story videos -> SentencePiece tokenizer -> preprocessed corpus (train + held-out)
  -> pretraining (configs/demo.py; resumes) -> held-out evaluation and zero-shot ordering of the
  held-out stories -> curves.png + summary.txt

  python scripts/run_demo.py --workdir workdir/demo [--videos 300] [--config.train.total_steps=100]
"""

import logging
import pathlib

from absl import app, flags

from merlot_jax import flags as flags_lib
from merlot_jax.config import validate
from merlot_jax.data.pipeline import make_dataset
from merlot_jax.data.tokenizer import load_tokenizer, train_sentencepiece
from merlot_jax.preprocess import corpus, synthetic
from merlot_jax.pretraining import report
from merlot_jax.pretraining.task import PRETRAINING
from merlot_jax.tasks import story_data
from merlot_jax.tasks import story_ordering as so
from merlot_jax.train import logs, loop, setup

_CONFIG = flags_lib.define_config('demo', 'config name (configs/NAME.py) or file')
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/demo', 'everything the run makes goes here')
_VIDEOS = flags.DEFINE_integer('videos', 300, 'synthetic videos (10% held out)')
_SEED = flags.DEFINE_integer('seed', 0, 'synthetic corpus seed')
_LOG = logging.getLogger('merlot_jax.scripts.run_demo')  # not __name__ ('__main__' when run as a file): train/logs.py
_VOCAB = flags.DEFINE_integer('vocab_size', 400, 'SentencePiece pieces (soft limit)')


def prepare_data(config, root: pathlib.Path) -> None:
  """Corpus videos, tokenizer and preprocessed shards under root (kept between runs)."""
  videos = root / 'synthetic'
  if not (videos / 'synthetic.json').is_file():
    _LOG.info('writing %d synthetic videos to %s', _VIDEOS.value, videos)
    synthetic.make_corpus(videos, _VIDEOS.value, _SEED.value)
  spm = root / 'tokenizer' / 'spm.model'
  if not spm.is_file():
    train_sentencepiece([videos / 'narration.txt'], spm.with_suffix(''), _VOCAB.value, model_type='bpe')
  options = corpus.Options(num_segments=config.model.num_segments, segment_tokens=config.model.segment_length,
                           videos_per_shard=32)
  for split in ('train', 'heldout'):
    manifest = corpus.write_corpus(str(videos / 'videos' / split), str(root / 'corpus' / split), str(spm), options)
    _LOG.info('%s corpus: %d examples from %d videos (%d skipped)', split, manifest['examples'],
                 manifest['videos'], len(manifest['skipped_videos']))
    if manifest['examples'] < config.train.global_batch_size:
      raise app.UsageError(f'the {split} corpus in {root / "corpus" / split} has {manifest["examples"]} examples, '
                           f'fewer than one batch of {config.train.global_batch_size}: use more --videos')


def order_stories(root: pathlib.Path) -> dict[str, dict[str, float]]:
  """Zero-shot ordering of the corpus's held-out stories by the trained model, next to a random order."""
  model, config = so.load_story_model(root / 'run')
  tokenizer = load_tokenizer(root / 'tokenizer' / 'spm.model')
  stories = story_data.load_stories(f'synthetic:{root / "synthetic"}')
  predictions = so.evaluate(model, story_data.story_batches(stories, config, tokenizer, batch_size=8))
  return {'stories': len(predictions), 'model': so.summarize(predictions), 'random': so.random_baseline()}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  root = pathlib.Path(_WORKDIR.value)
  with logs.library_info_to_file(root / 'log.txt'):
    run_demo(root, _CONFIG.value)


def run_demo(root: pathlib.Path, config) -> None:
  """Corpus and tokenizer -> pretraining -> heldout evaluation, chance levels, curves and summary."""
  prepare_data(config, root)
  config.model.vocab_size = load_tokenizer(root / 'tokenizer' / 'spm.model').vocab_size
  config.data.train_pattern = str(root / 'corpus' / 'train' / 'train-*.tfrecord')
  config.data.eval_pattern = str(root / 'corpus' / 'heldout' / 'train-*.tfrecord')
  config = validate(config)
  d = config.data
  heldout = lambda: make_dataset(config, d.eval_pattern, train=False, seed=d.seed, shuffle_frames=True)
  state = loop.train(
      config, PRETRAINING, root / 'run',
      lambda start, position: make_dataset(config, d.train_pattern, train=True, seed=d.seed, start_step=start,
                                           start_position=position),
      eval_batches_factory=heldout)
  scalars = report.read_scalars(root / 'run' / 'train')  # training and periodic eval/ scalars
  results = loop.evaluate(setup.build(config, PRETRAINING), state, heldout())
  chance = report.chance_levels(heldout(), config)
  report.plot_curves(scalars, root / 'curves.png')
  print(report.write_summary(root, scalars, results, chance, order_stories(root)))
  print(f'curves: {root / "curves.png"}; summary: {root / "summary.txt"}; full log: {root / "log.txt"}')


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
