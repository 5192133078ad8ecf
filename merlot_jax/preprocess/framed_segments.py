"""One video + its transcript -> transcript segments with the JPEG frame at each segment's middle time.

This is the per-video work of corpus preprocessing (corpus.py's worker pool or Beam workers run it). It
imports no TensorFlow, so worker processes start fast. A video that cannot be used gives a skip reason
instead of segments; see SKIP_REASONS.
"""

import dataclasses
import pathlib

from merlot_jax.data.tokenizer import Tokenizer, load_tokenizer
from merlot_jax.preprocess import video as video_lib
from merlot_jax.preprocess.segmenting import make_segments
from merlot_jax.preprocess.transcripts import TranscriptError, align_clean_words, load_denoised, load_transcript

VIDEO_SUFFIXES = ('.mp4', '.mkv', '.webm')
DENOISED_SUFFIX = '.grover.json'
# First found wins; the original's X.grover.json holds the raw words too ("subtitles").
TRANSCRIPT_SUFFIXES = ('.vtt', '.en.vtt', '.srt', '.json', DENOISED_SUFFIX)
SKIP_REASONS = (
    'missing_transcript',  # none of X.vtt, X.en.vtt, X.srt, X.json, X.grover.json beside X.mp4
    'empty_transcript',  # the transcript file holds nothing but whitespace
    'bad_transcript',  # the transcript (or X.grover.json) does not parse or has no words
    'unreadable_video',  # PyAV cannot open or decode the video at the segment times
    'video_shorter_than_transcript',  # a segment's middle time is at or past the video's end
    # Given by scan_videos, for paths with a video suffix that are never processed:
    'not_a_regular_file',  # a FIFO, socket, device or directory named like a video
    'broken_link',  # a symbolic link to nothing
    # Given by corpus.py's worker pool, not by process_video:
    'timeout',  # no result within the pool's per-video time limit; its worker was killed
    'worker_died',  # the worker process died (a crash in a decoder, an OOM kill) while on this video
)


@dataclasses.dataclass(frozen=True)
class VideoInput:
  """Paths of one video and the files beside it (relative to the corpus root in `name`)."""
  name: str  # e.g. 'channel/X.mp4', unique within the corpus; X is the video id
  video: str
  transcript: str | None
  denoised: str | None

  @property
  def video_id(self) -> str:
    return pathlib.PurePath(self.name).stem


@dataclasses.dataclass(frozen=True)
class FramedSegment:
  jpeg: bytes
  raw_tokens: tuple[int, ...]
  clean_tokens: tuple[int, ...]
  time: float


@dataclasses.dataclass(frozen=True)
class VideoResult:
  """The video's segments in time order, or a skip reason (one of SKIP_REASONS) and its detail."""
  video: VideoInput
  segments: tuple[FramedSegment, ...] = ()
  skip_reason: str | None = None
  detail: str = ''


def scan_videos(root: str | pathlib.Path) -> tuple[list[VideoInput], list[dict[str, str]]]:
  """Every path under `root` (recursively, sorted) with a video suffix: the regular files as VideoInputs with
  the transcript files beside them, and the rest as skips ({'video', 'reason', 'detail'}), so that every
  input a user hands over is accounted for."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f'{root}: video directory not found')
  found, unusable = [], []
  for path in sorted(p for p in root.rglob('*') if p.suffix.lower() in VIDEO_SUFFIXES):
    name = path.relative_to(root).as_posix()
    if not path.exists():
      unusable.append({'video': name, 'reason': 'broken_link', 'detail': f'{path}: links to {path.readlink()}'})
      continue
    if not path.is_file():
      kind = next(k for k, test in (('directory', path.is_dir), ('FIFO', path.is_fifo), ('socket', path.is_socket),
                                    ('device', lambda: True)) if test())
      unusable.append({'video': name, 'reason': 'not_a_regular_file', 'detail': f'{path}: a {kind}'})
      continue
    stem = path.with_suffix('')
    transcript = next((f'{stem}{s}' for s in TRANSCRIPT_SUFFIXES if pathlib.Path(f'{stem}{s}').is_file()), None)
    denoised = f'{stem}{DENOISED_SUFFIX}'
    found.append(VideoInput(name, str(path), transcript, denoised if pathlib.Path(denoised).is_file() else None))
  return found, unusable


def find_videos(root: str | pathlib.Path) -> list[VideoInput]:
  """The usable videos of `scan_videos`."""
  return scan_videos(root)[0]


def process_video(video: VideoInput, tokenizer: Tokenizer, segment_tokens: int = 32, jpeg_quality: int = 90,
                  short_side: int = 384, max_long_side: int = 512) -> VideoResult:
  """Segments of `segment_tokens` tokens (start token included) with black-bar-trimmed, resized frames."""
  if video.transcript is None:
    return VideoResult(video, skip_reason='missing_transcript',
                       detail=f'{video.video}: no transcript ({", ".join(TRANSCRIPT_SUFFIXES)}) beside it')
  if not pathlib.Path(video.transcript).read_bytes().strip():
    return VideoResult(video, skip_reason='empty_transcript', detail=f'{video.transcript}: empty file')
  try:
    raw = load_transcript(video.transcript)
    clean_texts = load_denoised(video.denoised) if video.denoised else None
  except TranscriptError as e:
    return VideoResult(video, skip_reason='bad_transcript', detail=str(e))
  clean = align_clean_words(raw, clean_texts) if clean_texts else None
  segments = make_segments(raw, tokenizer, clean_words=clean, max_tokens=segment_tokens)
  try:
    duration = video_lib.probe_duration(video.video)
    if segments[-1].time >= duration:
      return VideoResult(video, skip_reason='video_shorter_than_transcript',
                         detail=f'{video.video}: {duration:.2f}s long, but its transcript has a segment at '
                                f'{segments[-1].time:.2f}s')
    frames = video_lib.read_frames(video.video, [s.time for s in segments])
  except video_lib.VideoError as e:
    return VideoResult(video, skip_reason='unreadable_video', detail=str(e))
  frames = video_lib.trim_black_bars(frames)
  jpegs = [video_lib.encode_jpeg(video_lib.resize_frame(f, short_side, max_long_side), jpeg_quality)
           for f in frames]
  return VideoResult(video, tuple(
      FramedSegment(jpeg, s.raw_tokens, s.clean_tokens, s.time)
      for jpeg, s in zip(jpegs, segments, strict=True)))


_worker_tokenizer: Tokenizer | None = None


def init_worker(tokenizer_path: str) -> None:
  """Pool initializer: loads the tokenizer once per worker process."""
  global _worker_tokenizer
  _worker_tokenizer = load_tokenizer(tokenizer_path)


def process_in_worker(video: VideoInput, **kwargs) -> VideoResult:
  """`process_video` with the tokenizer of `init_worker`."""
  return process_video(video, _worker_tokenizer, **kwargs)
