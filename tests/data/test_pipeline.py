"""The tf.data pipeline on a tiny corpus written here (records built with tf.train.Example)."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from merlot_jax.config import default_config
from merlot_jax.data import frames as frames_lib
from merlot_jax.data import pipeline
from merlot_jax.special_tokens import NEXT_CAPTION_START, START
from tests.script_runner import run_script

N, L, G = 4, 8, 2  # segments, tokens per segment, segments per group
FRAME_HW = (48, 80)  # stored frames: a different aspect from the model's 64x96, so both paths pad
OFFSET = 16
RAW, CLEAN = 1000, 3000  # token of segment s of example e: base + 10 * e + s
NUM_FILES, PER_FILE = 3, 4


def _config(**data):
  c = default_config()
  m = c.model
  m.num_segments, m.segment_length, m.segments_per_group, m.image_size = N, L, G, (64, 96)
  c.train.global_batch_size = 4
  c.data.shuffle_buffer = 8
  c.data.update(data)
  return c


def _colour(s: int) -> tuple[int, int, int]:
  return (40 + 50 * s, 220 - 50 * s, 128)


def _jpeg(s: int) -> bytes:
  frame = np.zeros((*FRAME_HW, 3), np.uint8) + np.array(_colour(s), np.uint8)
  return tf.io.encode_jpeg(frame, quality=95).numpy()


def _example(e: int, rng: np.random.Generator, frames=None) -> dict:
  """N segments from 1-3 videos; token lengths 1..10 so that some get truncated to L - 1."""
  cuts = sorted(rng.choice(np.arange(1, N), size=rng.integers(0, 3), replace=False))
  video = np.zeros(N, np.int64)
  for c in cuts:
    video[c:] += 1
  end = np.append(video[1:] != video[:-1], 1).astype(np.int64)
  raw_len, clean_len = rng.integers(1, 11, N), rng.integers(1, 11, N)
  return {
      'frames': frames or [_jpeg(s) for s in range(N)],
      'tokens_raw': [RAW + 10 * e + s for s in range(N) for _ in range(raw_len[s])], 'tokens_raw_len': raw_len,
      'tokens_clean': [CLEAN + 10 * e + s for s in range(N) for _ in range(clean_len[s])],
      'tokens_clean_len': clean_len, 'video_src_index': video, 'is_end_of_video': end,
      'times': [float(s) for s in range(N)], 'video_id': [f'v{e}_{v}'.encode() for v in video],
  }


def _serialize(ex: dict) -> bytes:
  def feature(values):
    values = list(values)
    if isinstance(values[0], bytes):
      return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if isinstance(values[0], float):
      return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
  return tf.train.Example(features=tf.train.Features(
      feature={k: feature(v) for k, v in ex.items()})).SerializeToString()


def _write(path: pathlib.Path, records: list[bytes]) -> None:
  with tf.io.TFRecordWriter(str(path)) as writer:
    for r in records:
      writer.write(r)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """NUM_FILES shards of PER_FILE examples; returns (glob pattern, {example id: example})."""
  root, rng, examples = tmp_path_factory.mktemp('corpus'), np.random.default_rng(0), {}
  for f in range(NUM_FILES):
    ids = range(f * PER_FILE, (f + 1) * PER_FILE)
    examples.update({e: _example(e, rng) for e in ids})
    _write(root / f'train-{f:02d}.tfrecord', [_serialize(examples[e]) for e in ids])
  return str(root / 'train-*.tfrecord'), examples


def _take(it, k: int) -> list[dict]:
  return [next(it) for _ in range(k)]


def _identify(row: np.ndarray) -> tuple[int, bool, np.ndarray]:
  """(example id, clean?, segment of each row) from the first token after the start token."""
  clean = row[0, 0] == START
  base = CLEAN if clean else RAW
  codes = row[:, 1] - base
  assert len(set(codes // 10)) == 1, row
  return int(codes[0] // 10), bool(clean), codes % 10


def _check_example(b: dict, i: int, examples: dict, shuffled_segments: bool) -> int:
  ids = b['input_ids'][i]
  e, clean, seg = _identify(ids)
  ex = examples[e]
  assert set(ids[:, 0]) == {START if clean else NEXT_CAPTION_START}
  lengths = ex['tokens_clean_len' if clean else 'tokens_raw_len']
  for row, s in zip(ids, seg, strict=True):
    n = min(lengths[s], L - 1)
    np.testing.assert_array_equal(row[1:1 + n], (CLEAN if clean else RAW) + 10 * e + s)
    assert not row[1 + n:].any()
  # Whole videos move together and keep their inner order; ids are the record's video index.
  np.testing.assert_array_equal(b['video_src_ids'][i], ex['video_src_index'][seg])
  for v in set(b['video_src_ids'][i]):
    rows = np.flatnonzero(b['video_src_ids'][i] == v)
    np.testing.assert_array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))
    np.testing.assert_array_equal(seg[rows], np.sort(seg[rows]))
  if not shuffled_segments:
    np.testing.assert_array_equal(seg, np.arange(N))
  # Frames move with their segments (the top-left pixel is always image content).
  for frame, s in zip(b['images'][i], seg, strict=True):
    np.testing.assert_allclose(frame[0, 0], _colour(s), atol=6)
  return e


def _check_image_index(group: np.ndarray) -> bool:
  """True when the group was shuffled; asserts the original's structure either way: unmoved frames keep
  their position, moved ones (never just one) get OFFSET + distinct positions of the group."""
  moved = group >= OFFSET
  np.testing.assert_array_equal(group[~moved], np.arange(len(group))[~moved])
  values = group[moved] - OFFSET
  assert len(set(values)) == len(values) and all(0 <= v < len(group) for v in values), group
  assert moved.sum() != 1, group  # moving a single frame has probability 1e-6
  return bool(moved.any())


def test_batches_match_spec_and_content(corpus):
  pattern, examples = corpus
  it = pipeline.make_dataset(_config(augment_prob=0.0), pattern, train=True, seed=0, process_index=0,
                             process_count=1)
  shuffled_groups, reordered_videos = [], []
  for b in _take(it, 6):
    for key, (shape, dtype) in pipeline.batch_shapes(_config(), 4).items():
      assert b[key].shape == shape and b[key].dtype == dtype, key
    assert set(b) == set(pipeline.BATCH_SPEC)
    assert not b['skipped'].any()
    for i in range(4):
      _check_example(b, i, examples, shuffled_segments=True)
      reordered_videos.append(np.any(np.diff(b['video_src_ids'][i]) < 0))
      shuffled_groups += [_check_image_index(group) for group in b['image_index'][i].reshape(-1, G)]
  assert 0 < np.mean(shuffled_groups) < 1 and 0 < np.mean(reordered_videos) < 1


def test_eval_is_in_order_and_deterministic(corpus):
  pattern, examples = corpus
  seen = []
  def run():
    return list(pipeline.make_dataset(_config(), pattern, train=False, seed=0, process_index=0, process_count=1))
  batches = run()
  assert len(batches) == NUM_FILES * PER_FILE // 4 and _same(batches, run())
  for b in batches:
    np.testing.assert_array_equal(b['image_index'], np.tile(np.arange(G), (4, N // G)))
    seen += [_check_example(b, i, examples, shuffled_segments=False) for i in range(4)]
    # Scale to fit (48x80 -> 57x96 with align_corners bilinear), padded with zeros at the bottom.
    assert not b['images'][:, :, 57:].any()
    assert b['images'][:, :, :57].min(axis=(2, 3, 4)).min() > 0
  assert sorted(seen) == list(range(NUM_FILES * PER_FILE))


def test_sample_image_index_structure_and_rate():
  index = pipeline.sample_image_index(tf.constant([7, 1], tf.int64), 4 * 1000, 4, 0.4, OFFSET).numpy()
  groups = index.reshape(-1, 4)
  shuffled = [_check_image_index(group) for group in groups]
  assert 0.36 < np.mean(shuffled) < 0.44
  moved = (groups[np.array(shuffled)] >= OFFSET).sum(1)  # 2, 3 or 4 frames, equally likely
  np.testing.assert_allclose(np.bincount(moved, minlength=5)[2:] / len(moved), 1 / 3, atol=0.06)
  identity = pipeline.sample_image_index(tf.constant([7, 0], tf.int64), 8, 4, 0.0, OFFSET).numpy()
  np.testing.assert_array_equal(identity, [0, 1, 2, 3, 0, 1, 2, 3])


def _same(a: list[dict], b: list[dict]) -> bool:
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_same_seed_same_batches_and_exact_resume(corpus):
  pattern, _ = corpus
  def run(seed, **kw):
    return pipeline.make_dataset(_config(), pattern, train=True, seed=seed, process_index=0,
                                 process_count=1, **kw)
  full = _take(run(0), 6)  # 24 examples: two epochs of the 12-example corpus
  assert _same(full, _take(run(0), 6))
  assert not _same(full[:2], _take(run(1), 2))
  resumed = run(0, start_step=4)
  assert _same(full[4:], _take(resumed, 2))
  assert resumed.step == 6 and resumed.position == 24


def test_hosts_see_disjoint_shards_covering_the_corpus(corpus):
  pattern, examples = corpus
  seen = {}
  for host in range(2):
    it = pipeline.make_dataset(_config(), pattern, train=False, seed=0, process_index=host, process_count=2)
    batches = list(it)
    assert all(len(b['input_ids']) == 2 for b in batches)  # global batch 4 over 2 hosts
    seen[host] = [_identify(ids)[0] for b in batches for ids in b['input_ids']]
  # Host 0 has shards 0 and 2 (8 examples), host 1 shard 1 (4): disjoint, all 12 together.
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(examples)
  train = [pipeline.make_dataset(_config(), pattern, train=True, seed=0, process_index=h, process_count=2)
           for h in range(2)]
  files = [{_identify(ids)[0] // PER_FILE for b in _take(it, 4) for ids in b['input_ids']} for it in train]
  assert files[0] == {0, 2} and files[1] == {1}


def test_corrupt_frame_and_truncated_shard_are_skipped_and_counted(tmp_path):
  rng = np.random.default_rng(1)
  good = [_serialize(_example(e, rng)) for e in range(13)]
  not_jpeg = [_jpeg(0), b'\xff\xd8\xff\xe0 not really a jpeg', _jpeg(2), _jpeg(3)]
  cut_jpeg = [_jpeg(0), _jpeg(1), _jpeg(2)[:300], _jpeg(3)]  # valid header, data cut short
  bad = [_serialize(_example(e, rng, frames=f)) for e, f in ((13, not_jpeg), (14, cut_jpeg))]
  _write(tmp_path / 'a.tfrecord', good[0:4])
  _write(tmp_path / 'b.tfrecord', [good[4], bad[0]] + good[5:7] + [bad[1]] + good[7:9])
  _write(tmp_path / 'c.tfrecord', good[9:13])
  data = (tmp_path / 'c.tfrecord').read_bytes()
  (tmp_path / 'c.tfrecord').write_bytes(data[:-40])  # cuts the last record (example 12)
  pattern = str(tmp_path / '*.tfrecord')

  # Eval interleaves a, b, c one record each: the bad frames and the cut come before the last example.
  it = pipeline.make_dataset(_config(), pattern, train=False, seed=0, process_index=0, process_count=1)
  batches = list(it)
  assert sorted(_identify(ids)[0] for b in batches for ids in b['input_ids']) == list(range(12))
  assert it.skipped == 3 and sum(int(b['skipped'].sum()) for b in batches) == 3

  # Training resumes exactly from a saved position even with skipped records before it.
  def run(**kw):
    return pipeline.make_dataset(_config(), pattern, train=True, seed=3, process_index=0, process_count=1,
                                 **kw)
  full = run()
  _take(full, 5)
  saved = full.position
  rest = _take(full, 3)
  assert full.skipped >= 6  # 32 examples: more than two passes over the shards
  assert _same(rest, _take(run(start_step=5, start_position=saved), 3))


def test_layout_errors_name_the_problem(corpus, tmp_path):
  pattern, _ = corpus
  c = _config()
  c.model.num_segments = 8
  with pytest.raises(ValueError, match=r'train-00\.tfrecord.*4 frames.*num_segments = 8'):
    pipeline.make_dataset(c, pattern, train=True, seed=0, process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match='matches no files'):
    pipeline.make_dataset(_config(), str(tmp_path / 'none-*'), train=True, seed=0, process_index=0,
                          process_count=1)
  with pytest.raises(ValueError, match='fewer than the 4 hosts'):
    pipeline.make_dataset(_config(), pattern, train=True, seed=0, process_index=0, process_count=4)


def test_corpus_checks_name_the_pattern_the_vocabulary_and_the_tokenizer(corpus, tmp_path):
  pattern, _ = corpus
  pipeline.check_corpus(_config(), pattern, 1)
  with pytest.raises(FileNotFoundError, match="data pattern '.*none-\\*' matches no files"):
    pipeline.check_corpus(_config(), str(tmp_path / 'none-*'), 1)
  shard = tmp_path / 'train-00.tfrecord'
  shard.write_bytes(pathlib.Path(pattern.replace('*', '00')).read_bytes())
  (tmp_path / 'manifest.json').write_text('{"tokenizer": "sentencepiece:spm.model", "vocab_size": 400}')
  small = _config()
  small.model.vocab_size = 300
  with pytest.raises(ValueError, match=r'manifest\.json: the corpus was tokenized with sentencepiece:spm\.model, '
                                       r'which has 400 ids, but config\.model\.vocab_size = 300: set '
                                       r'--config\.model\.vocab_size=400'):
    pipeline.check_corpus(small, str(tmp_path / 'train-*.tfrecord'), 1)


def test_first_batch_with_ids_beyond_the_vocabulary_names_the_largest(corpus):
  """The fixture's transcript tokens are RAW.. and CLEAN + 10 * example + segment (3000-3113, beyond the
  model's 2000 rows); the first batch's largest is named."""
  pattern, _ = corpus
  c = _config()
  c.model.vocab_size = 2000
  batches = pipeline.make_dataset(c, pattern, train=False, seed=0, process_index=0, process_count=1)
  largest = r'token id 3[01]\d\d >= config\.model\.vocab_size = 2000: .* \(at least 3[01]\d\d\)'
  with pytest.raises(ValueError, match=largest):
    next(batches)


@pytest.mark.parametrize('case', ['no_files', 'vocabulary'])
def test_pretrain_script_stops_on_bad_data_before_writing_anything(corpus, tmp_path, case):
  """scripts/pretrain.py as a user runs it: the error names the pattern (or the manifest, the tokenizer and
  both sizes), and the workdir is never created."""
  pattern, _ = corpus
  data = tmp_path / 'data'
  data.mkdir()
  (data / 'train-00.tfrecord').write_bytes(pathlib.Path(pattern.replace('*', '00')).read_bytes())
  (data / 'manifest.json').write_text('{"tokenizer": "sentencepiece:spm.model", "vocab_size": 4096}')
  workdir = tmp_path / 'run'
  args = ['--config=tiny', f'--workdir={workdir}']  # configs/tiny.py: 4 segments (as the fixture), 512 ids
  if case == 'no_files':
    expected = pytest.raises(FileNotFoundError, match=f"data pattern '{data}/none-\\*' matches no files")
    args.append(f'--config.data.train_pattern={data}/none-*')
  else:
    expected = pytest.raises(ValueError, match='sentencepiece:spm.model, which has 4096 ids, but '
                                               'config.model.vocab_size = 512')
    args.append(f'--config.data.train_pattern={data}/train-*.tfrecord')
  with expected:
    run_script('pretrain.py', *args)
  assert not workdir.exists()


def _original_frame(jpeg: bytes, u: np.ndarray | None, size=(64, 96), scale_range=(1.125, 1.5), prob=0.8):
  """The original's recipe step by step (float 0..1, TF1 resize, crop, pad, contrast), u replacing its draws."""
  image = tf.image.convert_image_dtype(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)
  h, w = (tf.cast(d, tf.float32) for d in tf.unstack(tf.shape(image)[:2]))
  height, width = size
  if u is None:
    scale = tf.minimum(width / w, height / h)
    method, offset_y, offset_x = 0, 0, 0
  else:
    factor = scale_range[0] + float(u[0]) * (scale_range[1] - scale_range[0])
    scaled_y = tf.cast(tf.cast(factor * tf.constant(height, tf.float32), tf.int32), tf.float32)
    scaled_x = tf.cast(tf.cast(factor * tf.constant(width, tf.float32), tf.int32), tf.float32)
    scale = tf.maximum(tf.minimum(scaled_x / w, scaled_y / h), 64.0 / tf.minimum(h, w))
    method = int(u[3] * 4)
  new_h, new_w = tf.cast(h * scale, tf.int32), tf.cast(w * scale, tf.int32)
  if u is not None:
    offset_y = int(float(tf.maximum(0.0, tf.cast(new_h - height, tf.float32))) * float(u[1]))
    offset_x = int(float(tf.maximum(0.0, tf.cast(new_w - width, tf.float32))) * float(u[2]))
  image = tf.compat.v1.image.resize(image, [new_h, new_w], method=method, align_corners=True)
  image = image[offset_y:offset_y + height, offset_x:offset_x + width]
  image = tf.image.pad_to_bounding_box(image, 0, 0, height, width)
  if u is not None and u[4] < prob:
    f = 1 - 0.32 + 0.64 * u[6:9]
    mean = tf.reduce_mean(image, [0, 1], keepdims=True)
    image = tf.clip_by_value((image - mean) * f + mean, 0.0, 1.0)
  return image.numpy() * 255


