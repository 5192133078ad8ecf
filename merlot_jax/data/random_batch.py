"""Random pretraining batches of the task's batch spec, with the pipeline's structure (no corpus, no tf.data).

For benchmarks, ahead-of-time compiles and tests: START at each segment start, a 0-padded tail, two
videos per example, and image_index 0..n-1 per group with every other group shuffled (offset + a
permutation), so every objective has work to do.
"""

from __future__ import annotations

import itertools

import ml_collections
import numpy as np

from merlot_jax.data import batch_spec
from merlot_jax.data.host_batches import StepIndexed
from merlot_jax.special_tokens import NUM_SPECIAL, START


def random_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int) -> dict[str, np.ndarray]:
  m, o = config.model, config.objectives
  rng = np.random.default_rng(seed)
  n_seg, t, n = m.num_segments, m.segment_length, m.segments_per_group
  ids = rng.integers(NUM_SPECIAL, m.vocab_size, (batch_size, n_seg, t), dtype=np.int32)
  ids[:, :, 0] = START
  lengths = rng.integers(2, t + 1, (batch_size, n_seg))
  ids[np.arange(t)[None, None, :] >= lengths[..., None]] = 0
  video = (np.arange(n_seg) >= n_seg // 2).astype(np.int32)
  index = np.tile(np.arange(n, dtype=np.int32), (batch_size, n_seg // n, 1))
  index[:, 1::2] = o.shuffled_index_offset + rng.permuted(index[:, 1::2], axis=-1)
  images_shape, images_dtype = batch_spec.shapes(batch_spec.PRETRAINING, config, batch_size)['images']
  batch = {'images': rng.integers(0, 256, images_shape, dtype=images_dtype), 'input_ids': ids,
           'video_src_ids': np.tile(video, (batch_size, 1)), 'image_index': index.reshape(batch_size, n_seg)}
  batch_spec.check(batch_spec.PRETRAINING, batch, config, batch_size, 'random_batch')
  return batch


def random_batches(config: ml_collections.ConfigDict, batch_size: int, *, start_step: int = 0,
                   seed: int = 0) -> StepIndexed:
  """Endless; batch k is a function of (seed, k) only, so a resumed run sees the batches it would have seen."""
  return StepIndexed(random_batch(config, batch_size, seed * 1_000_003 + step)
                     for step in itertools.count(start_step))
