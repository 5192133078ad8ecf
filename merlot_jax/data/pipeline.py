"""tf.data input pipeline for MERLOT pretraining: corpus records -> per-host numpy batches.

Follows the original's model/dataloader.py (input_fn_builder, _dataset_parser, _process_example):

- files are sharded over hosts (`files[process_index::process_count]` of the sorted list); at train time
  each epoch visits the host's files in a new order, records are interleaved from up to 16 files and mixed
  in a `config.data.shuffle_buffer` buffer;
- frames: JPEG decode, the original's `resize_and_pad` and colour jitter at train time, a plain fit at eval
  time (frames.py);
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

import json
import os
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np

from merlot_jax.data import batch_spec
from merlot_jax.data.batch_spec import Field
from merlot_jax.data.frames import FRAME_UNIFORMS, decode_frames
from merlot_jax.data.record_format import FEATURES, MANIFEST
from merlot_jax.extras import import_extra
from merlot_jax.special_tokens import NEXT_CAPTION_START, START

tf = import_extra('tensorflow', 'data')

# The pretraining task's model inputs (batch_spec.PRETRAINING) plus what only the host sees.
BATCH_SPEC: dict[str, Field] = {
    **batch_spec.PRETRAINING,
    'skipped': Field(('b',), np.int32,
                     'corrupt records dropped just before this example in the host stream; '
                     'the sum over the batch is the batch\'s count'),
}

_RECORD_FRAMING_BYTES = 16  # length (8) + length CRC (4) + data CRC (4) around each TFRecord
_CYCLE_LENGTH = 16  # shards read at once per host


def batch_shapes(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """BATCH_SPEC with the symbols filled in: name -> (shape, dtype)."""
  return batch_spec.shapes(BATCH_SPEC, config, batch_size)


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


def check_corpus(config: ml_collections.ConfigDict, pattern: str, process_count: int) -> None:
  """What `make_dataset` would stop at, checked before a run writes anything: the pattern matches at least
  one shard per host, the records hold config.model.num_segments frames, and the corpus's tokenizer (its
  manifest.json beside the shards, where there is one) has no more ids than config.model.vocab_size."""
  files = _host_files(pattern, 0, process_count)
  _check_layout(files, config)
  for folder in sorted({os.path.dirname(f) for f in files}):
    manifest = os.path.join(folder, MANIFEST)
    if not tf.io.gfile.exists(manifest):
      continue
    with tf.io.gfile.GFile(manifest) as f:
      settings = json.load(f)
    if settings.get('vocab_size', 0) > config.model.vocab_size:
      raise ValueError(f"{manifest}: the corpus was tokenized with {settings.get('tokenizer')}, which has "
                       f"{settings['vocab_size']} ids, but config.model.vocab_size = {config.model.vocab_size}: "
                       f"set --config.model.vocab_size={settings['vocab_size']} (or more), or preprocess the "
                       "videos with the model's tokenizer")


def check_token_ids(batch: dict[str, np.ndarray], config: ml_collections.ConfigDict, source: str) -> None:
  """Raises ValueError naming the largest id when a batch holds ids without an embedding row (they would
  make every step non-finite)."""
  top = int(batch['input_ids'].max())
  if top >= config.model.vocab_size:
    raise ValueError(f'{source}: token id {top} >= config.model.vocab_size = {config.model.vocab_size}: the '
                     'corpus was tokenized with a larger vocabulary than the model has; set '
                     f'--config.model.vocab_size to the tokenizer\'s vocab_size (at least {top + 1})')


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
  """Numpy batches (BATCH_SPEC) of one host (a host_batches.HostBatches); `position` is what a checkpoint
  saves to resume exactly.

  step: batches returned so far (counting from start_step); position: records of the host stream
  consumed through the last batch; skipped: corrupt records dropped since this iterator started.
  """

  def __init__(self, dataset: tf.data.Dataset, start_step: int, start_position: int,
               check: Callable[[dict[str, np.ndarray]], None]):
    self.dataset = dataset
    self.step = start_step
    self.position = start_position
    self.skipped = 0
    self._numpy = dataset.as_numpy_iterator()
    self._check = check  # of the first batch against BATCH_SPEC (the rest come from the same graph)

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._numpy)
    position = batch.pop('position')
    previous = np.concatenate([[self.position - 1], position[:-1]])
    batch['skipped'] = (position - previous - 1).astype(np.int32)
    self.position = int(position[-1]) + 1
    self.skipped += int(batch['skipped'].sum())
    if self._check is not None:
      self._check(batch)
      self._check = None
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
  def check(batch: dict[str, np.ndarray]) -> None:
    batch_spec.check(BATCH_SPEC, batch, config, batch_size, f'the pipeline over {pattern}')
    check_token_ids(batch, config, f'the pipeline over {pattern}')

  return DataIterator(ds, start_step, start_position, check)


def pipeline_options() -> tf.data.Options:
  """Deterministic order, one thread per op (the parallelism comes from parallel map and interleave)."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return options
