"""Transcripts: the sample against its .grover.json, messy hand-written files, and alignment."""

import itertools
import json
import random
import re
import string

import pytest

from merlot_jax.preprocess.transcripts import (
  TranscriptError,
  Word,
  _levenshtein_matrix,
  align_clean_words,
  load_denoised,
  load_transcript,
)


def _timed(words):
  return [(w.text, pytest.approx(w.start, abs=1e-9), pytest.approx(w.end, abs=1e-9)) for w in words]


def _write(path, data: bytes):
  path.write_bytes(data)
  return path


def test_sample_vtt_matches_grover_subtitles(youtube_sample):
  words = load_transcript(youtube_sample.with_suffix('.en.vtt'))
  grover = json.loads((youtube_sample.with_suffix('.grover.json')).read_text())['subtitles']
  # The original's scraper dropped one word: "sweetness", a caption line without word-time tags
  # (cue 00:03:08.380 --> 00:03:11.080). Every other word and start time agrees; the "[Music]" cues give
  # no words.
  assert len(grover) == 641 and len(words) == 642
  extra = words[483]
  assert (extra.text, extra.start, extra.end) == ('sweetness', pytest.approx(188.38), pytest.approx(191.08))
  rest = words[:483] + words[484:]
  assert [w.text for w in rest] == [g['word'] for g in grover]
  assert all(abs(w.start - g['time']) < 1e-9 for w, g in zip(rest, grover, strict=True))
  # A word ends where the next one starts, or at its caption line's end (10 ms before the next line).
  assert all(w.start <= w.end <= nxt.start for w, nxt in itertools.pairwise(words))
  assert words[-1].end == pytest.approx(250.23)  # 'protip', the end of cue 00:04:04.000 --> 00:04:10.230


def test_grover_json_subtitles(youtube_sample):
  words = load_transcript(youtube_sample.with_suffix('.grover.json'))
  grover = json.loads((youtube_sample.with_suffix('.grover.json')).read_text())['subtitles']
  assert [(w.text, w.start) for w in words] == [(g['word'], g['time']) for g in grover]
  assert [w.end for w in words[:-1]] == [g['time'] for g in grover[1:]]  # a word ends at the next start
  assert words[-1].end == words[-1].start


def test_youtube_rolling_captions(tmp_path):
  vtt = (
      'WEBVTT\nKind: captions\nLanguage: en\n\n'
      '00:00:00.000 --> 00:00:02.000 align:start position:0%\n \n'
      'one<00:00:00.500><c> two</c><00:00:01.000><c> three</c>\n\n'
      '00:00:02.000 --> 00:00:02.010 align:start position:0%\none two three\n \n\n'
      '00:00:02.010 --> 00:00:04.000 align:start position:0%\none two three\n'
      'four<00:00:03.000><c> five</c>\n\n'
      '00:00:04.000 --> 00:00:04.010 align:start position:0%\nfour five\n \n\n'
      '00:00:04.010 --> 00:00:06.000 align:start position:0%\nfour five\nsix\n')
  words = load_transcript(_write(tmp_path / 'a.vtt', vtt.encode()))
  assert _timed(words) == [('one', 0.0, 0.5), ('two', 0.5, 1.0), ('three', 1.0, 2.0),
                           ('four', 2.01, 3.0), ('five', 3.0, 4.0), ('six', 4.01, 6.0)]


def test_messy_vtt(tmp_path):
  data = (b'\xef\xbb\xbfWEBVTT\r\nKind: captions\r\n\r\nNOTE a comment\r\n\r\n'
          b'cue-1\r\n00:00:01.000 --> 00:00:02.000 align:start\r\n&gt;&gt; Tom &amp; Jerry\r\n\r\n'
          b'00:00:02.000 --> 00:00:02.500\r\n\r\n'  # an empty cue
          b'00:00:03.000 --> 00:00:05.000\r\n<i>caf\xe9</i> it&#39;s\r\n\r\n'  # \xe9: Latin-1, not UTF-8
          b'00:00:04.000 --> 00:00:06.000\r\noverlap [Music]\r\n')  # overlaps the cue before
  words = load_transcript(_write(tmp_path / 'messy.vtt', data))
  # 'Tom' and 'Jerry' share 1 s by characters, 3:5; '>>' and '&' hold no letter and are dropped.
  assert _timed(words) == [('Tom', 1.0, 1.375), ('Jerry', 1.375, 2.0), ('caf\ufffd', 3.0, 4.0),
                           ("it's", 4.0, 5.0), ('overlap', 4.0, 6.0)]


SRT = ('1\n00:00:01,000 --> 00:00:03,000\nab <i>abcd</i>\nxy\n\n'
       '2\n00:00:03,500 --> 00:00:04,500\n{\\an8}- Hello!\n'  # no blank line before the next cue
       '3\n00:00:05,000 --> 00:00:06,000\none\n')
