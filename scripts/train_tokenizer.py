"""Trains the project's SentencePiece tokenizer on text files (one sentence per line)."""

import argparse

from merlot_jax.data.tokenizer import train_sentencepiece


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--input', nargs='+', required=True, metavar='FILE', help='training text files')
  parser.add_argument('--out', required=True, metavar='PREFIX', help='writes PREFIX.model and PREFIX.vocab')
  parser.add_argument('--vocab_size', type=int, required=True,
                      help='SentencePiece pieces (a soft limit); the id space is 100 larger')
  parser.add_argument('--model_type', default='unigram', choices=['unigram', 'bpe', 'word', 'char'],
                      help='bpe keeps whole words on small corpora where unigram falls back to letters')
  args = parser.parse_args()
  print(train_sentencepiece(args.input, args.out, args.vocab_size, model_type=args.model_type))


if __name__ == '__main__':
  main()
