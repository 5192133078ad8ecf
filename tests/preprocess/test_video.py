"""Frame reading at times (seeks included), resizing, JPEG and black bars."""

import io

import numpy as np
import pytest
from PIL import Image

from merlot_jax.preprocess import video

FPS = 10
NUM_FRAMES = 40
STEP = 6  # red channel of frame k is STEP * k


def colour_frames(num_frames=NUM_FRAMES, size=(48, 64)):
  """Frame k is flat (STEP * k, 128, 64): its colour says which frame it is."""
  return [np.full(size + (3,), (STEP * k, 128, 64), np.uint8) for k in range(num_frames)]


def frame_index(frame):
  return float(frame[..., 0].mean()) / STEP


@pytest.fixture(scope='module', params=['mp4', 'mkv'])
def clock_video(tmp_path_factory, request):
  path = tmp_path_factory.mktemp('video') / f'clock.{request.param}'
  video.write_video(path, colour_frames(), FPS, keyframe_seconds=1.0)  # keyframes at 0, 1, 2, 3 s
  return path


def test_duration(clock_video):
  assert video.probe_duration(clock_video) == pytest.approx(NUM_FRAMES / FPS, abs=1e-3)


def test_frames_come_from_the_right_times(clock_video):
  # Forward reads, a backward seek to before a keyframe, jumps across keyframes, and the last frame.
  times = [0.0, 0.04, 0.15, 1.97, 3.33, 0.52, 2.0, 1.26, 3.99, 0.0, 2.71]
  frames = video.read_frames(clock_video, times)
  assert len(frames) == len(times)
  for t, frame in zip(times, frames, strict=True):
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    assert frame_index(frame) == pytest.approx(int(t * FPS + 1e-9), abs=0.5), f't={t}'


def test_result_does_not_depend_on_order(clock_video):
  times = [0.33, 1.05, 2.49, 3.5]
  forward = video.read_frames(clock_video, times)
  backward = video.read_frames(clock_video, times[::-1])[::-1]
  for a, b in zip(forward, backward, strict=True):
    np.testing.assert_array_equal(a, b)


def test_time_past_the_end_is_an_error(clock_video):
  with pytest.raises(video.VideoError, match='past the last frame'):
    video.read_frames(clock_video, [1.0, NUM_FRAMES / FPS + 0.5])


def test_garbage_is_unreadable(tmp_path, clock_video):
  path = tmp_path / f'bad{clock_video.suffix}'
  path.write_bytes(b'this is not a video at all' * 100)
  with pytest.raises(video.VideoError, match=path.name):
    video.probe_duration(path)
  with pytest.raises(video.VideoError, match=path.name):
    video.read_frames(path, [0.5])


def test_truncated_video_fails_past_its_data(tmp_path, clock_video):
  """A truncated mp4 lacks its index (at the end) and does not open; a truncated mkv reads up to the cut."""
  path = tmp_path / f'cut{clock_video.suffix}'
  path.write_bytes(clock_video.read_bytes()[:clock_video.stat().st_size // 3])
  with pytest.raises(video.VideoError, match=path.name):
    video.read_frames(path, [0.2, 3.5])


@pytest.mark.parametrize('size, expected', [
    ((1280, 720), (512, 288)),  # 16:9: the long side limit wins
    ((640, 480), (512, 384)),  # 4:3: both limits hold exactly
    ((480, 640), (384, 512)),  # portrait
    ((600, 400), (512, 341)),  # 3:2: long side limit
    ((500, 450), (427, 384)),  # nearly square: short side 384
    ((400, 3000), (68, 512)),  # very tall
    ((64, 48), (64, 48)),  # already small: never upscaled (as the original)
])
def test_resize_rules(size, expected):
  assert video.resize_size(*size) == expected
  frame = np.zeros((size[1], size[0], 3), np.uint8)
  out = video.resize_frame(frame)
  assert out.shape == (expected[1], expected[0], 3)
  if min(size) > 384:
    w, h = expected
    assert max(w, h) <= 512 and (min(w, h) == 384 or max(w, h) == 512)
    assert w / h == pytest.approx(size[0] / size[1], rel=0.01)


def test_resize_keeps_content():
  frame = np.zeros((480, 640, 3), np.uint8)
  frame[:, 320:] = 200  # right half bright
  out = video.resize_frame(frame)
  assert out[:, :250].max() < 10 and out[:, 262:].min() > 190


def test_jpeg_round_trip():
  y, x = np.mgrid[0:48, 0:64]
  frame = np.stack([4 * x, 5 * y, 255 - 3 * x], -1).astype(np.uint8)  # smooth colour gradients
  decoded = np.asarray(Image.open(io.BytesIO(video.encode_jpeg(frame))))
  assert decoded.shape == frame.shape
  assert np.abs(decoded.astype(int) - frame).mean() < 2
  assert len(video.encode_jpeg(frame, quality=50)) < len(video.encode_jpeg(frame, quality=95))


def test_trim_black_bars():
  frame = np.full((100, 80, 3), 150, np.uint8)
  frame[:10] = frame[-10:] = 0  # letterbox: 10 rows at the top and bottom
  frame[:, :30] = 0  # a 30-column pillar: more than 20%, so only 16 columns go
  trimmed = video.trim_black_bars([frame, frame])
  assert [f.shape for f in trimmed] == [(80, 64, 3)] * 2
  assert trimmed[0][:, 14:].min() == 150 and trimmed[0][:, :14].max() == 0


def test_rgb_to_yuv420p_bt601_limited_range():
  """Textbook BT.601 studio-range values (16 + 219 Y', 128 + 224 Pb / Pr, rounded): white 235/128/128,
  black 16/128/128, red 81/90/240, green 145/54/34, blue 41/240/110; each 2x2 block shares one chroma
  sample, the mean of its pixels'."""
  colours = {'white': ([255, 255, 255], (235, 128, 128)), 'black': ([0, 0, 0], (16, 128, 128)),
             'red': ([255, 0, 0], (81, 90, 240)), 'green': ([0, 255, 0], (145, 54, 34)),
             'blue': ([0, 0, 255], (41, 240, 110))}
  for name, (rgb, (y, cb, cr)) in colours.items():
    planes = video.rgb_to_yuv420p(np.full((4, 6, 3), rgb, np.uint8))
    assert planes.shape == (6, 6) and planes.dtype == np.uint8
    np.testing.assert_array_equal(planes[:4], y, err_msg=name)
    np.testing.assert_array_equal(planes[4:5], cb, err_msg=name)
    np.testing.assert_array_equal(planes[5:6], cr, err_msg=name)
  # One red pixel among three black ones: Cb = 128 - 37.797 / 4 = 118.55 -> 119, Cr = 128 + 112 / 4 = 156.
  # Planes of a 4x4 frame: Y rows 0-3, then Cb's 2x2 and Cr's 2x2 samples, each flattened into one row.
  frame = np.zeros((4, 4, 3), np.uint8)
  frame[0, 0] = [255, 0, 0]
  planes = video.rgb_to_yuv420p(frame)
  np.testing.assert_array_equal(planes[:4], [[81, 16, 16, 16]] + [[16] * 4] * 3)
  np.testing.assert_array_equal(planes[4:], [[119, 128, 128, 128], [156, 128, 128, 128]])
