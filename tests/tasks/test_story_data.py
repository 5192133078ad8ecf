"""Story readers: a fake VIST manual directory through the TFDS builder, synthetic stories, model inputs."""

import io
import json
import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from merlot_jax.config import load_config
from merlot_jax.preprocess import synthetic
from merlot_jax.special_tokens import PAD, START
from merlot_jax.tasks import story_data
from merlot_jax.tasks.story_ordering import story_config
from tests.models.testlib import REPO

# story id -> 5 (photo id, caption, colour) in true order; the JSON lists them shuffled
STORIES = {
    '30': [(f'30{k}', f'Story thirty, step {k}.', (40 * k, 200, 30)) for k in range(5)],
    '4': [(f'4{k}', f'Story four, step {k}.', (200, 40 * k, 90)) for k in range(5)],
    '100': [(f'100{k}', f'Story hundred, step {k}.', (10, 90, 40 * k)) for k in range(5)],
}
MISSING = {'7': [(f'7{k}', f'Story seven, step {k}.', None) for k in range(5)]}  # photo 72 is not there
SIZE = (1000, 600)  # thumbnail -> 800 x 480


def write_vist(root, split='val'):
  rng = np.random.default_rng(0)
  annotations = []
  for story_id, steps in {**STORIES, **MISSING}.items():
    for order, (photo, text, _) in enumerate(steps):
      annotations.append([{'story_id': story_id, 'photo_flickr_id': photo, 'original_text': text,
                           'text': text.lower(), 'worker_arranged_photo_order': order, 'album_id': '1'}])
  annotations = [annotations[i] for i in rng.permutation(len(annotations))]
  (root / 'sis').mkdir(parents=True)
  (root / 'sis' / f'{split}.story-in-sequence.json').write_text(json.dumps({'annotations': annotations}))
  images = root / 'images' / split
  images.mkdir(parents=True)
  for steps in STORIES.values():
    for k, (photo, _, colour) in enumerate(steps):
      suffix = 'png' if k == 1 else 'jpg'  # matched on the stem, any extension
      Image.new('RGB', SIZE, colour).save(images / f'{photo}.{suffix}')
  for photo, _, _ in MISSING['7']:
    if photo != '72':
      Image.new('RGB', SIZE, (0, 0, 0)).save(images / f'{photo}.jpg')


@pytest.fixture(scope='module')
def vist_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('vist')
  write_vist(root)
  return root


def assert_story(story_id, captions, images):
  steps = STORIES[story_id]
  assert list(captions) == [text for _, text, _ in steps]
  for image, (_, _, colour) in zip(images, steps, strict=True):
    assert image.shape == (480, 800, 3)
    np.testing.assert_allclose(image.reshape(-1, 3).mean(0), colour, atol=3)


def decode(jpeg):
  return np.asarray(Image.open(io.BytesIO(jpeg)))


def test_reader_sorts_and_skips_stories_with_missing_photos(vist_dir, caplog):
  with caplog.at_level(logging.WARNING):
    stories = list(story_data.vist_stories(vist_dir, 'val'))
  assert [s.story_id for s in stories] == ['4', '30', '100']  # numeric order, story 7 skipped
  assert 'skipped 1 of 4 stories' in caplog.text
  for s in stories:
    assert_story(s.story_id, s.captions, [decode(j) for j in s.jpegs])


def test_tfds_builder_reads_the_manual_dir(vist_dir, tmp_path):
  builder = story_data.VistStoryOrdering(data_dir=str(tmp_path))
  assert builder.name == 'vist_story_ordering'
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(vist_dir)))
  assert list(builder.info.splits) == ['val']
  examples = list(builder.as_dataset(split='val').as_numpy_iterator())
  assert sorted(ex['story_id'].decode() for ex in examples) == ['100', '30', '4']
  for ex in examples:
    assert_story(ex['story_id'].decode(), [c.decode() for c in ex['captions']], ex['images'])
  # read back as stories: the stored JPEGs are the reader's bytes, not a second encoding
  direct = {s.story_id: s for s in story_data.vist_stories(vist_dir, 'val')}
  for s in story_data.tfds_vist_stories(vist_dir, 'val', tmp_path):
    assert s == direct[s.story_id]
  with pytest.raises(ValueError, match="not 'train'"):
    next(story_data.tfds_vist_stories(vist_dir, 'train', tmp_path))


def test_vist_errors_name_the_file(tmp_path, vist_dir):
  with pytest.raises(FileNotFoundError, match='test.story-in-sequence.json'):
    next(story_data.vist_stories(vist_dir, 'test'))
  bad = tmp_path / 'bad'
  (bad / 'sis').mkdir(parents=True)
  ann = [[{'story_id': '1', 'photo_flickr_id': str(k), 'original_text': 'x', 'worker_arranged_photo_order': k % 4}]
         for k in range(5)]
  (bad / 'sis' / 'val.story-in-sequence.json').write_text(json.dumps({'annotations': ann}))
  with pytest.raises(ValueError, match=r'val.story-in-sequence.json: story 1 has worker_arranged_photo_order'):
    next(story_data.vist_stories(bad, 'val'))
  with pytest.raises(ValueError, match='synthetic:CORPUS_DIR or vist:MANUAL_DIR'):
    story_data.load_stories('kinetics:/x')


class CharTokenizer:
  """One id per character (>= 100), for checking the token layout by hand."""
  name, vocab_size = 'chars', 512

  def encode(self, text):
    return [100 + (ord(c) % 400) for c in text]


def test_synthetic_stories_to_model_inputs(tmp_path):
  synthetic.make_corpus(tmp_path, 1, 5, synthetic.Config(min_events=5, max_events=6, num_stories=3))
  stories = list(story_data.load_stories(f'synthetic:{tmp_path}', limit=2))
  assert [s.story_id for s in stories] == ['story-0000', 'story-0001']
  index = json.loads((tmp_path / 'stories' / 'stories.json').read_text())
  assert stories[0].captions == tuple(index[0]['captions'])
  assert stories[0].jpegs[3] == (tmp_path / 'stories' / index[0]['frames'][3]).read_bytes()

  config = story_config(load_config(REPO / 'configs' / 'tiny.py'))  # image_size (64, 96), 8 tokens
  batches = list(story_data.story_batches(stories, config, CharTokenizer(), batch_size=3, seed=0))
  assert len(batches) == 1
  batch = batches[0]
  assert batch['images'].shape == (3, 5, 64, 96, 3) and batch['images'].dtype == np.uint8
  assert int(batch['num_valid']) == 2 and list(batch['story_id']) == ['story-0000', 'story-0001', 'story-0001']
  for b, story in enumerate(stories):
    shown = batch['true_position'][b]
    assert sorted(shown.tolist()) == list(range(5))
    # 96x64 already, so no resize: up to rounding, slot s holds libjpeg's decode of frame shown[s]
    frames = np.stack([tf.io.decode_jpeg(j).numpy() for j in story.jpegs]).astype(float)
    for s in range(5):  # (a story may repeat a frame, so compare distances)
      diff = np.abs(batch['images'][b, s] - frames).mean((1, 2, 3))
      assert diff[shown[s]] == diff.min() < 0.5, diff
    for k, text in enumerate(story.captions):
      np.testing.assert_array_equal(batch['input_ids'][b, k], [START] + [100 + ord(c) % 400 for c in text[:7]])
  assert not np.array_equal(batch['true_position'][0], batch['true_position'][1])
  short = story_data.caption_ids(CharTokenizer(), ['ab'], 8)
  np.testing.assert_array_equal(short, [[START, 197, 198, PAD, PAD, PAD, PAD, PAD]])
