"""A task's batch contract: key -> symbolic shape, dtype and meaning, stated once.

The pipeline checks its output against it, the train step takes its shardings from it (the leading axis
over ('data', 'fsdp'), the rank from the shape), ahead-of-time compiles build their abstract batch from it
and the random test batches their shapes. Symbols: b (batch), N (segments), L (tokens per segment), H, W
(frame size) from `config.model`, K (options) from `config.finetune`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
  """One batch entry: symbolic shape, numpy dtype, meaning."""

  shape: tuple[str | int, ...]
  dtype: type
  doc: str


BatchSpec = Mapping[str, Field]  # key -> field; the sharding rank is len(field.shape)


# Pretraining: what data/pipeline.py yields per host and the train step consumes (b = per-host or global batch).
PRETRAINING: dict[str, Field] = {
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
}


def dims(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, int]:
  """The value of each shape symbol for `config` and a batch of `batch_size`."""
  m = config.model
  sizes = {'b': batch_size, 'N': m.num_segments, 'L': m.segment_length, 'H': m.image_size[0], 'W': m.image_size[1]}
  if 'finetune' in config:
    sizes['K'] = config.finetune.num_options
  return sizes


def shapes(spec: BatchSpec, config: ml_collections.ConfigDict, batch_size: int
           ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """key -> (concrete shape, dtype) of a batch of `batch_size`."""
  sizes = dims(config, batch_size)
  return {k: (tuple(sizes[d] if isinstance(d, str) else d for d in f.shape), np.dtype(f.dtype))
          for k, f in spec.items()}


def check(spec: BatchSpec, batch: Mapping[str, Any], config: ml_collections.ConfigDict, batch_size: int,
          source: str) -> None:
  """Raises ValueError naming `source`, each key and what it should be, unless `batch` meets the spec
  (extra keys are allowed: host-side fields such as the pipeline's 'skipped')."""
  problems = []
  for key, (shape, dtype) in shapes(spec, config, batch_size).items():
    if key not in batch:
      problems.append(f'{key}: missing')
    elif tuple(batch[key].shape) != shape or batch[key].dtype != dtype:  # numpy or jax arrays, never fetched
      problems.append(f'{key}: {tuple(batch[key].shape)} {batch[key].dtype}, expected {shape} {dtype}')
  if problems:
    raise ValueError(f'{source}: the batch does not match its spec: ' + '; '.join(problems))
