"""tf.data input pipeline for MERLOT pretraining: corpus records -> per-host numpy batches.

Follows the original's model/dataloader.py (input_fn_builder, _dataset_parser, _process_example):

- files are sharded over hosts (`files[process_index::process_count]` of the sorted list); at train time
  each epoch visits the host's files in a new order, records are interleaved from up to 16 files and mixed
  in a `config.data.shuffle_buffer` buffer;
- frames: JPEG decode, `resize_and_pad` (train: random scale in [random_scale_min, random_scale_max],
  random crop offset and one of 4 resize methods with align_corners; eval: scale to fit, bilinear, no
  crop), padding at the bottom/right, then with probability `augment_prob` a contrast change (see
  `AUGMENT_MODES`), rounded to uint8;
- text: one coin per example picks the clean (START) or raw (NEXT_CAPTION_START) transcript; the start
  token is prepended and each segment 0-padded/truncated to `segment_length`;
- `video_src_ids` is the cumulative end-of-video count (the last segment always ends a video);
- train only: whole videos are reordered within the example (`shuffle_segments`: segments move with
  their frames, the order inside a video is kept) and `image_index` marks shuffled frames per group of
  `segments_per_group` (see `sample_image_index`; the pixels stay in place, only the indices change).

Determinism and resuming. Every random draw is a stateless op keyed by (seed, host, position), where
`position` is the element's index in the host's record stream (after the shuffle buffer). File orders
come from stateless shuffles keyed by (seed, epoch) and the buffer shuffle is seeded, so the stream is a
fixed sequence for a seed; resuming skips `start_position` raw records of it (`.skip` before any parsing
or decoding) and continues with the same keys, giving exactly the batches an uninterrupted run would
have produced. Skipped records still have to be read (I/O only, no decoding): with a shuffle buffer,
record k depends on every read before it, and the alternative, checkpointing the tf.data iterator,
saves the buffer's contents (about 1 GB per host at the paper's sizes). With the default
`start_position = start_step * batch_size` resuming is exact as long as no corrupt record was dropped
before that step; the iterator's `position` (save it per host with the checkpoint) is exact always.

Corrupt data. A frame that does not decode, a record that does not parse or has inconsistent lengths,
and an unreadable stretch of a shard (truncated file or bad CRC: TFRecord framing cannot resync, so the
rest of that shard is lost and counts as one skipped record) are dropped with a logged warning and
counted in `batch['skipped']`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from merlot_jax.data.record_format import FEATURES
from merlot_jax.data.tokenizer import NEXT_CAPTION_START, START


@dataclasses.dataclass(frozen=True)
class Field:
  """One batch entry: symbolic shape, numpy dtype, meaning."""

  shape: tuple[str | int, ...]  # b: per-host batch, N: num_segments, L: segment_length, H, W: image_size
  dtype: type
  doc: str


BATCH_SPEC: dict[str, Field] = {
    'images': Field(('b', 'N', 'H', 'W', 3), np.uint8,
                    'RGB frames 0..255 (the model divides by 255), resized and padded at the bottom/right'),
    'input_ids': Field(('b', 'N', 'L'), np.int32,
                       'per segment: START (clean transcript) or NEXT_CAPTION_START (raw), then tokens, '
                       '0-padded or truncated'),
    'video_src_ids': Field(('b', 'N'), np.int32,
                           'source video of each segment: cumulative end-of-video count before segment '
                           'shuffling, so equal ids = same video'),
    'image_index': Field(('b', 'N'), np.int32,
                         'row of the image-index table: position in its group, or shuffled_index_offset + '
                         'a permuted position for frames picked for the temporal-order objective'),
    'skipped': Field(('b',), np.int32,
                     'corrupt records dropped just before this example in the host stream; '
                     'the sum over the batch is the batch\'s count'),
}

# 'original': the released code always applies the contrast transform (its list of branch lambdas
# closes over the loop variable, so 'brightness,contrast' runs contrast twice over). 'intended': brightness
# or contrast with equal probability. Read from config.data.augment_mode (default 'original').
AUGMENT_MODES = ('original', 'intended')
_AUGMENT_STRENGTH = 0.8 * 0.4  # the original's 0.8 * strength: factors in [1 - 0.32, 1 + 0.32]
_RECORD_FRAMING_BYTES = 16  # length (8) + length CRC (4) + data CRC (4) around each TFRecord
_CYCLE_LENGTH = 16  # shards read at once per host


def batch_shapes(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, tuple[tuple[int, ...], type]]:
  """BATCH_SPEC with the symbols filled in: name -> (shape, dtype)."""
  m = config.model
  sizes = {'b': batch_size, 'N': m.num_segments, 'L': m.segment_length, 'H': m.image_size[0],
           'W': m.image_size[1]}
  return {k: (tuple(sizes.get(d, d) for d in f.shape), f.dtype) for k, f in BATCH_SPEC.items()}


# ---------------------------------------------------------------------------------------------------
# Random draws.


def _keys(key: tf.Tensor, num: int) -> list[tf.Tensor]:
  return tf.unstack(tf.random.experimental.stateless_split(key, num))


def sample_image_index(key: tf.Tensor, num_segments: int, group: int, shuffle_prob: float,
                       offset: int) -> tf.Tensor:
  """int32 [num_segments]: image-index rows, as the original's `shuffled_idx_img`.

  Per group of `group` frames, the number of frames to move is 0 with probability 1 - shuffle_prob,
  1 with probability 1e-6 and each of 2..group with shuffle_prob / (group - 1). That many positions,
  chosen at random, get `offset + perm[i]` for one random permutation `perm` of the group; the other
  positions keep `i`.
  """
  num_groups = num_segments // group
  identity = tf.tile(tf.range(group)[None], [num_groups, 1])
  if shuffle_prob < 1e-6:
    return tf.reshape(identity, [-1])
  probs = [1.0 - shuffle_prob, 1e-6] + [shuffle_prob / (group - 1)] * (group - 1)
  k_num, k_pick, k_perm = _keys(key, 3)
  num_moved = tf.random.stateless_categorical(tf.math.log([probs]), num_groups, k_num, dtype=tf.int32)[0]
  picked = tf.argsort(tf.random.stateless_uniform([num_groups, group], k_pick), axis=1) < num_moved[:, None]
  perm = tf.argsort(tf.random.stateless_uniform([num_groups, group], k_perm), axis=1)
  return tf.reshape(tf.where(picked, offset + perm, identity), [-1])


# ---------------------------------------------------------------------------------------------------
# Frames. Everything that does not depend on pixels (crop geometry, augmentation factors) is computed for
# all frames of an example at once: in tf.data each small op costs 10-20 us, a fair part of a frame's work.
# Images stay uint8 until resizing; the augmentation and the rounding are one per-channel affine map on
# an [h, w * 3] view (broadcasting over a last axis of 3 is several times slower in TF).


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Per frame: scaled size, crop offset and crop size (int32 [n, 2], (y, x)), resize method [n]."""
  size: tf.Tensor
  offset: tf.Tensor
  crop: tf.Tensor
  method: tf.Tensor


