"""MERLOT pretraining as a trainer Task: the paper model, its three-objective loss and its batch spec."""

from __future__ import annotations

import ml_collections
import numpy as np
from flax import nnx

from merlot_jax.data.batch_spec import Field
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.pretraining.loss import pretraining_loss
from merlot_jax.train.task import Task

# What data/pipeline.py yields per host and the train step consumes (b = per-host or global batch).
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
}


def merlot_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> MerlotModel:
  """Pretraining's ModelFn: the paper model."""
  return MerlotModel(config.model, rngs=rngs)


PRETRAINING = Task('pretraining', merlot_model, pretraining_loss, BATCH_SPEC)