SRT_WORDS = [('ab', 1.0, 1.5), ('abcd', 1.5, 2.5), ('xy', 2.5, 3.0), ('Hello!', 3.5, 4.5), ('one', 5.0, 6.0)]


def test_srt_interpolates_by_characters(tmp_path):
  # Cue 1 has 2 + 4 + 2 = 8 characters over 2 s: 0.25 s per character.
  assert _timed(load_transcript(_write(tmp_path / 'a.srt', SRT.encode()))) == SRT_WORDS


def test_srt_utf16_with_bom_and_crlf(tmp_path):
  data = SRT.replace('\n', '\r\n').encode('utf-16')
  assert _timed(load_transcript(_write(tmp_path / 'a.srt', data))) == SRT_WORDS


def test_json_word_list(tmp_path):
  entries = [{'word': 'b', 'start': 2.0, 'end': 2.5}, {'word': 'a', 'start': 1.0},
             {'word': 'c &amp; d', 'start': 3.0, 'end': 4.0}]
  words = load_transcript(_write(tmp_path / 'w.json', json.dumps(entries).encode()))
  assert _timed(words) == [('a', 1.0, 2.0), ('b', 2.0, 2.5), ('c', 3.0, 3.5), ('d', 3.5, 4.0)]


@pytest.mark.parametrize('name, data, problem', [
    ('empty.vtt', b'', 'empty'),
    ('blank.srt', b'\xef\xbb\xbf \r\n\r\n', 'empty'),
    ('header.vtt', b'WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n[Music]\n', 'no words'),
    ('notes.txt', b'hello', 'unsupported'),
    ('bad.json', b'{"subtitles": [', 'invalid JSON'),
    ('entry.json', b'[{"word": "a", "start": 1}, {"start": 2}]', 'entry 1'),
    ('string.json', b'[{"word": "a", "start": 1}, "b"]', 'entry 1'),
    ('shape.json', b'{"words": []}', 'subtitles'),
])
def test_bad_files_name_path_and_problem(tmp_path, name, data, problem):
  path = _write(tmp_path / name, data)
  with pytest.raises(TranscriptError, match=re.escape(str(path)) + '.*' + problem):
    load_transcript(path)


def test_missing_file(tmp_path):
  with pytest.raises(TranscriptError, match=re.escape(str(tmp_path / 'gone.vtt')) + '.*not found'):
    load_transcript(tmp_path / 'gone.vtt')


def test_load_denoised(youtube_sample, tmp_path):
  texts = load_denoised(youtube_sample.with_suffix('.grover.json'))
  assert len(texts) == 2
  assert texts[0].startswith('Guys, this is a delicious sweet onion tomato sauce.')
  assert texts[1].endswith('So there you go. Easy dish, protip.')
  assert load_denoised(_write(tmp_path / 'none.json', b'{"subtitles": []}')) is None
  with pytest.raises(TranscriptError, match='cleanasr'):
    load_denoised(_write(tmp_path / 'bad.json', b'{"denoised": [{"noisyasr": "x"}]}'))


def _raw(*texts):
  """Raw words one second apart: word i spans [i, i + 1)."""
  return [Word(t, float(i), i + 1.0) for i, t in enumerate(texts)]


def _aligned(raw, clean):
  return [(w.text, w.start) for w in align_clean_words(raw, clean)]


def test_align_fixed_typo_and_punctuation():
  # Every clean word equals its raw word once lower-cased without punctuation, except caramelize
  # (edit distance 1), so the diagonal is the only zero-or-one-cost path.
  raw = _raw('its', 'starting', 'to', 'carmelize', 'okay')
  assert _aligned(raw, ["It's starting to caramelize.", 'Okay?']) == [
      ("It's", 0.0), ('starting', 1.0), ('to', 2.0), ('caramelize.', 3.0), ('Okay?', 4.0)]


def test_align_inserted_word_takes_the_closer_raw_word():
  # 'some' must pair with 'take' (edit distance 3) or 'water' (4): the path through 'take' is cheaper.
  assert _aligned(_raw('we', 'take', 'water'), ['We take some water.']) == [
      ('We', 0.0), ('take', 1.0), ('some', 1.0), ('water.', 2.0)]


def test_align_dropped_word_ties_prefer_the_diagonal():
  # Raw 'um' costs 2 against 'so' and against 'we'; both paths cost 2. Backtracking from ('we', 'we')
  # prefers the diagonal step, to ('um', 'So'), so 'we' keeps its own time (as tslearn does).
  assert _aligned(_raw('so', 'um', 'we', 'go'), ['So we go.']) == [('So', 0.0), ('we', 2.0), ('go.', 3.0)]


def test_align_drops_runaway_clean_text():
  # Band radius max(10% of 3, 32) = 32: at most 3 + 32 clean words are kept.
  assert len(align_clean_words(_raw('a', 'b', 'c'), [' '.join(['x'] * 40)])) == 35
  assert align_clean_words([], ['a b']) == [] and align_clean_words(_raw('a'), ['  ']) == []