def _min_scaled_side(out_size: tuple[int, int]) -> float:
  """The floor on the scaled short side: the original's 64 px (it keeps very wide images from shrinking to
  slivers at its 192x320 outputs), capped at the output's short side. Uncapped, an output under 64 px
  would only ever see a crop of part of each frame (a quarter of it at 32x48) in training, while
  evaluation shows the whole frame scaled to fit."""
  return float(min(64, min(out_size)))


def random_geometry(shapes: tf.Tensor, u: tf.Tensor, out_size: tuple[int, int],
                    scale_range: tuple[float, float]) -> Geometry:
  """The original's resize_and_pad(do_random_scale=True, resize_method='random'), for all frames.

  shapes: int32 [n, 2] source sizes; u: float [n, 4] uniforms (scale, offset y, offset x, method).
  Target scale s ~ U(scale_range) of (H, W); image scale = the smaller of the two axis ratios of the
  truncated target size to the source, at least `_min_scaled_side(out_size)` / short side; a random crop
  offset where the scaled image exceeds (H, W); one of 4 resize methods (bilinear, nearest, bicubic, area;
  align_corners).
  """
  hw = tf.cast(shapes, tf.float32)
  s = scale_range[0] + u[:, :1] * (scale_range[1] - scale_range[0])
  ratio = tf.cast(tf.cast(s * list(out_size), tf.int32), tf.float32) / hw
  scale = tf.maximum(tf.reduce_min(ratio, 1), _min_scaled_side(out_size) / tf.reduce_min(hw, 1))
  size = tf.cast(hw * scale[:, None], tf.int32)
  offset = tf.cast(tf.cast(tf.maximum(size - list(out_size), 0), tf.float32) * u[:, 1:3], tf.int32)
  return Geometry(size, offset, tf.minimum(size - offset, list(out_size)), tf.cast(u[:, 3] * 4, tf.int32))


