"""Word-timed transcripts from caption files, and timing of denoised (clean) text by alignment.

Formats, by extension:
  .vtt   WebVTT. YouTube's word-timed captions (`word<00:00:01.234><c> next</c>`) give each word the time
         of the tag before it (the first word of a line: the cue start) and end it at the next word's time
         (the last word: the cue end). Text without tags, in any .vtt, is spread over its cue like .srt
         (the original's scraper dropped such lines from word-timed files, e.g. a lone one-word line).
  .srt   SubRip, cue-timed: the cue's duration is split among its words in proportion to their length in
         characters.
  .json  A list of {"word", "start", "end"} (or "time" instead of "start"), or a .grover.json object whose
         "subtitles" list holds {"word", "time"}. A word without an end ends where the next word starts.

Cleaning, the same for every format: bytes are decoded as UTF-8 with replacement (a BOM and UTF-16 with a
BOM are recognised), markup tags are removed, HTML entities decoded, bracketed sound labels such as
"[Music]" dropped, and a word must hold a letter or digit (this drops ">>" speaker marks, "-" dialogue
dashes and stray "&"; the original dropped words starting with "&" or ending with ";" before ftfy).
Rolling captions repeat the previous cue's lines: a line equal to a line of the cue before it (tags and
extra spaces aside) is skipped. Words come out sorted by start time.
"""

import codecs
import dataclasses
import html
import json
import pathlib
import re
import string
from collections.abc import Callable, Sequence

import numpy as np

from merlot_jax.extras import import_extra

process = import_extra('rapidfuzz.process', 'data')
Levenshtein = import_extra('rapidfuzz.distance.Levenshtein', 'data')


@dataclasses.dataclass(frozen=True)
class Word:
  text: str
  start: float  # seconds
  end: float


class TranscriptError(ValueError):
  """A transcript file that is missing, empty or malformed; the message names the file."""


_TIMESTAMP = r'(?:(\d+):)?(\d{1,2}):(\d{1,2})[.,](\d{1,3})'
_TIMING_LINE = re.compile(rf'\s*{_TIMESTAMP}\s*-->\s*{_TIMESTAMP}')
_TIME_TAG = re.compile(rf'<{_TIMESTAMP}>')
_TAG = re.compile(r'<[^>]*>|\{\\[^}]*\}')  # HTML-like tags; {\an8}-style SubStation overrides in .srt
_SOUND_LABEL = re.compile(r'\[[^\]]*\]')
_LINE_BREAK = re.compile(r'\r\n|\r|\n')


@dataclasses.dataclass(frozen=True)
class _Cue:
  start: float
  end: float
  lines: tuple[str, ...]


def _seconds(hours: str | None, minutes: str, seconds: str, fraction: str) -> float:
  return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction.ljust(3, '0')) / 1000


def _read_text(path: pathlib.Path) -> str:
  """File text; never fails on bad bytes (they become U+FFFD)."""
  if not path.is_file():
    raise TranscriptError(f'{path}: transcript file not found')
  data = path.read_bytes()
  if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
    text = data.decode('utf-16', errors='replace')
  else:
    text = data.decode('utf-8', errors='replace')
  text = text.lstrip('\ufeff')
  if not text.strip():
    raise TranscriptError(f'{path}: transcript file is empty')
  return text


def _split_words(text: str) -> list[str]:
  """Words of one piece of caption text, cleaned (see the module docstring)."""
  text = _SOUND_LABEL.sub(' ', html.unescape(_TAG.sub('', text)))
  return [w for w in text.split() if any(ch.isalnum() for ch in w)]


def _spread(words: Sequence[str], start: float, end: float) -> list[Word]:
  """Splits [start, end] among `words` in proportion to their number of characters."""
  total = sum(len(w) for w in words)
  out, done = [], 0
  for w in words:
    begin = start + (end - start) * done / total
    done += len(w)
    out.append(Word(w, begin, start + (end - start) * done / total))
  return out