def test_align_sample(youtube_sample):
  raw = load_transcript(youtube_sample.with_suffix('.en.vtt'))
  clean_texts = load_denoised(youtube_sample.with_suffix('.grover.json'))
  clean = align_clean_words(raw, clean_texts)
  assert clean == _reference_alignment(raw, ' '.join(clean_texts).split())
  assert len(clean) == 642
  assert all(a.start <= b.start for a, b in itertools.pairwise(clean))
  by_text = {w.text: w.start for w in clean}
  # Read off the .vtt: 'extra-virgin' opens cue 00:00:39.690, 'penne' is tagged <00:03:57.380>.
  assert (clean[0].text, clean[0].start) == ('Guys,', 0.0)
  assert by_text['extra-virgin'] == pytest.approx(39.69)
  assert by_text['penne'] == pytest.approx(237.38)


def _reference_alignment(raw_words, clean):
  """Plain-Python align_using_dtw of the original: banded edit-distance costs, full DTW, tslearn's
  backtracking, first pairing wins; each clean word takes its raw word's times."""
  raw = [w.text for w in raw_words]
  def edit(a, b):
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
      prev, row = row, [i] + [0] * len(b)
      for j, cb in enumerate(b, 1):
        row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
    return row[-1]

  def norm(w):
    return ''.join(c for c in w if c not in string.punctuation).strip().lower()

  radius = int(max(len(raw) * 0.1, 32))
  clean = clean[:len(raw) + radius]
  n, m = len(raw), len(clean)
  cost = [[9999.0] * m for _ in range(n)]
  for i in range(n):
    for j in range(max(i - radius, 0), min(i + radius, m)):
      cost[i][j] = edit(norm(raw[i]), norm(clean[j]))
  inf = float('inf')
  acc = [[inf] * (m + 1) for _ in range(n + 1)]
  acc[0][0] = 0.0
  for i in range(n):
    for j in range(m):
      acc[i + 1][j + 1] = cost[i][j] + min(acc[i][j], acc[i][j + 1], acc[i + 1][j])
  acc = [r[1:] for r in acc[1:]]
  path = [(n - 1, m - 1)]
  while path[-1] != (0, 0):
    i, j = path[-1]
    if i == 0:
      path.append((0, j - 1))
    elif j == 0:
      path.append((i - 1, 0))
    else:
      options = [acc[i - 1][j - 1], acc[i - 1][j], acc[i][j - 1]]
      path.append([(i - 1, j - 1), (i - 1, j), (i, j - 1)][options.index(min(options))])
  owner, seen = {}, -1
  for i, j in reversed(path):
    if j > seen:
      owner[j], seen = i, j
  return [Word(clean[j], raw_words[owner[j]].start, raw_words[owner[j]].end) for j in range(m)]


@pytest.mark.parametrize('seed', range(12))
def test_align_matches_plain_reference(seed):
  # Few, similar words: many ties. '-' is empty once punctuation is removed. Up to 90 clean words
  # against as few as 1 raw word: the band, its 9999 costs and the truncation all come into play.
  rng = random.Random(seed)
  raw = [rng.choice(['a', 'ab', 'ba', 'abc', 'b.', "c'a", 'cab', 'xyz', '-']) for _ in range(rng.randint(1, 45))]
  clean = [rng.choice(['a', 'ab', 'ba', 'abc', 'b.', "c'a", 'Ab,', '-']) for _ in range(rng.randint(1, 90))]
  assert align_clean_words(_raw(*raw), [' '.join(clean)]) == _reference_alignment(_raw(*raw), clean)


def _textbook_levenshtein(a, b):
  """Wagner-Fischer: d[i][j] is the edit distance between a[:i] and b[:j] (unit insert, delete, substitute)."""
  d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
  for i in range(1, len(a) + 1):
    for j in range(1, len(b) + 1):
      d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
  return d[len(a)][len(b)]


def test_levenshtein_matrix_matches_textbook():
  # Empty and identical words, unequal lengths, and code points beyond ASCII and the BMP: an accent, a
  # combining accent, CJK, an emoji with a skin-tone modifier (two code points). Distances count code points.
  a = ['', 'a', 'kitten', 'flaw', 'café', 'cafe\u0301', '日本語', '👍🏽', 'straße', 'same']
  b = ['', 'sitting', 'lawn', 'cafe', 'café', '日本', '👎', 'strasse', 'same', 'abc']
  expected = [[_textbook_levenshtein(x, y) for y in b] for x in a]
  distances = _levenshtein_matrix(a, b)
  assert distances.dtype.name == 'int32' and distances.tolist() == expected
  assert expected[2][1] == 3 and expected[3][2] == 2 and expected[7][6] == 2 and expected[9][8] == 0
  assert _levenshtein_matrix(a, a).tolist() == [[_textbook_levenshtein(x, y) for y in a] for x in a]
