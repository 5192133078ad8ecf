"""TVQA (tvqa.cs.unc.edu) read as released: the frames and subtitle lines of each question's moment, the TFDS
builder `tvqa` and its problems.

Release root (`--data_dir`, TFDS manual_dir):
  tvqa_qa_release/tvqa_{train,val,test_public}.jsonl  q, a0..a4, answer_idx (absent in test), qid, vid_name,
                                                      show_name, ts ("start-end" seconds)
  tvqa_subtitles/<vid_name>.srt
  frames_hq/<show>_frames/<vid_name>/00001.jpg ...    3 fps: frame k shows second (k - 1) / 3 (as MERLOT Reserve's
                                                      finetune/tvqa/prep_data.py); <show> from the vid_name prefix
                                                      (castle_, friends_, grey_, house_, met_; none: bbt)
Per question:
- window: `ts` clipped to [0, the last frame's time]; a `ts` that is not two finite numbers with start <= end
  (the release has "NaN-NaN") gives the whole clip, counted as the fallback 'malformed_ts'.
- frames: `num_frames` (builder config `frames_<n>`, default 6) evenly spaced among the frames inside the window
  (centres of equal spans, `release.frame_choice`; repeated when fewer), stored as the release's JPEGs.
- subtitles: the cues that start strictly inside the window; none: the 3 cues nearest its start (TVQA's own
  baseline, get_located_sub_text), joined by spaces.
- problem: context the question, options a0..a4, the subtitles after them (mc_data.option_ids), id the qid.
Skipped and counted (release.py): unknown_show, missing_frame_folder, no_frames_in_window, truncated_jpeg,
missing_subtitles, bad_annotation.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from merlot_jax.extras import import_extra
from merlot_jax.tasks import release
from merlot_jax.tasks.release import Problem, Skipped

tfds = import_extra('tensorflow_datasets', 'data')

OPTIONS = 5
FPS = 3
SHOWS = {'The Big Bang Theory': 'bbt', 'Castle': 'castle', 'Friends': 'friends', "Grey's Anatomy": 'grey',
         'House M.D.': 'house', 'How I Met You Mother': 'met', 'How I Met Your Mother': 'met'}  # the release's spelling
_PREFIXED_SHOWS = ('castle', 'friends', 'grey', 'house', 'met')  # bbt clips have no prefix
_FRAME_FILE = re.compile(r'^(\d+)\.jpg$')
_SRT_TIMING = re.compile(r'(\d+):(\d\d):(\d\d)[,.](\d{1,3})\s*-->\s*(\d+):(\d\d):(\d\d)[,.](\d{1,3})')
_EPS = 1e-6  # frame times are thirds of a second: compare with a little slack


def parse_ts(ts) -> tuple[float, float] | None:
  """'76.01-84.2' -> (76.01, 84.2); None unless two finite numbers with start <= end."""
  parts = str(ts).split('-')
  try:
    start, end = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
  except ValueError:
    return None
  return (start, end) if math.isfinite(start) and math.isfinite(end) and start <= end else None


def show_folder(vid_name: str) -> str:
  """The <show> of frames_hq/<show>_frames/ from the clip name."""
  prefix = vid_name.split('_', 1)[0]
  return prefix if prefix in _PREFIXED_SHOWS else 'bbt'


def frame_files(folder: pathlib.Path) -> dict[int, pathlib.Path]:
  """Frame number k -> the folder's file k.jpg (00001.jpg in the release)."""
  return {int(m.group(1)): p for p in folder.iterdir() if (m := _FRAME_FILE.match(p.name))}


def window_frames(numbers: Sequence[int], window: tuple[float, float], count: int) -> list[int]:
  """`count` evenly spaced frame numbers among those shown inside `window` (seconds); [] if none is."""
  inside = [k for k in sorted(numbers) if window[0] - _EPS <= (k - 1) / FPS <= window[1] + _EPS]
  return [inside[i] for i in release.frame_choice(len(inside), count)] if inside else []


@dataclasses.dataclass(frozen=True)
class Cue:
  start: float  # seconds
  end: float
  text: str


def _seconds(hours: str, minutes: str, seconds: str, fraction: str) -> float:
  return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction) / 10 ** len(fraction)


def read_srt(path: pathlib.Path) -> list[Cue]:
  """The cues of a SubRip file in file order, each cue's lines joined by a space."""
  cues = []
  raw = path.read_bytes().decode('utf-8', errors='replace').lstrip('\ufeff')
  for block in re.split(r'\n\s*\n', raw.replace('\r\n', '\n').replace('\r', '\n')):
    lines = [line.strip() for line in block.strip().split('\n')]
    timing = next((i for i, line in enumerate(lines) if _SRT_TIMING.search(line)), None)
    if timing is not None:
      g = _SRT_TIMING.search(lines[timing]).groups()
      cues.append(Cue(_seconds(*g[:4]), _seconds(*g[4:]), ' '.join(x for x in lines[timing + 1:] if x)))
  return cues


