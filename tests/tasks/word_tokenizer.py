"""A tokenizer for task tests whose ids can be written by hand: whitespace words -> 100 + their index."""

from collections.abc import Sequence


class WordTokenizer:
  """Whitespace words -> ids 100 + their index in a fixed vocabulary (ids below 100 are the special ones)."""

  name = 'test-words'

  def __init__(self, words: Sequence[str]):
    self.ids = {w: 100 + i for i, w in enumerate(words)}
    self.vocab_size = 100 + len(words)

  def encode(self, text: str) -> list[int]:
    return [self.ids[w] for w in text.split()]

  def decode(self, ids) -> str:
    inverse = {v: k for k, v in self.ids.items()}
    return ' '.join(inverse[i] for i in ids if i >= 100)