def _parse_cues(text: str) -> list[_Cue]:
  """Cues of a .vtt/.srt text: a timing line, then payload lines up to a blank line or the next cue."""
  lines = _LINE_BREAK.split(text)
  cues = []
  for i, line in enumerate(lines):
    timing = _TIMING_LINE.match(line)
    if not timing:
      continue
    stop = i + 1
    while stop < len(lines) and lines[stop] and not _TIMING_LINE.match(lines[stop]):
      stop += 1
    payload = lines[i + 1:stop]
    if stop < len(lines) and lines[stop] and payload and payload[-1].strip().isdigit():
      payload = payload[:-1]  # no blank line before the next cue: this is its SubRip index
    start, end = _seconds(*timing.groups()[:4]), _seconds(*timing.groups()[4:])
    cues.append(_Cue(start, max(start, end), tuple(payload)))
  return cues


def _line_key(line: str) -> str:
  """A caption line's plain text, to recognise lines that rolling captions repeat."""
  return ' '.join(_TAG.sub('', line).split())


def _cue_words(cue: _Cue, lines: Sequence[str]) -> list[Word]:
  """Words of a cue's new lines; inline time tags split the cue into separately timed pieces."""
  payload = ' '.join(lines)
  times, pieces, pos = [cue.start], [], 0
  for tag in _TIME_TAG.finditer(payload):
    pieces.append(payload[pos:tag.start()])
    times.append(_seconds(*tag.groups()))
    pos = tag.end()
  pieces.append(payload[pos:])
  ends = times[1:] + [cue.end]
  words = []
  for piece, start, end in zip(pieces, times, ends, strict=True):
    split = _split_words(piece)
    if split:
      words += _spread(split, start, max(start, end))
  return words


def _caption_words(text: str, path: pathlib.Path) -> list[Word]:
  """Words of a .vtt or .srt file, rolling repeats removed."""
  del path  # every cue problem is recoverable: bad cues give no words
  words, previous = [], set()
  for cue in _parse_cues(text):
    keys = [_line_key(line) for line in cue.lines]
    new = [line for line, key in zip(cue.lines, keys, strict=True) if key and key not in previous]
    previous = {key for key in keys if key}
    words += _cue_words(cue, new)
  return words


