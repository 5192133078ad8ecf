"""The synthetic corpus: deterministic, parseable, narration matching the screen, disjoint held-out stories."""

import dataclasses
import io
import itertools
import json
import re

import numpy as np
import pytest
from PIL import Image

from merlot_jax.preprocess import synthetic, video
from merlot_jax.preprocess.transcripts import load_transcript
from tests.script_runner import run_script

CONFIG = synthetic.Config(min_events=5, max_events=7, num_stories=4, heldout_fraction=0.34)
NUM_VIDEOS = 3
SEED = 7


def files(root, pattern):
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob(pattern))}


@pytest.fixture(scope='module')
def corpora(tmp_path_factory):
  """Two corpora with the same seed and one with another."""
  out = {}
  for name, seed in (('a', SEED), ('b', SEED), ('other', SEED + 1)):
    out[name] = tmp_path_factory.mktemp(name)
    synthetic.make_corpus(out[name], NUM_VIDEOS, seed, CONFIG)
  return out


def test_layout_and_split(corpora):
  root = corpora['a']
  info = json.loads((root / 'synthetic.json').read_text())
  assert len(info['videos']['train']) == 2 and len(info['videos']['heldout']) == 1
  assert not set(info['videos']['train']) & set(info['videos']['heldout'])
  for split, ids in info['videos'].items():
    for video_id in ids:
      assert (root / 'videos' / split / f'{video_id}.mp4').is_file()
      assert (root / 'videos' / split / f'{video_id}.en.vtt').is_file()


def test_deterministic_for_a_seed(corpora):
  a, b, other = corpora['a'], corpora['b'], corpora['other']
  for pattern in ('*.vtt', '*.txt', '*.json', '*.jpg'):
    assert files(a, pattern) == files(b, pattern), pattern
  assert files(a, '*.vtt') != files(other, '*.vtt')
  for name in files(a, '*.mp4'):
    times = [0.5, 3.0, 7.5]
    for fa, fb in zip(video.read_frames(a / name, times), video.read_frames(b / name, times), strict=True):
      np.testing.assert_array_equal(fa, fb)


def test_vtt_words_are_the_narration_within_the_video(corpora):
  root = corpora['a']
  narration = (root / 'narration.txt').read_text().split()
  parsed = []
  for path in sorted((root / 'videos' / 'train').glob('*.vtt')):
    words = load_transcript(path)
    duration = video.probe_duration(path.with_name(path.name.replace('.en.vtt', '.mp4')))
    assert all(0 <= w.start <= w.end <= duration for w in words)
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    parsed += [w.text for w in words]
  assert parsed == narration


def test_narration_describes_the_screen():
  """Each event's words are spoken while it is on screen, and the shapes named are where the words say."""
  timed, texts = synthetic.make_video(np.random.default_rng(3), CONFIG)
  frames = list(synthetic.video_frames(timed, CONFIG.fps, CONFIG.width, CONFIG.height))
  for te, text in zip(timed, texts, strict=True):
    assert [w for w, _ in te.words] == text.split()
    assert all(te.start_ms < t < te.end_ms for _, t in te.words)
    # The frame at the event's last word shows every shape of the scene after it at its named place.
    frame = frames[int(te.words[-1][1] / 1000 * CONFIG.fps)]
    for obj in te.event.after:
      x, y = synthetic.POSITIONS[obj.position][0]
      pixel = frame[int(y * CONFIG.height), int(x * CONFIG.width)]
      np.testing.assert_array_equal(pixel, synthetic.COLOURS[obj.colour])
    if len(te.event.after) > len(te.event.before):
      new = te.event.after[-1]
      assert f'{new.colour} {new.shape} appears {synthetic.POSITIONS[new.position][1]}' in text


def test_setting_fills_the_background_and_is_named():
  """One setting per video: every frame shows its backdrop wherever no shape is, and the narration names it."""
  means = [synthetic.background(s, 48, 32).reshape(-1, 3).mean(0) for s in synthetic.SETTINGS]
  assert min(np.abs(a - b).sum() for a, b in itertools.combinations(means, 2)) > 40  # distinct at a glance
  for seed in range(4):
    timed, texts = synthetic.make_video(np.random.default_rng(seed), CONFIG)
    (setting,) = {te.event.setting for te in timed}
    backdrop = synthetic.background(setting, CONFIG.width, CONFIG.height)
    y, x = np.mgrid[0:CONFIG.height, 0:CONFIG.width]
    for te in timed:
      frame = synthetic.render(te.event, 1.0, CONFIG.width, CONFIG.height)
      free = np.ones(frame.shape[:2], bool)
      for obj in te.event.after:  # outside every shape's bounding square
        (cx, cy), r = synthetic.POSITIONS[obj.position][0], synthetic.SIZES[obj.size] * CONFIG.height + 1
        free &= (np.abs(x - cx * CONFIG.width) > r) | (np.abs(y - cy * CONFIG.height) > r)
      np.testing.assert_array_equal(frame[free], backdrop[free])
    assert all(synthetic.SETTINGS[setting] in t for t in texts)
    assert not any(p in ' '.join(texts) for s, p in synthetic.SETTINGS.items() if s != setting)


def test_order_words():
  _, texts = synthetic.make_video(np.random.default_rng(5), CONFIG)
  assert texts[0].startswith('First, ') and texts[-1].startswith('Finally, ')
  assert all(t.split()[0] in {'Then', 'Next,', 'After', 'Later,'} for t in texts[1:-1])


def test_heldout_stories(corpora):
  root = corpora['a']
  stories = json.loads((root / 'stories' / 'stories.json').read_text())
  assert len(stories) == CONFIG.num_stories
  assert len({tuple(s['captions']) for s in stories}) == len(stories)
  # Caption sequences of the stories never occur, in order, in any video's narration.
  narrations = [' '.join(w.text for w in load_transcript(p)) for p in sorted(root.rglob('*.vtt'))]
  connective = r'\s+(?:First,|Then|Next,|After that,|Later,|Finally,)\s+'
  for story in stories:
    assert len(story['captions']) == len(story['frames']) == synthetic.STORY_LENGTH
    pattern = connective.join(re.escape(c[0].lower() + c[1:]) for c in story['captions'])
    assert not any(re.search(pattern, n) for n in narrations)
    for frame in story['frames']:
      image = Image.open(io.BytesIO((root / 'stories' / frame).read_bytes()))
      assert image.size == (CONFIG.width, CONFIG.height)


def test_story_frames_are_distinct(tmp_path):
  """Every story's 5 frames differ, so each has one true order (about a quarter of random 5-event
  stories revisit a scene, e.g. grow then shrink)."""
  config = dataclasses.replace(CONFIG, num_stories=40, width=48, height=32)
  synthetic._write_stories(tmp_path, 0, config, set())
  for story in json.loads((tmp_path / 'stories.json').read_text()):
    frames = [np.asarray(Image.open(tmp_path / f), np.float32) for f in story['frames']]
    for a, b in itertools.combinations(range(len(frames)), 2):
      assert np.abs(frames[a] - frames[b]).max() > 20, (story['id'], a, b)


def test_script(tmp_path):
  assert run_script('make_synthetic_corpus.py', '--out', tmp_path, '--videos', 2, '--seed', 3, '--stories', 2,
                    '--max_events', 9) == 0
  info = json.loads((tmp_path / 'synthetic.json').read_text())
  assert info['seed'] == 3 and len(info['videos']['train']) == 2 and info['stories'] == 2
  assert info['config']['max_events'] == 9
  assert len(json.loads((tmp_path / 'stories' / 'stories.json').read_text())) == 2