def fit_geometry(shapes: tf.Tensor, out_size: tuple[int, int]) -> Geometry:
  """resize_and_pad without random scale: scale to fit, no crop, bilinear."""
  hw = tf.cast(shapes, tf.float32)
  size = tf.cast(hw * tf.reduce_min(tf.constant(out_size, tf.float32) / hw, 1, keepdims=True), tf.int32)
  return Geometry(size, tf.zeros_like(size), size, tf.zeros_like(size[:, 0]))


def augment_affine(u: tf.Tensor, prob: float, mode: str) -> tuple[tf.Tensor, tf.Tensor]:
  """(a, c) [n, 3] with x * a + mean * c = the original's lightweight_image_augment('brightness,contrast').

  u: [n, 5] uniforms (apply?, which transform, 3 factors). With probability `prob`, per-channel factors
  f ~ U(0.68, 1.32): contrast (x - mean) * f + mean (a = f, c = 1 - f; mean over the padded image), or
  brightness x * f (c = 0; see AUGMENT_MODES); otherwise the identity (a = 1, c = 0).
  """
  do = u[:, :1] < prob
  f = 1 - _AUGMENT_STRENGTH + 2 * _AUGMENT_STRENGTH * u[:, 2:5]
  contrast = do if mode == 'original' else do & (u[:, 1:2] >= 0.5)
  return tf.where(do, f, 1.0), tf.where(contrast, 1 - f, 0.0)


def _resize(image: tf.Tensor, size: tf.Tensor, method: int) -> tf.Tensor:
  """TF1 resize_images(align_corners=True), method in TF1 ResizeMethod order except nearest (gather)."""
  ops = {0: tf.raw_ops.ResizeBilinear, 2: tf.raw_ops.ResizeBicubic, 3: tf.raw_ops.ResizeArea}
  return ops[method](images=image[None], size=size, align_corners=True)[0]


def _nearest_window(image: tf.Tensor, size: tf.Tensor, offset: tf.Tensor, crop: tf.Tensor) -> tf.Tensor:
  """The crop of ResizeNearestNeighbor(align_corners=True) to `size`, by gathers, skipping the rest.

  Same source pixels as the TF kernel: round(y * (in - 1) / (out - 1)) in float32, clamped.
  """
  def index(axis):
    n_in = tf.shape(image)[axis]
    scale = tf.cast(n_in - 1, tf.float32) / tf.cast(size[axis] - 1, tf.float32)
    dst = tf.cast(tf.range(offset[axis], offset[axis] + crop[axis]), tf.float32)
    return tf.minimum(tf.cast(tf.floor(dst * scale + 0.5), tf.int32), n_in - 1)
  return tf.cast(tf.gather(tf.gather(image, index(0)), index(1), axis=1), tf.float32)


