"""Per-segment MERLOT features of whole videos, with the preprocessing of the pretraining corpus.

A video and its transcript (X.mp4 beside X.vtt / X.en.vtt / X.srt / X.json, see preprocess/framed_segments.py)
become segments of at most segment_length tokens (START + the transcript's tokens) with the frame at each
segment's middle time, resized and padded to the model's image size as at evaluation time. The model sees
num_segments segments at a time: chunks 0..N-1, N..2N-1, ...; the last chunk is the video's final N
segments (overlapping the one before, whose results are kept), so every chunk is real video. A video with
fewer than N segments is padded with black frames and all-PAD segments; vision and the language-only pass
never see the padding (one frame at a time; PAD is masked), the joint states of the last group do.

  model, config = merlot_jax.load_pretrained(CKPT)
  features = extract_features(model, config, load_tokenizer(SPM), 'clip.mp4')  # transcript beside it
  features.frame_projection @ features.transcript_projection.T   # [S, S] frame-transcript similarities
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping

import chex
import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from merlot_jax.data.frames import decode_frames
from merlot_jax.data.tokenizer import Tokenizer
from merlot_jax.extras import import_extra
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.preprocess.framed_segments import VideoInput, find_videos, process_video
from merlot_jax.special_tokens import PAD, START

tf = import_extra('tensorflow', 'data')


class VideoSkipped(Exception):
  """The video cannot be used; `reason` is one of preprocess.framed_segments.SKIP_REASONS."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f'{reason}: {detail}')
    self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class SegmentInputs:
  """A video's S segments as model inputs, in time order."""
  video: str  # the video's name (relative to the videos root) or path
  times: np.ndarray  # float32 [S]: seconds, each segment's middle (where its frame was taken)
  texts: tuple[str, ...]  # each segment's transcript text
  images: np.ndarray  # uint8 [S, H, W, 3]
  input_ids: np.ndarray  # int32 [S, segment_length]: START, tokens, PAD


@dataclasses.dataclass(frozen=True)
class VideoFeatures:
  """Per-segment features of a video with S segments (float32 arrays)."""
  video: str
  times: np.ndarray  # [S] seconds
  texts: tuple[str, ...]
  input_ids: np.ndarray  # int32 [S, segment_length]
  frame_embedding: np.ndarray  # [S, hidden]: second CLS state of the frame's ViT
  transcript_embedding: np.ndarray  # [S, hidden]: language-only state of the segment's START token
  frame_projection: np.ndarray  # [S, contrastive]: L2-normalised, comparable with transcript_projection
  transcript_projection: np.ndarray  # [S, contrastive]
  joint_visual: np.ndarray  # [S, tokens_per_frame, hidden]: joint encoder states of the frame's tokens
  joint_text: np.ndarray  # [S, segment_length, hidden]: joint encoder states of the segment's tokens

  def save(self, path: str | os.PathLike) -> None:
    """One .npz with every field (texts as a unicode array; no pickle needed to read it)."""
    arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    arrays.update(video=np.asarray(self.video), texts=np.asarray(self.texts, dtype=str))
    with epath.Path(path).open('wb') as file:
      np.savez(file, **arrays)

  @classmethod
  def load(cls, path: str | os.PathLike) -> VideoFeatures:
    with epath.Path(path).open('rb') as file, np.load(file) as f:
      values = {k: f[k] for k in f.files}
    return cls(**{**values, 'video': str(values['video']), 'texts': tuple(str(t) for t in values['texts'])})


_ARRAY_FIELDS = ('frame_embedding', 'transcript_embedding', 'frame_projection', 'transcript_projection',
                 'joint_visual', 'joint_text')


def video_input(path: str | os.PathLike) -> VideoInput:
  """A video file with the transcript beside it (the same lookup as the corpus preprocessing)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: video file not found')
  found = [v for v in find_videos(path.parent) if pathlib.Path(v.video) == path]
  if not found:
    raise ValueError(f'{path}: not a video file (expected .mp4, .mkv or .webm)')
  return dataclasses.replace(found[0], name=str(path))


def segment_inputs(video: VideoInput, tokenizer: Tokenizer, config: ml_collections.ConfigDict) -> SegmentInputs:
  """The video's segments, frames and token ids; raises VideoSkipped if it cannot be used."""
  m = config.model
  if tokenizer.vocab_size > m.vocab_size:
    raise ValueError(f'tokenizer {tokenizer.name} has {tokenizer.vocab_size} ids but the model\'s '
                     f'config.model.vocab_size is {m.vocab_size}: not the tokenizer the model was trained with')
  result = process_video(video, tokenizer, segment_tokens=m.segment_length)
  if result.skip_reason is not None:
    raise VideoSkipped(result.skip_reason, result.detail)
  rows = [[START, *s.clean_tokens] for s in result.segments]
  ids = np.array([r + [PAD] * (m.segment_length - len(r)) for r in rows], np.int32)
  images = _decoder(config)(tf.constant([s.jpeg for s in result.segments])).numpy()
  return SegmentInputs(video.name, np.array([s.time for s in result.segments], np.float32),
                       tuple(tokenizer.decode(s.clean_tokens) for s in result.segments), images, ids)


