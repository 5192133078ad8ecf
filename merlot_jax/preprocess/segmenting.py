"""Splitting a timed transcript into segments of at most `max_tokens` tokens, as data/process.py does.

Each segment pairs raw (ASR) tokens with clean (denoised) tokens of the same stretch of time and has the
time of its middle, where its video frame is taken.
"""

import bisect
import dataclasses
from collections.abc import Sequence

from merlot_jax.data.tokenizer import Tokenizer
from merlot_jax.preprocess.transcripts import Word

SENTENCE_ENDS = ('.', '?', '!')


@dataclasses.dataclass(frozen=True)
class Segment:
  raw_tokens: tuple[int, ...]  # without the start token, which the pipeline prepends
  clean_tokens: tuple[int, ...]
  start: float  # start of the first raw word, seconds
  end: float  # end of the last raw word
  time: float  # (start + end) / 2


def _group_clean(raw_words: Sequence[Word], clean_words: Sequence[Word]) -> list[list[str]]:
  """Clean words of each raw word: those starting at or after it and before the next raw word."""
  starts = [w.start for w in raw_words]
  groups = [[] for _ in raw_words]
  for w in clean_words:
    groups[max(bisect.bisect_right(starts, w.start) - 1, 0)].append(w.text)
  return groups


def _encode_words(tokenizer: Tokenizer, words: Sequence[str]) -> list[int]:
  """Tokens of words, each encoded with a leading space as the original does."""
  return [t for w in words for t in tokenizer.encode(' ' + w)]


def make_segments(raw_words: Sequence[Word], tokenizer: Tokenizer, clean_words: Sequence[Word] | None = None,
                  max_tokens: int = 32, fill_fraction: float = 0.75) -> list[Segment]:
  """Segments of whole raw words, in order, covering every word.

  The rule of the original (split_video_into_chunks): add raw words (with their clean words) one by one;
  close the segment when the next word would take the raw or clean tokens past `max_tokens` - 1 (the start
  token is added later), or when the clean text so far ends a sentence (., ? or !) and holds at least
  `fill_fraction` * (`max_tokens` - 1) clean tokens. Without `clean_words` the raw words are the clean ones.
  Clean words belong to the raw word they start with (aligned words carry its exact time).

  Deliberate differences: a single word longer than the budget is cut to it (the original let the
  segment overflow); `time` is the middle of the first word's start and the last word's end (the original
  averaged the two words' start times); segments near the video's end are not dropped here (the
  original dropped those whose middle was within 1 s of the video's duration).
  """
  if max_tokens < 2:
    raise ValueError(f'make_segments: max_tokens={max_tokens} leaves no room after the start token')
  if not raw_words:
    return []
  budget = max_tokens - 1
  raw_tokens = [_encode_words(tokenizer, [w.text]) for w in raw_words]
  if clean_words is None:
    groups = [[w.text] for w in raw_words]
    clean_tokens = raw_tokens
  else:
    groups = _group_clean(raw_words, clean_words)
    clean_tokens = [_encode_words(tokenizer, g) for g in groups]

  segments, first, raw_buf, clean_buf = [], 0, [], []
  for i, word in enumerate(raw_words):
    raw_buf += raw_tokens[i]
    clean_buf += clean_tokens[i]
    last = i == len(raw_words) - 1
    full = not last and max(len(raw_buf) + len(raw_tokens[i + 1]),
                            len(clean_buf) + len(clean_tokens[i + 1])) > budget
    sentence_end = bool(groups[i]) and groups[i][-1].endswith(SENTENCE_ENDS)
    if last or full or (sentence_end and len(clean_buf) >= fill_fraction * budget):
      start = raw_words[first].start
      segments.append(Segment(tuple(raw_buf[:budget]), tuple(clean_buf[:budget]), start, word.end,
                              (start + word.end) / 2))
      first, raw_buf, clean_buf = i + 1, [], []
  return segments