def _frame(jpeg: tf.Tensor, size: tf.Tensor, offset: tf.Tensor, crop: tf.Tensor, method: tf.Tensor,
           a: tf.Tensor, c: tf.Tensor, out_size: tuple[int, int], augment: bool) -> tf.Tensor:
  """JPEG -> uint8 [H, W, 3]: the crop of the resized image, augmented, rounded, padded bottom/right."""
  image = tf.io.decode_jpeg(jpeg, channels=3)

  def resized(m):
    full = tf.cast(_resize(image, size, m), tf.float32)
    return tf.slice(full, [offset[0], offset[1], 0], [crop[0], crop[1], 3])
  window = tf.switch_case(method, [lambda: resized(0), lambda: _nearest_window(image, size, offset, crop),
                                   lambda: resized(2), lambda: resized(3)])
  height, width = out_size
  b = tf.reduce_sum(window, [0, 1]) * (c / (height * width)) if augment else c
  b += 0.5  # saturate_cast truncates: this rounds
  flat = tf.reshape(window, [crop[0], crop[1] * 3])
  content = tf.saturate_cast(flat * tf.tile(a, crop[1:]) + tf.tile(b, crop[1:]), tf.uint8)
  fill = tf.saturate_cast(b, tf.uint8)  # the padding after augmentation (0 unless contrast < 1)
  right = tf.broadcast_to(fill, [crop[0], width - crop[1], 3])
  top = tf.concat([tf.reshape(content, [crop[0], crop[1], 3]), right], 1)
  return tf.concat([top, tf.broadcast_to(fill, [height - crop[0], width, 3])], 0)


FRAME_UNIFORMS = 9  # per frame: random_geometry's 4, then augment_affine's 5


def decode_frames(jpegs: tf.Tensor, u: tf.Tensor | None, data: ml_collections.ConfigDict,
                  out_size: tuple[int, int], augment_mode: str) -> tf.Tensor:
  """n JPEGs -> uint8 [n, H, W, 3]; u: [n, FRAME_UNIFORMS] at train time, None: deterministic fit."""
  shapes = tf.map_fn(lambda j: tf.io.extract_jpeg_shape(j)[:2], jpegs, fn_output_signature=tf.int32)
  augment = u is not None and data.augment_prob > 0
  if u is None:
    g = fit_geometry(shapes, out_size)
  else:
    g = random_geometry(shapes, u[:, :4], out_size, (data.random_scale_min, data.random_scale_max))
  if augment:
    a, c = augment_affine(u[:, 4:], data.augment_prob, augment_mode)
  else:
    a = tf.ones([tf.shape(jpegs)[0], 3])
    c = 0 * a
  return tf.map_fn(lambda x: _frame(*x, out_size, augment),
                   (jpegs, g.size, g.offset, g.crop, g.method, a, c),
                   fn_output_signature=tf.TensorSpec([*out_size, 3], tf.uint8))


# ---------------------------------------------------------------------------------------------------
# Records.


# The record fields training reads (the rest, times and video_id, is for inspection).
_PARSED = {k: FEATURES[k] for k in ('frames', 'tokens_raw', 'tokens_clean', 'is_end_of_video')}


def _require(ok: tf.Tensor, problem: str, path: tf.Tensor) -> None:
  """Fails the element (dropped and counted by the caller) with the shard and the problem named."""
  tf.debugging.Assert(ok, [path, problem])


