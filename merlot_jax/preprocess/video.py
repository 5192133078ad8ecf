"""Video frames: accurate seeking with PyAV, black-bar trimming, resizing and JPEG encoding."""

import io
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from merlot_jax.extras import import_extra

av = import_extra('av', 'data')
Image = import_extra('PIL.Image', 'data')


# Decode forward instead of seeking when the next time is at most this far ahead (seconds).
_MAX_DECODE_AHEAD = 2.0


class VideoError(Exception):
  """A video file that cannot be opened, decoded or read at the requested times."""


def _open(video_path: str | os.PathLike) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
  try:
    container = av.open(str(video_path))
  except (av.FFmpegError, OSError) as e:
    raise VideoError(f'{video_path}: cannot open video ({e})') from e
  if not container.streams.video:
    container.close()
    raise VideoError(f'{video_path}: has no video stream')
  stream = container.streams.video[0]
  stream.thread_type = 'AUTO'
  return container, stream


def _frame_period(stream: av.video.stream.VideoStream) -> float:
  rate = stream.average_rate or stream.guessed_rate
  return 1.0 / float(rate) if rate else 0.0


def probe_duration(video_path: str | os.PathLike) -> float:
  """Duration in seconds from the video stream's header, else the container's."""
  container, stream = _open(video_path)
  with container:
    if stream.duration is not None:
      return float(stream.duration * stream.time_base)
    if container.duration is not None:
      return container.duration / av.time_base
  raise VideoError(f'{video_path}: no duration in the stream or container header')


def _timed_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                  video_path: str | os.PathLike) -> Iterator[av.VideoFrame]:
  for frame in container.decode(stream):
    if frame.time is None:
      raise VideoError(f'{video_path}: a decoded frame has no timestamp')
    yield frame


def read_frames(video_path: str | os.PathLike, times: Sequence[float]) -> list[np.ndarray]:
  """RGB uint8 [H, W, 3] frames shown at `times` (seconds), in the order given.

  The frame shown at t is the last one whose presentation time is <= t (the first frame for t before it).
  Seeks go to the keyframe before t and decode forward, so the result does not depend on the order of `times`.
  """
  container, stream = _open(video_path)
  period = max(_frame_period(stream), 1e-3)
  start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
  frames = []
  with container:
    decoded: Iterator[av.VideoFrame] = iter(())
    cur = ahead = None
    try:
      for t in times:
        t_abs = start + t
        if cur is None or t_abs < cur.time or t_abs - cur.time > _MAX_DECODE_AHEAD:
          container.seek(max(0, int(t_abs / stream.time_base)), stream=stream, backward=True, any_frame=False)
          decoded = _timed_frames(container, stream, video_path)
          cur, ahead = next(decoded, None), next(decoded, None)
          if cur is None:
            raise VideoError(f'{video_path}: no decodable frame at or before t={t:.3f}s')
        while ahead is not None and ahead.time <= t_abs:
          cur, ahead = ahead, next(decoded, None)
        if ahead is None and t_abs >= cur.time + period:
          raise VideoError(f'{video_path}: t={t:.3f}s is past the last frame (at {cur.time - start:.3f}s)')
        frames.append(cur.to_ndarray(format='rgb24'))
    except av.FFmpegError as e:
      raise VideoError(f'{video_path}: decoding failed ({e})') from e
  return frames


