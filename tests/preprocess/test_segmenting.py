"""Segments: token budget, the sentence rule, clean words by time, segment times, nothing lost."""

import itertools

import pytest

from merlot_jax.preprocess.segmenting import Segment, make_segments
from merlot_jax.preprocess.transcripts import Word, align_clean_words, load_denoised, load_transcript


class CharTokenizer:
  """One id per character (100 + code point), so a word ' abc' is 4 tokens and counts are easy by hand."""

  name = 'chars'
  vocab_size = 100 + 0x110000

  def encode(self, text):
    return [100 + ord(c) for c in text]

  def decode(self, ids):
    return ''.join(chr(i - 100) for i in ids if i >= 100)


TOK = CharTokenizer()


def _words(*texts):
  """Word i spans [i, i + 1) seconds."""
  return [Word(t, float(i), i + 1.0) for i, t in enumerate(texts)]


def _raw_texts(segments):
  return [TOK.decode(s.raw_tokens) for s in segments]


def _clean_texts(segments):
  return [TOK.decode(s.clean_tokens) for s in segments]


def test_budget_closes_a_segment_before_it_overflows():
  # max_tokens 9 -> 8 tokens after the start token. ' aaa' + ' bbb' = 8 fits, + ' c' would be 10;
  # ' c' + ' dddddd' would be 9; ' dddddd' + ' e' would be 9.
  segments = make_segments(_words('aaa', 'bbb', 'c', 'dddddd', 'e'), TOK, max_tokens=9)
  assert _raw_texts(segments) == [' aaa bbb', ' c', ' dddddd', ' e']
  assert all(s.clean_tokens == s.raw_tokens for s in segments)


@pytest.mark.parametrize('words, expected', [
    # 8 tokens of budget, 75% = 6: ' a bb.' is 6 tokens and ends a sentence, so it closes.
    (('a', 'bb.', 'c'), [' a bb.', ' c']),
    (('a', 'bb?', 'c'), [' a bb?', ' c']),
    (('a', 'bb!', 'c'), [' a bb!', ' c']),
    # ' a b.' is 5 tokens, under 75%: no cut. A comma is no sentence end.
    (('a', 'b.', 'c'), [' a b. c']),
    (('a', 'bb,', 'c'), [' a bb, c']),
])
def test_sentence_end_closes_a_segment_once_75_percent_full(words, expected):
  assert _raw_texts(make_segments(_words(*words), TOK, max_tokens=9)) == expected


def test_sentence_rule_reads_the_clean_text():
  raw = _words('a', 'bb', 'c')
  segments = make_segments(raw, TOK, clean_words=_words('A', 'bb.', 'c'), max_tokens=9)
  assert _raw_texts(segments) == [' a bb', ' c'] and _clean_texts(segments) == [' A bb.', ' c']
  segments = make_segments(_words('a', 'bb.', 'c'), TOK, clean_words=_words('A', 'bb', 'c'), max_tokens=9)
  assert _raw_texts(segments) == [' a bb. c']


def test_clean_tokens_count_against_the_budget():
  # Raw ' a' is 2 tokens but clean ' aaaa' is 5: two clean words (10) would pass 8.
  segments = make_segments(_words('a', 'b', 'c'), TOK, clean_words=_words('aaaa', 'bbbb', 'cccc'),
                           max_tokens=9)
  assert _raw_texts(segments) == [' a', ' b', ' c']
  assert _clean_texts(segments) == [' aaaa', ' bbbb', ' cccc']


def test_clean_words_follow_the_raw_word_they_start_in():
  raw = _words('x', 'y', 'z')
  clean = [Word('X', 0.0, 1.0), Word('and', 0.0, 1.0), Word('Y.', 1.0, 2.0), Word('Z', 2.5, 2.7)]
  # Budget 11, 75% = 8.25: the clean ' X and Y.' (9 tokens) ends a sentence after raw 'y'.
  segments = make_segments(raw, TOK, clean_words=clean, max_tokens=12)
  assert _raw_texts(segments) == [' x y', ' z']
  assert _clean_texts(segments) == [' X and Y.', ' Z']


def test_segment_times_are_the_middle_of_their_words():
  words = [Word('aaa', 0.5, 0.9), Word('bbb', 1.0, 1.6), Word('ccc', 2.0, 3.0)]
  segments = make_segments(words, TOK, max_tokens=9)
  assert segments == [Segment(tuple(TOK.encode(' aaa bbb')), tuple(TOK.encode(' aaa bbb')), 0.5, 1.6, 1.05),
                      Segment(tuple(TOK.encode(' ccc')), tuple(TOK.encode(' ccc')), 2.0, 3.0, 2.5)]


def test_a_word_longer_than_the_budget_is_cut():
  assert _raw_texts(make_segments(_words('abcdefgh', 'i'), TOK, max_tokens=5)) == [' abc', ' i']


def test_edge_cases():
  assert make_segments([], TOK) == []
  with pytest.raises(ValueError, match='max_tokens=1'):
    make_segments(_words('a'), TOK, max_tokens=1)


def test_sample_segments_keep_every_word(youtube_sample):
  sample = youtube_sample
  raw = load_transcript(sample.with_suffix('.en.vtt'))
  clean = align_clean_words(raw, load_denoised(sample.with_suffix('.grover.json')))
  segments = make_segments(raw, TOK, clean_words=clean)
  assert len(segments) > 16
  assert all(len(s.raw_tokens) <= 31 and len(s.clean_tokens) <= 31 for s in segments)
  assert ''.join(_raw_texts(segments)) == ''.join(' ' + w.text for w in raw)
  assert ''.join(_clean_texts(segments)) == ''.join(' ' + w.text for w in clean)
  assert segments[0].start == raw[0].start and segments[-1].end == raw[-1].end
  assert all(a.end <= b.start and a.time < b.time for a, b in itertools.pairwise(segments))
  # Some segments close early at a sentence end, which raw ASR text (no punctuation) never shows.
  assert any(t.endswith('.') and len(t) < 31 for t in _clean_texts(segments[:-1]))