def _decoder(config: ml_collections.ConfigDict):
  """JPEGs -> uint8 [n, H, W, 3] at the model's image size, deterministic (no augmentation)."""
  size, data = tuple(config.model.image_size), config.data
  return tf.function(lambda jpegs: decode_frames(jpegs, None, data, size, data.augment_mode),
                     input_signature=[tf.TensorSpec([None], tf.string)])


def chunk_starts(num: int, size: int) -> list[int]:
  """First segment of each chunk of `size`: 0, size, ...; the last one ends at `num` (overlapping) if num >= size."""
  starts = list(range(0, num, size))
  if num >= size:
    starts[-1] = num - size
  return starts


@nnx.jit
def _forward(model: MerlotModel, images: jax.Array, input_ids: jax.Array) -> dict[str, jax.Array]:
  """The per-segment outputs of `model(images, input_ids)`, float32, with a leading [batch, N]."""
  out = model(images, input_ids)
  n, t = model.config.segments_per_group, model.config.segment_length
  per_group = lambda x, c: einops.rearrange(x, 'g (n c) d -> g n c d', n=n, c=c)
  joint_visual = per_group(out.joint.visual, model.sizes.tokens_per_frame)
  joint_text = per_group(out.joint.text, t)
  b = input_ids.shape[0]
  arrays = {'frame_embedding': out.frame_embedding, 'transcript_embedding': out.transcript_embedding,
            'frame_projection': out.frame_projection, 'transcript_projection': out.transcript_projection,
            'joint_visual': joint_visual.reshape(b, -1, *joint_visual.shape[2:]),
            'joint_text': joint_text.reshape(b, -1, *joint_text.shape[2:])}
  return {k: v.astype(jnp.float32) for k, v in arrays.items()}


def embed(model: MerlotModel, inputs: SegmentInputs, batch_size: int = 1) -> VideoFeatures:
  """Runs `model` over every segment of `inputs`, `batch_size` chunks of num_segments at a time."""
  m = model.config
  num, size = len(inputs.times), m.num_segments
  chex.assert_shape(inputs.images, (num, *m.image_size, 3))
  chex.assert_shape(inputs.input_ids, (num, m.segment_length))
  pad = max(size - num, 0)
  images = np.concatenate([inputs.images, np.zeros((pad, *inputs.images.shape[1:]), np.uint8)])
  ids = np.concatenate([inputs.input_ids, np.full((pad, m.segment_length), PAD, np.int32)])
  starts = chunk_starts(len(ids), size)
  chunks = []
  for i in range(0, len(starts), batch_size):
    batch = starts[i:i + batch_size]
    index = np.array(batch + [batch[-1]] * (batch_size - len(batch)))[:, None] + np.arange(size)  # full batches
    out = _forward(model, jnp.asarray(images[index]), jnp.asarray(ids[index]))
    chunks += [{k: np.asarray(v[j]) for k, v in out.items()} for j in range(len(batch))]
  outputs = {}
  for k in _ARRAY_FIELDS:
    full = np.zeros((len(ids), *chunks[0][k].shape[1:]), np.float32)
    filled = 0
    for start, chunk in zip(starts, chunks, strict=True):  # an overlapping last chunk keeps the earlier results
      full[filled:start + size] = chunk[k][filled - start:]
      filled = start + size
    outputs[k] = full[:num]
  return VideoFeatures(inputs.video, inputs.times, inputs.texts, inputs.input_ids, **outputs)


def extract_features(model: MerlotModel, config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                     video: VideoInput | str | os.PathLike, batch_size: int = 1) -> VideoFeatures:
  """Features of every segment of a video (a VideoInput, or a path with its transcript beside it).

  config: the model's full config (load_pretrained returns it); model and frame sizes come from it.
  """
  if not isinstance(video, VideoInput):
    video = video_input(video)
  return embed(model, segment_inputs(video, tokenizer, config), batch_size)


def extract_directory(model: MerlotModel, config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                      videos: str | os.PathLike, out: str | os.PathLike, *, batch_size: int = 1,
                      info: Mapping[str, str] | None = None) -> dict:
  """OUT/<name>.npz for every video under `videos` (see VideoFeatures.save) and OUT/index.json; returns the index.

  Videos that cannot be used are skipped and counted by reason. `info` goes into the index as it is.
  """
  out = epath.Path(out)
  index = {**(info or {}), 'videos': [], 'skipped': {}, 'skipped_videos': []}
  for video in find_videos(videos):
    try:
      features = extract_features(model, config, tokenizer, video, batch_size)
    except VideoSkipped as e:
      index['skipped'][e.reason] = index['skipped'].get(e.reason, 0) + 1
      index['skipped_videos'].append({'video': video.name, 'reason': e.reason, 'detail': e.detail})
      continue
    path = out / pathlib.PurePath(video.name).with_suffix('.npz')
    path.parent.mkdir(parents=True, exist_ok=True)
    features.save(path)
    index['videos'].append({'video': video.name, 'features': path.relative_to(out).as_posix(),
                            'num_segments': len(features.times)})
  out.mkdir(parents=True, exist_ok=True)
  (out / 'index.json').write_text(json.dumps(index, indent=1) + '\n')
  return index