def trim_black_bars(frames: Sequence[np.ndarray], threshold: int = 32, max_trim: float = 0.2) -> list[np.ndarray]:
  """Crops the letterbox rows/columns that stay below `threshold` in all frames (at most `max_trim` per side)."""
  if not frames:
    return []
  has_content = np.maximum.reduce(frames).max(-1) >= threshold
  h, w = has_content.shape
  rows, cols = np.flatnonzero(has_content.any(1)), np.flatnonzero(has_content.any(0))
  y1 = min(rows[0] if rows.size else h // 2, int(h * max_trim))
  y2 = max(rows[-1] + 1 if rows.size else h // 2, int(h * (1 - max_trim)))
  x1 = min(cols[0] if cols.size else w // 2, int(w * max_trim))
  x2 = max(cols[-1] + 1 if cols.size else w // 2, int(w * (1 - max_trim)))
  return [f[y1:y2, x1:x2] for f in frames]


def resize_size(width: int, height: int, short_side: int = 384, max_long_side: int = 512) -> tuple[int, int]:
  """(width, height) scaled so the shorter side is `short_side` and the longer at most `max_long_side`.

  Like the original's get_size_for_resize, frames whose shorter side is already <= `short_side` keep their size.
  """
  short, long = min(width, height), max(width, height)
  if short <= short_side:
    return width, height
  scale = min(short_side / short, max_long_side / long)
  return max(1, round(width * scale)), max(1, round(height * scale))


def resize_frame(frame: np.ndarray, short_side: int = 384, max_long_side: int = 512) -> np.ndarray:
  """Bicubic resize of an [H, W, 3] uint8 frame following `resize_size`."""
  h, w = frame.shape[:2]
  size = resize_size(w, h, short_side, max_long_side)
  if size == (w, h):
    return frame
  return np.asarray(Image.fromarray(frame).resize(size, resample=Image.BICUBIC))


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
  """JPEG bytes of an [H, W, 3] uint8 frame."""
  with io.BytesIO() as out:
    Image.fromarray(frame).save(out, format='JPEG', quality=quality)
    return out.getvalue()


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
  """RGB uint8 [h, w, 3] (even sizes) -> the [h * 3 / 2, w] planes of yuv420p: BT.601 limited range
  (Y = 16 + 65.481 R' + 128.553 G' + 24.966 B', ...) in 16-bit fixed point, chroma averaged over 2x2 blocks.

  Integer arithmetic only, so the encoder's input is bit-exact everywhere: a float matmul here gave
  results that depended on the buffers' alignment (BLAS picks its kernel by it), and a pixel rounding
  the other way changed the encoded video between two runs with the same seed.
  """
  rgb = frame.astype(np.int32)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  y = 16 + ((16829 * r + 33039 * g + 6416 * b + (1 << 15)) >> 16)
  h, w = y.shape
  block_mean = lambda c: (c.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3)) + (1 << 17)) >> 18
  cb = 128 + block_mean(-9714 * r - 19071 * g + 28785 * b)
  cr = 128 + block_mean(28785 * r - 24104 * g - 4681 * b)
  planes = np.concatenate([y, cb.reshape(h // 4, w), cr.reshape(h // 4, w)], axis=0)
  return np.clip(planes, 0, 255).astype(np.uint8)


def write_video(video_path: str | os.PathLike, frames: Iterable[np.ndarray], fps: int,
                keyframe_seconds: float = 2.0) -> None:
  """Encodes RGB uint8 frames (even width and height) as H.264 (crf 18, a keyframe every few seconds).

  The container follows the file name: .mp4, .mkv, ... A seeded synthetic corpus must be byte-for-byte
  reproducible, so the encoder gets yuv420p frames converted in integer numpy, runs one thread, and runs
  without x264's rate-control lookahead (mbtree), adaptive quantisation and psy tuning: with those on, the
  same input frames encoded differently about one time in ten on a loaded host, even in one thread (and
  with frame threads or swscale's CPU-count-dependent threads, more often).
  """
  with av.open(str(video_path), 'w') as out:
    stream = None
    for i, frame in enumerate(frames):
      if stream is None:
        stream = out.add_stream('libx264', rate=fps)
        stream.height, stream.width = frame.shape[:2]
        stream.pix_fmt = 'yuv420p'
        stream.codec_context.gop_size = max(1, round(fps * keyframe_seconds))
        stream.codec_context.thread_count = 1  # PyAV's default, 0, lets libavcodec pick threads by CPU count
        stream.options = {'crf': '18', 'preset': 'veryfast',
                          'x264-params': 'threads=1:lookahead-threads=1:no-mbtree=1:rc-lookahead=0:aq-mode=0:psy=0'}
      av_frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format='yuv420p')
      av_frame.pts = i
      out.mux(stream.encode(av_frame))
    if stream is None:
      raise VideoError(f'{video_path}: no frames to write')
    out.mux(stream.encode(None))