def window_subtitles(cues: Sequence[Cue], window: tuple[float, float]) -> str:
  """The text of the cues starting strictly inside `window`; if none, of the 3 nearest its start."""
  chosen = [c for c in cues if window[0] < c.start < window[1]]
  if not chosen and cues:
    nearest = int(np.argmin([abs(c.start - window[0]) for c in cues]))
    chosen = list(cues[max(nearest - 1, 0):nearest + 2])
  return ' '.join(c.text for c in chosen if c.text)


@dataclasses.dataclass
class TvqaConfig(tfds.core.BuilderConfig):
  num_frames: int = 6


_ANNOTATION = {'q': str, 'qid': int, 'vid_name': str, 'show_name': str, **{f'a{i}': str for i in range(OPTIONS)}}


class Tvqa(release.ReleaseBuilder):
  """TVQA: per question its window's frames and subtitles, the question and the 5 answers."""

  BUILDER_CONFIGS = [TvqaConfig(name='frames_6', num_frames=6, description='6 frames per question')]
  SPLIT_FILES = {s: f'tvqa_qa_release/tvqa_{f}.jsonl' for s, f in
                 (('train', 'train'), ('val', 'val'), ('test', 'test_public'))}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  The TVQA release (tvqa.cs.unc.edu) unpacked: manual_dir/tvqa_qa_release/tvqa_{train,val,test_public}.jsonl,
  manual_dir/tvqa_subtitles/<vid_name>.srt, manual_dir/frames_hq/<show>_frames/<vid_name>/00001.jpg ...
  """

  @classmethod
  def named_config(cls, name: str | None) -> TvqaConfig | None:
    """'frames_<n>' -> n frames per question."""
    if name is None:
      return None
    match = re.fullmatch(r'frames_([1-9]\d*)', name)
    if not match:
      raise ValueError(f"tvqa builder config {name!r}: expected 'frames_<n>', e.g. 'tvqa/frames_6'")
    return TvqaConfig(name=name, num_frames=int(match.group(1)), description=f'{match.group(1)} frames per question')

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        'qid': tfds.features.Scalar(np.int64), 'vid_name': tfds.features.Text(), 'show_name': tfds.features.Text(),
        'question': tfds.features.Text(),
        'answers': tfds.features.Sequence(tfds.features.Text(), length=OPTIONS),
        'label': tfds.features.Scalar(np.int64),  # -1 in test
        'window': tfds.features.Tensor(shape=(2,), dtype=np.float32),  # seconds, after clipping or fallback
        'frame_numbers': tfds.features.Sequence(tfds.features.Scalar(np.int64)),
        'frames': tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')),
        'subtitles': tfds.features.Text(),
    })

  def _example(self, root: pathlib.Path, entry: dict, fallbacks: collections.Counter) -> tuple[str, dict]:
    release.require(entry, _ANNOTATION)
    label = entry.get('answer_idx', -1)
    if not isinstance(label, int) or not -1 <= label < OPTIONS:
      raise Skipped('bad_annotation', f'answer_idx {label!r} (must be in 0..{OPTIONS - 1}, or absent in test)')
    if entry['show_name'] not in SHOWS:
      raise Skipped('unknown_show', f'show_name {entry["show_name"]!r}; known: {sorted(SHOWS)}')
    name = entry['vid_name']
    folder = root / 'frames_hq' / f'{show_folder(name)}_frames' / name
    if not folder.is_dir():
      raise Skipped('missing_frame_folder', str(folder))
    files = frame_files(folder)
    clip = (0.0, (max(files) - 1) / FPS) if files else (0.0, -1.0)
    ts = parse_ts(entry.get('ts'))
    if ts is None:
      fallbacks['malformed_ts'] += 1
    window = clip if ts is None else (max(ts[0], clip[0]), min(ts[1], clip[1]))
    chosen = window_frames(list(files), window, self.builder_config.num_frames)
    if not chosen:
      raise Skipped('no_frames_in_window', f'{folder}: window {window} of ts {entry.get("ts")!r}, clip {clip}')
    subtitle_file = root / 'tvqa_subtitles' / f'{name}.srt'
    if not subtitle_file.is_file():
      raise Skipped('missing_subtitles', str(subtitle_file))
    frames = [io.BytesIO(release.checked_jpeg(files[k])) for k in chosen]
    return str(entry['qid']), {
        'qid': entry['qid'], 'vid_name': name, 'show_name': entry['show_name'], 'question': entry['q'],
        'answers': [entry[f'a{i}'] for i in range(OPTIONS)], 'label': label,
        'window': np.array(window, np.float32), 'frame_numbers': chosen, 'frames': frames,
        'subtitles': window_subtitles(read_srt(subtitle_file), window)}


def problems(example: dict) -> list[Problem]:
  """A TFDS example (JPEGs undecoded) -> its one problem."""
  return [Problem(str(int(example['qid'])), tuple(bytes(j) for j in example['frames']),
                  release.text(example['question']), tuple(release.text(a) for a in example['answers']),
                  int(example['label']), subtitles=release.text(example['subtitles']))]


RELEASE = release.Release(Tvqa, problems, ('frames',))