def _photo(h: int, w: int, seed: int) -> bytes:
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w]
  image = 128 + 90 * np.sin(x[..., None] / rng.uniform(3, 9, 3) + y[..., None] / rng.uniform(4, 12, 3))
  return tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=95).numpy()


def test_frames_match_the_original_recipe():
  """All 4 resize methods, with and without contrast, on frames of several shapes (one needs the 64 px floor)."""
  jpegs = [_photo(48, 80, 0), _photo(120, 70, 1), _photo(30, 200, 2), _photo(64, 96, 3)] * 2
  rng = np.random.default_rng(0)
  u = rng.uniform(size=(8, frames_lib.FRAME_UNIFORMS)).astype(np.float32)
  u[:, 3] = (np.arange(8) % 4 + 0.5) / 4  # every method
  u[:, 4] = np.repeat([0.1, 0.9], 4)  # contrast on the first four only (augment_prob 0.8)
  data = _config().data
  ours = frames_lib.decode_frames(tf.constant(jpegs), tf.constant(u), data, (64, 96), 'original').numpy()
  for i, jpeg in enumerate(jpegs):
    np.testing.assert_allclose(ours[i], _original_frame(jpeg, u[i]), atol=1.0, err_msg=f'frame {i}')
  fit = frames_lib.decode_frames(tf.constant(jpegs[:4]), None, data, (64, 96), 'original').numpy()
  for i, jpeg in enumerate(jpegs[:4]):
    np.testing.assert_allclose(fit[i], _original_frame(jpeg, None), atol=1.0, err_msg=f'eval frame {i}')


