"""Multiple-choice video and image QA (VCR, TVQA) from the releases as unpacked: problems and model inputs.

`load_problems(task, data_dir, split)` prepares the task's TFDS builder once over the release root (its
`manual_dir`; layouts and the original's recipe in vcr.py and tvqa.py) and yields its `Problem`s. A task name
may select a builder config: 'vcr' (= 'vcr/segm') or 'vcr/bbox', 'tvqa' (= 'tvqa/frames_6') or 'tvqa/frames_<n>'.
Questions skipped for broken media are counted per reason (`skip_counts`) and logged with each read.

`mc_batches` turns problems into model inputs (see finetune.py for the model side):
  images   uint8 [b, N, H, W, 3]: the problem's frames (TVQA: N evenly spaced frames; VCR: N = 1)
  input_ids int32 [b, K, N, T]: per option, segment 0 = START + prompt + context + option (+ END for VCR; the
           context cut first when too long), segments 1.. = START + the next T - 1 subtitle tokens (0-padded)
  label int32 [b] (-1: unlabelled test), head int32 [b], weight float32 [b] (0 on padding rows),
  example_id str [b]
Training batches (`training_batches`) draw a random scale and crop per frame as the original's VCR finetuning
(resize_and_pad with config.data.random_scale_min/max, bilinear) and colour augmentation with
config.data.augment_prob; evaluation scales to fit.
"""

from __future__ import annotations

import itertools
import logging
import pathlib
from collections.abc import Callable, Iterable, Iterator

import ml_collections
import numpy as np

from merlot_jax.data.frames import FRAME_UNIFORMS, decode_frames
from merlot_jax.data.host_batches import StepIndexed
from merlot_jax.data.tokenizer import Tokenizer
from merlot_jax.extras import import_extra
from merlot_jax.special_tokens import END, PAD, START
from merlot_jax.tasks import tvqa, vcr
from merlot_jax.tasks.release import Problem, Release, ReleaseBuilder, frame_choice

tf = import_extra('tensorflow', 'data')
tfds = import_extra('tensorflow_datasets', 'data')

log = logging.getLogger(__name__)

__all__ = ['Problem', 'frame_choice', 'load_problems', 'mc_batches', 'option_ids', 'skip_counts',
           'training_batches']

RELEASES: dict[str, Release] = {'vcr': vcr.RELEASE, 'tvqa': tvqa.RELEASE}
_RESIZE_METHOD = 3  # column of random_geometry's resize-method uniform (0: bilinear, as the original's VCR)


def _prepared(task: str, manual_dir: str | pathlib.Path, data_dir: str | None) -> tuple[ReleaseBuilder, Release]:
  """The task's builder, prepared from the release root `manual_dir` (a no-op once done)."""
  name, _, config = task.partition('/')
  if name not in RELEASES:
    raise ValueError(f'task {task!r}: must be one of {sorted(RELEASES)}, optionally with /<builder config>')
  release = RELEASES[name]
  builder = release.builder(data_dir=data_dir, config=release.builder.named_config(config or None))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder, release


def skip_counts(task: str, manual_dir: str | pathlib.Path, *, data_dir: str | None = None) -> dict[str, dict]:
  """Per split: {'questions', 'skipped': {reason: n}, 'fallbacks': {reason: n}} of the prepared release."""
  builder, _ = _prepared(task, manual_dir, data_dir)
  return {split: dict(counts) for split, counts in builder.info.metadata.items()}


def load_problems(task: str, manual_dir: str | pathlib.Path, split: str, *, data_dir: str | None = None,
                  shuffle_seed: int | None = None, shuffle_buffer: int = 1024) -> Iterator[Problem]:
  """Prepares the task's TFDS dataset from the release root `manual_dir` (once) and yields the problems
  of `split`, shuffled through a buffer when `shuffle_seed` is given."""
  builder, release = _prepared(task, manual_dir, data_dir)
  if split not in builder.info.splits:
    raise ValueError(f'{builder.name} has splits {list(builder.info.splits)}, not {split!r} (is '
                     f'{manual_dir}/{builder.SPLIT_FILES.get(split, "...")} there?)')
  counts = builder.info.metadata.get(split, {})
  if counts.get('skipped') or counts.get('fallbacks'):
    log.warning('%s %s: of %s questions, skipped %s; fallbacks %s', builder.name, split,
                    counts.get('questions'), counts.get('skipped'), counts.get('fallbacks'))
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                          decoders={k: tfds.decode.SkipDecoding() for k in release.jpeg_features})
  if shuffle_seed is not None:
    ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed)
  for example in ds.as_numpy_iterator():
    yield from release.problems(example)


