"""Synthetic pretraining batches for the trainer tests (no corpus, no tf.data)."""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections
import numpy as np

START = 2


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int) -> dict[str, np.ndarray]:
  """Random frames and ids: START at each segment start, a 0-padded tail, 2 videos per example,
  and image_index 0..n-1 per group with every other group shuffled (16 + a permutation)."""
  m, o = config.model, config.objectives
  rng = np.random.default_rng(seed)
  n_seg, t, n = m.num_segments, m.segment_length, m.segments_per_group
  h, w = m.image_size
  ids = rng.integers(100, m.vocab_size, (batch_size, n_seg, t), dtype=np.int32)
  ids[:, :, 0] = START
  lengths = rng.integers(2, t + 1, (batch_size, n_seg))
  ids[np.arange(t)[None, None, :] >= lengths[..., None]] = 0
  video = (np.arange(n_seg) >= n_seg // 2).astype(np.int32)
  index = np.tile(np.arange(n, dtype=np.int32), (batch_size, n_seg // n, 1))
  index[:, 1::2] = o.shuffled_index_offset + rng.permuted(index[:, 1::2], axis=-1)
  return {'images': rng.integers(0, 256, (batch_size, n_seg, h, w, 3), dtype=np.uint8),
          'input_ids': ids, 'video_src_ids': np.tile(video, (batch_size, 1)),
          'image_index': index.reshape(batch_size, n_seg)}


def synthetic_batches(config: ml_collections.ConfigDict, batch_size: int, *, start_step: int = 0,
                      seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Batch k is a function of (seed, k) only, so a resumed run sees the batches it would have seen."""
  step = start_step
  while True:
    yield synthetic_batch(config, batch_size, seed * 1_000_003 + step)
    step += 1


def micro_config(**mesh) -> ml_collections.ConfigDict:
  """configs/tiny.py cut down further for fast compiles: 2 segments of 8 tokens, 32x32 frames, one
  layer per stack, no dropout, a short warmup; mesh axes from `mesh` (default: all devices on fsdp)."""
  import pathlib

  from merlot_jax.config import load_config, validate
  c = load_config(pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'tiny.py')
  m = c.model
  m.num_segments, m.segments_per_group = 2, 2
  m.image_size = (32, 32)
  m.num_vision_layers = m.num_joint_layers = m.num_langonly_layers = 1
  m.dropout_rate = 0.0
  c.optim.learning_rate, c.optim.warmup_steps, c.optim.bf16_moments = 3e-3, 1, False
  c.train.total_steps = 100
  c.mesh.update(mesh)
  return validate(c)