def test_small_outputs_crop_most_of_the_frame():
  """Below 64 px the original's 64 px floor would scale a 64x96 frame to 64x96 and crop a quarter of it for a
  32x48 output; the floor is capped at the output, so the crop keeps at least 1 / random_scale_max of each side."""
  shapes = tf.constant([[64, 96], [360, 640], [30, 200]], tf.int32)
  for scale_u, expected in ((0.0, [[36, 54], [32, 56], [32, 213]]), (1.0, [[48, 72], [40, 72], [32, 213]])):
    u = tf.constant([[scale_u, 0.5, 0.5, 0.0]] * 3, tf.float32)
    g = frames_lib.random_geometry(shapes, u, (32, 48), (1.125, 1.5))
    np.testing.assert_array_equal(g.size.numpy(), expected)  # short sides >= 32: the floor, capped
    np.testing.assert_array_equal(g.crop.numpy(), [[32, 48]] * 3)
  # At and above 64 px the original's floor is unchanged: a 30x200 frame still scales to a 64 px short side.
  g = frames_lib.random_geometry(shapes, tf.constant([[0.0, 0.5, 0.5, 0.0]] * 3, tf.float32), (64, 96), (1.125, 1.5))
  np.testing.assert_array_equal(g.size.numpy(), [[72, 108], [64, 113], [64, 426]])


def test_augment_affine_modes():
  u = tf.constant(np.random.default_rng(0).uniform(size=(1000, 5)), tf.float32)
  a, c = (x.numpy() for x in frames_lib.augment_affine(u, 0.8, 'original'))
  applied = u.numpy()[:, 0] < 0.8
  assert np.all(a[~applied] == 1) and np.all(c[~applied] == 0)
  assert np.all((0.68 <= a[applied]) & (a[applied] <= 1.32))
  np.testing.assert_allclose(c[applied], 1 - a[applied])  # the released code: always contrast
  a, c = (x.numpy() for x in frames_lib.augment_affine(u, 0.8, 'intended'))
  brightness = applied & np.all(c == 0, axis=1)
  assert 0.3 < brightness.sum() / applied.sum() < 0.7
  np.testing.assert_allclose(c[applied & ~brightness], 1 - a[applied & ~brightness])
