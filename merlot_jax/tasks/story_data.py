"""Stories for zero-shot visual story ordering: 5 captions in their true order, each with its image.

Two sources, both read without any download at run time:

(a) The built-in synthetic held-out stories that `merlot_jax.preprocess.synthetic.make_corpus` writes:
      CORPUS/stories/stories.json   [{"id": ..., "captions": [5 str], "frames": ["S/0.jpg", ...]}, ...]
      CORPUS/stories/S/K.jpg        the frame of caption K
    (`synthetic_stories` takes CORPUS or CORPUS/stories.)

(b) SIND / VIST (https://visionandlanguage.net/VIST/), downloaded by hand into a manual directory:
      MANUAL_DIR/sis/<split>.story-in-sequence.json   the story-in-sequence annotations, split in
                                                       train | val | test
      MANUAL_DIR/images/<split>/<photo_flickr_id>.<ext>  the photos of that split (.jpg; any extension
                                                       is accepted, matched on the file stem as the
                                                       original does)
    The JSON's `annotations` is a list of one-element lists, one per caption, with `story_id`,
    `photo_flickr_id`, `original_text` and `worker_arranged_photo_order` (0..4). As the original's
    downstream/sort_story/data/make_tfrecord.py: a story's 5 captions are sorted by that order, each
    photo is shrunk to fit 800x800 (`PIL.Image.thumbnail`) and re-encoded as JPEG quality 95.
    Stories with a missing or unreadable photo are skipped (public VIST downloads lack some photos)
    and counted in a warning. `VistStoryOrdering` is the TFDS builder (`vist_story_ordering`) over
    that directory; `tfds_vist_stories` prepares it once and reads it back.

`story_batches` turns stories into model inputs: captions as tokens ([START] + text, 0-padded or cut
to segment_length) in order, images resized and padded as the pretraining eval path does (the
original's resize_and_pad without random scale) and shown in a seeded random order.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import itertools
import json
import logging
import pathlib
from collections.abc import Iterable, Iterator

import ml_collections
import numpy as np

from merlot_jax.data.frames import decode_frames
from merlot_jax.data.tokenizer import Tokenizer
from merlot_jax.extras import import_extra
from merlot_jax.special_tokens import PAD, START

tf = import_extra('tensorflow', 'data')
tfds = import_extra('tensorflow_datasets', 'data')
Image = import_extra('PIL.Image', 'data')

log = logging.getLogger(__name__)

STORY_LENGTH = 5  # the task: 5 image-caption pairs
VIST_SPLITS = ('train', 'val', 'test')
_THUMBNAIL = (800, 800)
_JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class Story:
  """captions[k] and jpegs[k] are the k-th step of the story (true order)."""
  story_id: str
  captions: tuple[str, ...]
  jpegs: tuple[bytes, ...]


def _checked(story: Story, source: str) -> Story:
  if len(story.captions) != STORY_LENGTH or len(story.jpegs) != STORY_LENGTH:
    raise ValueError(f'{source}: story {story.story_id} has {len(story.captions)} captions and '
                     f'{len(story.jpegs)} images; the task needs {STORY_LENGTH} of each')
  return story


# --- (a) synthetic -------------------------------------------------------------------------------


def synthetic_stories(path: str | pathlib.Path) -> Iterator[Story]:
  """The held-out stories of a synthetic corpus (its root or its stories/ folder)."""
  path = pathlib.Path(path)
  folder = path if (path / 'stories.json').is_file() else path / 'stories'
  index = folder / 'stories.json'
  if not index.is_file():
    raise FileNotFoundError(f'{index} is missing: expected a synthetic corpus written by make_corpus '
                            '(CORPUS/stories/stories.json)')
  for entry in json.loads(index.read_text()):
    jpegs = []
    for frame in entry['frames']:
      if not (folder / frame).is_file():
        raise FileNotFoundError(f'{folder / frame} is missing (listed for story {entry["id"]} in {index})')
      jpegs.append((folder / frame).read_bytes())
    yield _checked(Story(str(entry['id']), tuple(entry['captions']), tuple(jpegs)), str(index))


# --- (b) VIST ------------------------------------------------------------------------------------


def _vist_annotations(path: pathlib.Path) -> dict[str, list[dict]]:
  """story_id -> its 5 annotations sorted by worker_arranged_photo_order."""
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing: see the layout in merlot_jax/tasks/story_data.py')
  by_story = collections.defaultdict(list)
  for entry in json.loads(path.read_text())['annotations']:
    by_story[str(entry[0]['story_id'])].append(entry[0])
  for story_id, anns in by_story.items():
    order = sorted(a['worker_arranged_photo_order'] for a in anns)
    if order != list(range(STORY_LENGTH)):
      raise ValueError(f'{path}: story {story_id} has worker_arranged_photo_order {order}, '
                       f'expected each of 0..{STORY_LENGTH - 1} once')
    anns.sort(key=lambda a: a['worker_arranged_photo_order'])
  return by_story


def _vist_jpeg(path: pathlib.Path) -> bytes:
  """The photo shrunk to fit 800x800 and re-encoded as JPEG (quality 95), as make_tfrecord.py."""
  with Image.open(path) as image:
    image.thumbnail(_THUMBNAIL)
    with io.BytesIO() as out:
      image.convert('RGB').save(out, format='JPEG', quality=_JPEG_QUALITY)
      return out.getvalue()


def vist_stories(manual_dir: str | pathlib.Path, split: str) -> Iterator[Story]:
  """VIST stories of `split` from the manual directory, by increasing numeric story id."""
  manual_dir = pathlib.Path(manual_dir)
  if split not in VIST_SPLITS:
    raise ValueError(f'VIST split {split!r}: must be one of {VIST_SPLITS}')
  sis = manual_dir / 'sis' / f'{split}.story-in-sequence.json'
  by_story = _vist_annotations(sis)
  image_dir = manual_dir / 'images' / split
  if not image_dir.is_dir():
    raise FileNotFoundError(f'{image_dir} is missing: the photos of split {split} go there')
  photos = {p.name.split('.')[0]: p for p in image_dir.iterdir()}
  skipped = 0
  for story_id in sorted(by_story, key=int):
    anns = by_story[story_id]
    try:
      jpegs = tuple(_vist_jpeg(photos[a['photo_flickr_id']]) for a in anns if a['photo_flickr_id'] in photos)
    except OSError as e:  # PIL's errors for truncated or unknown files are OSErrors
      log.debug('%s: story %s has an unreadable photo (%s)', sis, story_id, e)
      jpegs = ()
    if len(jpegs) != len(anns):
      skipped += 1
      continue
    yield _checked(Story(story_id, tuple(a['original_text'] for a in anns), jpegs), str(sis))
  if skipped:
    log.warning('%s: skipped %d of %d stories with a missing or unreadable photo in %s',
                    sis, skipped, len(by_story), image_dir)


class VistStoryOrdering(tfds.core.GeneratorBasedBuilder):
  """SIND/VIST stories (5 captions in order, one image each) for zero-shot story ordering."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Story-in-sequence captions with photos shrunk to fit 800x800.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download VIST (https://visionandlanguage.net/VIST/dataset.html) and arrange manual_dir as
    manual_dir/sis/{train,val,test}.story-in-sequence.json   (from the SIS annotations archive)
    manual_dir/images/{train,val,test}/<photo_flickr_id>.jpg (the photo archives of each split)
  Only the splits whose JSON is present are prepared.
  """
  # Where TFDS looks for a checksums file next to the builder's code; a manual-only dataset has none,
  # and TFDS 4.9.10's lookup needs the `importlib_resources` backport, which is not installed.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'story_id': tfds.features.Text(),
            'captions': tfds.features.Sequence(tfds.features.Text(), length=STORY_LENGTH),
            'images': tfds.features.Sequence(
                tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'), length=STORY_LENGTH),
        }),
        homepage='https://visionandlanguage.net/VIST/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = pathlib.Path(dl_manager.manual_dir)
    splits = [s for s in VIST_SPLITS if (manual / 'sis' / f'{s}.story-in-sequence.json').is_file()]
    if not splits:
      raise FileNotFoundError(f'{manual}/sis has no <split>.story-in-sequence.json:\n'
                              f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return {s: self._generate_examples(manual, s) for s in splits}

  def _generate_examples(self, manual_dir: pathlib.Path, split: str):
    for story in vist_stories(manual_dir, split):
      # File objects are stored as they are: the JPEG bytes above, not a second encoding.
      yield story.story_id, {'story_id': story.story_id, 'captions': list(story.captions),
                             'images': [io.BytesIO(j) for j in story.jpegs]}


def tfds_vist_stories(manual_dir: str | pathlib.Path, split: str,
                      data_dir: str | pathlib.Path | None = None) -> Iterator[Story]:
  """Prepares `vist_story_ordering` from the manual directory (once) and reads `split` back."""
  builder = VistStoryOrdering(data_dir=None if data_dir is None else str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  if split not in builder.info.splits:
    raise ValueError(f'vist_story_ordering has splits {list(builder.info.splits)}, not {split!r} '
                     f'(is {manual_dir}/sis/{split}.story-in-sequence.json there?)')
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders={'images': tfds.decode.SkipDecoding()})
  for ex in ds.as_numpy_iterator():
    yield Story(ex['story_id'].decode(), tuple(c.decode() for c in ex['captions']),
                tuple(bytes(j) for j in ex['images']))


def load_stories(spec: str, split: str = 'val', *, limit: int | None = None,
                 tfds_data_dir: str | None = None) -> Iterator[Story]:
  """'synthetic:CORPUS' (held-out stories; split unused) or 'vist:MANUAL_DIR' (through TFDS)."""
  kind, _, path = spec.partition(':')
  if kind == 'synthetic' and path:
    stories = synthetic_stories(path)
  elif kind == 'vist' and path:
    stories = tfds_vist_stories(path, split, tfds_data_dir)
  else:
    raise ValueError(f'--data {spec!r}: expected synthetic:CORPUS_DIR or vist:MANUAL_DIR')
  return itertools.islice(stories, limit)


# --- model inputs --------------------------------------------------------------------------------


def caption_ids(tokenizer: Tokenizer, captions: Iterable[str], segment_length: int) -> np.ndarray:
  """int32 [n, segment_length]: START + the caption's tokens, cut or 0-padded (the original's dataloader)."""
  rows = [([START] + tokenizer.encode(c))[:segment_length] for c in captions]
  return np.array([r + [PAD] * (segment_length - len(r)) for r in rows], np.int32)


def story_batches(stories: Iterable[Story], config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                  batch_size: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Batches of `batch_size` stories (the last one padded by repeating its final story).

  images: uint8 [b, 5, H, W, 3], slot s showing the story's image `true_position[s]`, a seeded random
  order per story, so that nothing (ties in scoring included) can favour the true order;
  input_ids: int32 [b, 5, segment_length], captions in true order; true_position: int32 [b, 5];
  story_id: str [b]; num_valid: how many rows are real stories.
  """
  m, data = config.model, config.data
  decode = tf.function(lambda jpegs: decode_frames(jpegs, None, data, tuple(m.image_size), data.augment_mode),
                       input_signature=[tf.TensorSpec([None], tf.string)])
  rows = []

  def batch() -> dict[str, np.ndarray]:
    valid = len(rows)
    rows.extend([rows[-1]] * (batch_size - valid))
    out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    rows.clear()
    return {**out, 'num_valid': np.asarray(valid)}

  for number, story in enumerate(stories):
    shown = np.random.default_rng([seed, number]).permutation(STORY_LENGTH).astype(np.int32)
    rows.append({'images': decode(tf.constant([story.jpegs[k] for k in shown])).numpy(),
                 'input_ids': caption_ids(tokenizer, story.captions, m.segment_length),
                 'true_position': shown, 'story_id': np.asarray(story.story_id)})
    if len(rows) == batch_size:
      yield batch()
  if rows:
    yield batch()
