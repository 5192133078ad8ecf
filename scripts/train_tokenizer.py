"""Trains the project's SentencePiece tokenizer on text files (one sentence per line).

  python scripts/train_tokenizer.py --input a.txt --input b.txt --out spm --vocab_size 32000
"""

from absl import app, flags

from merlot_jax.data.tokenizer import train_sentencepiece

_INPUT = flags.DEFINE_multi_string('input', None, 'a training text file (repeat the flag for more)')
_OUT = flags.DEFINE_string('out', None, 'PREFIX: writes PREFIX.model and PREFIX.vocab')
_VOCAB_SIZE = flags.DEFINE_integer('vocab_size', None,
                                   'SentencePiece pieces (a soft limit); the id space is 100 larger')
_MODEL_TYPE = flags.DEFINE_enum('model_type', 'unigram', ['unigram', 'bpe', 'word', 'char'],
                                'bpe keeps whole words on small corpora where unigram falls back to letters')
flags.mark_flags_as_required(['input', 'out', 'vocab_size'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]} (one --input per file)')
  print(train_sentencepiece(_INPUT.value, _OUT.value, _VOCAB_SIZE.value, model_type=_MODEL_TYPE.value))


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