def _parse(path: tf.Tensor, record: tf.Tensor, position: tf.Tensor, key: tf.Tensor,
           config: ml_collections.ConfigDict, train: bool, shuffle_frames: bool) -> dict[str, tf.Tensor]:
  """One serialized example -> unbatched features (fails on corrupt data; the caller drops failures)."""
  m, data, o = config.model, config.data, config.objectives
  n, length = m.num_segments, m.segment_length
  _require(tf.strings.length(record) > 0, 'unreadable TFRecord data (truncated or corrupt shard)', path)
  ex = tf.io.parse_single_example(record, _PARSED)
  for name in ('frames', 'is_end_of_video'):
    _require(tf.equal(tf.size(ex[name]), n), f'{name} does not have num_segments = {n} entries', path)
  for name in ('tokens_raw', 'tokens_clean'):
    _require(tf.equal(ex[name].nrows(), n), f'{name}_len does not have num_segments = {n} entries', path)
  k_clean, k_frames, k_segments, k_index = _keys(key, 4)

  # Text: one coin per example, as the original's sample_bernoulli(clean_asr_prob).
  do_clean = tf.random.stateless_uniform([], k_clean) < data.clean_asr_prob
  def segments(name):
    return tf.cast(ex[name].to_tensor(0, shape=[n, length - 1]), tf.int32)
  tokens = tf.where(do_clean, segments('tokens_clean'), segments('tokens_raw'))
  start = tf.where(do_clean, START, NEXT_CAPTION_START)
  input_ids = tf.concat([tf.fill([n, 1], start), tokens], 1)

  is_end = tf.concat([ex['is_end_of_video'][:-1] != 0, [True]], 0)
  video_src_ids = tf.cumsum(tf.concat([[0], tf.cast(is_end[:-1], tf.int32)], 0))

  uniforms = tf.random.stateless_uniform([n, FRAME_UNIFORMS], k_frames) if train else None
  images = decode_frames(ex['frames'], uniforms, data, tuple(m.image_size), data.augment_mode)

  if train and data.shuffle_segments:
    # The original's shuffle_chunks: a random new rank per video, segments sorted by (rank, position).
    rank = tf.argsort(tf.random.stateless_uniform([n], k_segments))
    order = tf.argsort(tf.gather(rank, video_src_ids) * n + tf.range(n))
    images, input_ids, video_src_ids = (tf.gather(x, order) for x in (images, input_ids, video_src_ids))
  if shuffle_frames:
    image_index = sample_image_index(k_index, n, m.segments_per_group, o.image_shuffle_prob,
                                     o.shuffled_index_offset)
  else:
    image_index = tf.tile(tf.range(m.segments_per_group), [n // m.segments_per_group])
  return {'images': images, 'input_ids': input_ids, 'video_src_ids': video_src_ids,
          'image_index': image_index, 'position': position}


def _read_shard(path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
  """(path, record) of one shard; a read error ends the shard and leaves one empty record behind.

  TFRecordDataset raises DataLossError on a truncated or corrupt record and then ends; ignore_errors
  drops the error, and comparing the bytes read with the file size tells whether the shard was cut.
  """
  records = tf.data.TFRecordDataset(path).ignore_errors().map(lambda r: (r, False))
  tagged = records.concatenate(tf.data.Dataset.from_tensors((tf.constant(b''), True)))

  def count(total, elem):
    record, is_end = elem
    read = total + tf.cast(tf.strings.length(record), tf.int64) + _RECORD_FRAMING_BYTES
    return tf.where(is_end, total, read), (record, is_end, total)

  cut = tagged.scan(tf.constant(0, tf.int64), count)
  kept = cut.filter(lambda record, is_end, total: tf.logical_or(~is_end, total != size))
  return kept.map(lambda record, is_end, total: (path, record))


# ---------------------------------------------------------------------------------------------------
# Entry point.


def _host_files(pattern: str, process_index: int, process_count: int) -> list[str]:
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f'data pattern {pattern!r} matches no files')
  if len(files) < process_count:
    raise ValueError(f'data pattern {pattern!r} matches {len(files)} files, fewer than the '
                     f'{process_count} hosts: every host needs at least one shard')
  return files[process_index::process_count]


def _check_layout(files: list[str], config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the file, when the first readable record does not fit the config."""
  n = config.model.num_segments
  for path in files:
    try:
      record = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
      ex = tf.io.parse_single_example(record, _PARSED) if record is not None else None
    except (tf.errors.OpError, ValueError):
      continue
    if ex is None:
      continue
    got = int(tf.size(ex['frames']))
    if got != n:
      raise ValueError(f'{path}: records have {got} frames per example but config.model.num_segments = '
                       f'{n}; write the corpus with the same num_segments or change the config')
    return


class DataIterator(Iterator[dict[str, np.ndarray]]):
  """Numpy batches (BATCH_SPEC) of one host; `position` is what a checkpoint saves to resume exactly.

  step: batches returned so far (counting from start_step); position: records of the host stream
  consumed through the last batch; skipped: corrupt records dropped since this iterator started.
  """

  def __init__(self, dataset: tf.data.Dataset, start_step: int, start_position: int):
    self.dataset = dataset
    self.step = start_step
    self.position = start_position
    self.skipped = 0
    self._numpy = dataset.as_numpy_iterator()

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._numpy)
    position = batch.pop('position')
    previous = np.concatenate([[self.position - 1], position[:-1]])
    batch['skipped'] = (position - previous - 1).astype(np.int32)
    self.position = int(position[-1]) + 1
    self.skipped += int(batch['skipped'].sum())
    self.step += 1
    return batch


def make_dataset(config: ml_collections.ConfigDict, pattern: str, *, train: bool, seed: int,
                 process_index: int | None = None, process_count: int | None = None, start_step: int = 0,
                 start_position: int | None = None, num_parallel_calls: int | None = None,
                 shuffle_frames: bool | None = None) -> DataIterator:
  """Per-host batches of global_batch_size // process_count examples from the records at `pattern`.

  train: endless, shuffled, augmented; otherwise one pass (shards interleaved in a fixed order),
  deterministic frames, no segment or frame shuffling.
  Hosts default to jax.process_index() / jax.process_count(). Resuming: `start_position` (the saved
  `DataIterator.position`) or else start_step * batch size records are skipped; see the module doc.
  num_parallel_calls: examples decoded at once (default: tf.data autotuning).
  shuffle_frames: sample shuffled image indices for the temporal objective (default: `train`); an
  evaluation of the temporal objective wants them too, deterministic from (seed, position).
  """
  shuffle_frames = train if shuffle_frames is None else shuffle_frames
  if process_index is None or process_count is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  global_batch = config.train.global_batch_size
  if global_batch % process_count:
    raise ValueError(f'config.train.global_batch_size = {global_batch} is not divisible by the '
                     f'{process_count} hosts')
  batch_size = global_batch // process_count
  augment_mode = config.data.augment_mode
  if augment_mode not in AUGMENT_MODES:
    raise ValueError(f'config.data.augment_mode = {augment_mode!r}: must be one of {AUGMENT_MODES}')
  files = _host_files(pattern, process_index, process_count)
  _check_layout(files, config)
  if start_position is None:
    start_position = start_step * batch_size
  parallel = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls

  paths = tf.constant(files)
  sizes = tf.constant([tf.io.gfile.stat(f).length for f in files], tf.int64)
  if train:
    def epoch(e):
      order = tf.random.experimental.stateless_shuffle(tf.range(len(files)), tf.stack([seed, e]))
      return tf.data.Dataset.from_tensor_slices((tf.gather(paths, order), tf.gather(sizes, order)))
    shards = tf.data.Dataset.counter().flat_map(epoch)
  else:
    shards = tf.data.Dataset.from_tensor_slices((paths, sizes))
  ds = shards.interleave(_read_shard, cycle_length=min(len(files), _CYCLE_LENGTH), block_length=1,
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if train:
    ds = ds.shuffle(config.data.shuffle_buffer, seed=seed)
  ds = ds.enumerate().skip(start_position)
  host_key = tf.constant([seed, process_index], tf.int64)

  @tf.autograph.experimental.do_not_convert  # plain TF ops only; skipping autograph saves tracing time
  def parse(position, elem):
    key = tf.random.experimental.stateless_fold_in(host_key, position)
    return _parse(elem[0], elem[1], position, key, config, train, shuffle_frames)

  ds = ds.map(parse, num_parallel_calls=parallel, deterministic=True).ignore_errors(log_warning=True)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(pipeline_options())
  return DataIterator(ds, start_step, start_position)


def pipeline_options() -> tf.data.Options:
  """Deterministic order, one thread per op (the parallelism comes from parallel map and interleave)."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return options