def _json_words(text: str, path: pathlib.Path) -> list[Word]:
  """Words of a word-list .json or of the `subtitles` of a .grover.json."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise TranscriptError(f'{path}: invalid JSON: {e}') from e
  entries = data.get('subtitles') if isinstance(data, dict) else data
  if not isinstance(entries, list):
    raise TranscriptError(f'{path}: expected a list of {{"word", "start", "end"}} or an object with a '
                          '"subtitles" list')
  timed = []
  for k, entry in enumerate(entries):
    try:
      start = float(entry['start'] if 'start' in entry else entry['time'])
      end = None if entry.get('end') is None else float(entry['end'])
      timed.append((start, end, str(entry['word'])))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      raise TranscriptError(f'{path}: entry {k} needs "word" and "start" (or "time") numbers, got '
                            f'{entry!r}') from e
  timed.sort(key=lambda t: t[0])
  words = []
  for k, (start, end, text) in enumerate(timed):
    if end is None:
      end = timed[k + 1][0] if k + 1 < len(timed) else start
    split = _split_words(text)
    if split:
      words += _spread(split, start, max(start, end))
  return words


_LOADERS: dict[str, Callable[[str, pathlib.Path], list[Word]]] = {
    '.vtt': _caption_words, '.srt': _caption_words, '.json': _json_words}


def load_transcript(path: str | pathlib.Path) -> list[Word]:
  """Words with start/end times (seconds) in time order, from a .vtt, .srt or .json file."""
  path = pathlib.Path(path)
  loader = _LOADERS.get(path.suffix.lower())
  if loader is None:
    raise TranscriptError(f'{path}: unsupported transcript type {path.suffix!r}; expected '
                          f'{", ".join(_LOADERS)}')
  words = loader(_read_text(path), path)
  if not words:
    raise TranscriptError(f'{path}: transcript has no words')
  return sorted(words, key=lambda w: w.start)


def load_denoised(grover_json_path: str | pathlib.Path) -> list[str] | None:
  """The `denoised[].cleanasr` texts of a .grover.json, or None when it has none."""
  path = pathlib.Path(grover_json_path)
  try:
    data = json.loads(_read_text(path))
  except json.JSONDecodeError as e:
    raise TranscriptError(f'{path}: invalid JSON: {e}') from e
  denoised = data.get('denoised') if isinstance(data, dict) else None
  if not denoised:
    return None
  if not isinstance(denoised, list) or not all(
      isinstance(d, dict) and isinstance(d.get('cleanasr'), str) for d in denoised):
    raise TranscriptError(f'{path}: "denoised" must be a list of objects with a "cleanasr" string')
  return [d['cleanasr'] for d in denoised]


# Alignment of clean words to raw words, as data/process.py of the original (align_using_dtw).
_FAR = 9999.0  # cost of pairing words that are further apart than the band allows
_NO_PUNCTUATION = str.maketrans('', '', string.punctuation)


def _normalise(word: str) -> str:
  return word.translate(_NO_PUNCTUATION).strip().lower()


def _levenshtein_matrix(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
  """Character edit distances (Levenshtein, unit costs) [len(a), len(b)] between every word of `a` and of `b`."""
  # workers=1: preprocessing already runs one process per core (corpus.py's pool, Beam's workers), and a
  # video's few hundred distinct words take well under a millisecond: more threads were no faster.
  return process.cdist(a, b, scorer=Levenshtein.distance, dtype=np.int32, workers=1)


def _dtw_path(n: int, m: int, cost_row: Callable[[int], np.ndarray]) -> list[tuple[int, int]]:
  """Minimum-cost monotone path from (0, 0) to (n-1, m-1); ties as tslearn (diagonal, up, left)."""
  moves = np.empty((n, m), np.uint8)  # 0: from (i-1, j-1), 1: from (i-1, j), 2: from (i, j-1)
  inf = np.array([np.inf])
  prev = None
  for i in range(n):
    cost = cost_row(i)
    total = np.cumsum(cost)
    if prev is None:
      acc = total
      moves[0] = 2
    else:
      diag = np.concatenate([inf, prev[:-1]])
      # acc[j] = cost[j] + min(diag[j], prev[j], acc[j-1]), solved for the row at once with prefix sums;
      # the costs are integers, so float64 sums are exact.
      acc = total + np.minimum.accumulate(np.minimum(diag, prev) - (total - cost))
      moves[i] = np.argmin(np.stack([diag, prev, np.concatenate([inf, acc[:-1]])]), axis=0)
    prev = acc
  i, j = n - 1, m - 1
  path = [(i, j)]
  while (i, j) != (0, 0):
    move = moves[i, j]
    i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    path.append((i, j))
  return path[::-1]


def align_clean_words(raw: Sequence[Word], clean_texts: Sequence[str]) -> list[Word]:
  """Times every clean word with the raw word it aligns to (dynamic time warping over edit distance).

  As the original: words are compared lower-cased without ASCII punctuation; raw word i may only pair
  with clean words i - r .. i + r - 1, r = max(10% of the raw words, 32); clean words beyond
  len(raw) + r are dropped (the denoiser sometimes keeps going); a clean word takes the time of the first
  raw word on the path it is paired with, so several clean words may share one raw word's time. Clean
  texts are split on any whitespace (the original split on single spaces).
  """
  clean = [w for text in clean_texts for w in text.split()]
  if not raw or not clean:
    return []
  radius = int(max(len(raw) * 0.1, 32))
  clean = clean[:len(raw) + radius]
  raw_norm = [_normalise(w.text) for w in raw]
  clean_norm = [_normalise(w) for w in clean]
  raw_vocab, raw_ids = np.unique(raw_norm, return_inverse=True)
  clean_vocab, clean_ids = np.unique(clean_norm, return_inverse=True)
  distances = _levenshtein_matrix(list(raw_vocab), list(clean_vocab)).astype(np.float64)

  def cost_row(i):
    row = np.full(len(clean), _FAR)
    lo, hi = max(i - radius, 0), min(i + radius, len(clean))
    row[lo:hi] = distances[raw_ids[i], clean_ids[lo:hi]]
    return row

  owner = np.empty(len(clean), np.int64)
  seen = -1
  for i, j in _dtw_path(len(raw), len(clean), cost_row):
    if j > seen:
      owner[j], seen = i, j
  return [Word(w, raw[i].start, raw[i].end) for w, i in zip(clean, owner, strict=True)]

