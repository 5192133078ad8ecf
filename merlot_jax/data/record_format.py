"""The corpus record: one tf.train.Example per training example of N consecutive transcript segments.

  feature           type        length   meaning
  frames            bytes_list  N        JPEG of the frame at each segment's middle time
  tokens_raw        int64_list  sum      raw (ASR) token ids of all segments concatenated, no start token
  tokens_raw_len    int64_list  N        number of tokens of each segment in tokens_raw
  tokens_clean      int64_list  sum      denoised token ids likewise (= raw when there is no denoised text)
  tokens_clean_len  int64_list  N
  video_src_index   int64_list  N        0-based index of the segment's video within the example (0,0,1,1,...)
  is_end_of_video   int64_list  N        1 on the last segment of a video
  times             float_list  N        segment middle times, seconds
  video_id          bytes_list  N        id of the source video

Segments are consecutive across videos: an example may end in the middle of a video and the next example
continues it. `FEATURES` parses a record with `tf.io.parse_single_example`; there the token lists come out as
RaggedTensors [N, None] (split by their *_len features) and everything else as dense [N] tensors.
"""

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from merlot_jax.extras import import_extra

tf = import_extra('tensorflow', 'data')


MANIFEST = 'manifest.json'  # beside the shards: the corpus's settings (tokenizer, vocab_size, ...) and totals
TOKEN_FEATURES = ('tokens_raw', 'tokens_clean')
FEATURES = {
    'frames': tf.io.RaggedFeature(tf.string),
    **{k: tf.io.RaggedFeature(tf.int64, value_key=k, partitions=[tf.io.RaggedFeature.RowLengths(f'{k}_len')])
       for k in TOKEN_FEATURES},
    'video_src_index': tf.io.RaggedFeature(tf.int64),
    'is_end_of_video': tf.io.RaggedFeature(tf.int64),
    'times': tf.io.RaggedFeature(tf.float32),
    'video_id': tf.io.RaggedFeature(tf.string),
}


def _ints(values: Iterable[int]) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _bytes(values: Iterable[bytes]) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def make_example(frames: Sequence[bytes], tokens_raw: Sequence[Sequence[int]],
                 tokens_clean: Sequence[Sequence[int]], times: Sequence[float], video_ids: Sequence[str],
                 is_end_of_video: Sequence[bool]) -> bytes:
  """The serialized record of N segments; `video_src_index` counts the end-of-video marks before each."""
  n = len(frames)
  if not all(len(x) == n for x in (tokens_raw, tokens_clean, times, video_ids, is_end_of_video)):
    raise ValueError('make_example: frames, tokens_raw, tokens_clean, times, video_ids and is_end_of_video '
                     f'must all have one entry per segment; got lengths {len(frames)}, {len(tokens_raw)}, '
                     f'{len(tokens_clean)}, {len(times)}, {len(video_ids)}, {len(is_end_of_video)}')
  ends = [int(bool(e)) for e in is_end_of_video]
  feature = {
      'frames': _bytes(frames),
      'tokens_raw': _ints(t for seg in tokens_raw for t in seg),
      'tokens_raw_len': _ints(len(seg) for seg in tokens_raw),
      'tokens_clean': _ints(t for seg in tokens_clean for t in seg),
      'tokens_clean_len': _ints(len(seg) for seg in tokens_clean),
      'video_src_index': _ints(np.concatenate([[0], np.cumsum(ends[:-1])]).astype(int)),
      'is_end_of_video': _ints(ends),
      'times': tf.train.Feature(float_list=tf.train.FloatList(value=list(times))),
      'video_id': _bytes(v.encode() for v in video_ids),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def parse_example(serialized: bytes) -> dict[str, list]:
  """A record as Python lists (no TF ops); token features become one list per segment."""
  feature = tf.train.Example.FromString(serialized).features.feature
  out = {}
  for key, value in feature.items():
    out[key] = list(getattr(value, value.WhichOneof('kind')).value)
  for key in TOKEN_FEATURES:
    bounds = np.cumsum([0] + out[f'{key}_len'])
    out[key] = [out[key][a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
  out['video_id'] = [v.decode() for v in out['video_id']]
  return out


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
  """Yields a hidden temporary path beside `path` that is renamed to `path` when the block succeeds.

  A crash never leaves a partial file under the final name; tf.io.gfile makes this work on gs:// too.
  """
  folder, name = os.path.split(path)
  tmp = os.path.join(folder, f'.tmp-{name}-{uuid.uuid4().hex}')
  try:
    yield tmp
    tf.io.gfile.rename(tmp, path, overwrite=True)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)


def write_tfrecord(path: str, records: Iterable[bytes]) -> None:
  """Writes a TFRecord file atomically (see `atomic_output`)."""
  with atomic_output(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
    for record in records:
      writer.write(record)