# --- model inputs --------------------------------------------------------------------------------


def option_ids(tokenizer: Tokenizer, context: str, option: str, subtitles: str, num_segments: int,
               segment_length: int, *, prompt: str = '', end: bool = False) -> np.ndarray:
  """int32 [num_segments, segment_length] for one option (layout in the module docstring)."""
  ctx = (tokenizer.encode(prompt) if prompt else []) + tokenizer.encode(context)
  tail = tokenizer.encode(option)[:segment_length - 1 - end] + [END] * end
  first = [START] + ctx[:segment_length - 1 - len(tail)] + tail
  sub = tokenizer.encode(subtitles) if num_segments > 1 else []
  rows = [first] + [[START] + sub[i * (segment_length - 1):(i + 1) * (segment_length - 1)]
                    for i in range(num_segments - 1)]
  return np.array([r + [PAD] * (segment_length - len(r)) for r in rows], np.int32)


def frame_uniforms(seed: int, index: int, num_frames: int) -> np.ndarray:
  """float32 [num_frames, FRAME_UNIFORMS]: the random draws of problem `index` of a training stream."""
  u = np.random.default_rng([seed, index]).random((num_frames, FRAME_UNIFORMS), dtype=np.float32)
  u[:, _RESIZE_METHOD] = 0.0
  return u


def mc_batches(problems: Iterable[Problem], config: ml_collections.ConfigDict, tokenizer: Tokenizer,
               batch_size: int, *, drop_remainder: bool = False, augment_seed: int | None = None,
               first_index: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Batches of model inputs (module docstring); the last one padded with weight-0 copies unless dropped.
  augment_seed: random frame geometry (and colour) per problem, keyed by (seed, first_index + its position)
  so that a resumed stream draws the same; None: frames scaled to fit."""
  m, k = config.model, config.finetune.num_options
  size, data = tuple(m.image_size), config.data
  jpegs_spec = tf.TensorSpec([None], tf.string)
  fit = tf.function(lambda j: decode_frames(j, None, data, size, data.augment_mode), input_signature=[jpegs_spec])
  augment = tf.function(lambda j, u: decode_frames(j, u, data, size, data.augment_mode),
                        input_signature=[jpegs_spec, tf.TensorSpec([None, FRAME_UNIFORMS], tf.float32)])
  rows = []

  def batch() -> dict[str, np.ndarray]:
    valid = len(rows)
    rows.extend([{**rows[-1], 'weight': np.float32(0)}] * (batch_size - valid))
    out = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    rows.clear()
    return out

  for index, p in enumerate(problems, first_index):
    if len(p.options) != k:
      raise ValueError(f'problem {p.example_id} has {len(p.options)} options; config.finetune.num_options = {k}')
    jpegs = tf.constant([p.jpegs[i] for i in frame_choice(len(p.jpegs), m.num_segments)])
    images = fit(jpegs) if augment_seed is None else augment(jpegs, frame_uniforms(augment_seed, index,
                                                                                     m.num_segments))
    ids = [option_ids(tokenizer, p.context, o, p.subtitles, m.num_segments, m.segment_length, prompt=p.prompt,
                      end=p.end) for o in p.options]
    rows.append({'images': images.numpy(), 'input_ids': np.stack(ids), 'label': np.int32(p.label),
                 'head': np.int32(p.head), 'weight': np.float32(1), 'example_id': np.asarray(p.example_id)})
    if len(rows) == batch_size:
      yield batch()
  if rows and not drop_remainder:
    yield batch()


def training_batches(load: Callable[[int], Iterable[Problem]], config: ml_collections.ConfigDict,
                     tokenizer: Tokenizer, start_step: int) -> StepIndexed:
  """Endless full batches of config.train.global_batch_size, epoch e reading `load(seed + e)`, frames
  augmented; resuming at `start_step` skips the problems already seen and draws as the first run did."""
  b, seed = config.train.global_batch_size, config.data.seed
  epochs = (load(seed + e) for e in itertools.count())
  problems = itertools.islice(itertools.chain.from_iterable(epochs), start_step * b, None)
  return StepIndexed(mc_batches(problems, config, tokenizer, b, drop_remainder=True, augment_seed=seed,
                                first_index=start_step * b))
