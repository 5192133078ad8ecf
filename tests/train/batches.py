"""Synthetic pretraining batches for the trainer tests (no corpus, no tf.data)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from merlot_jax.data.host_batches import StepIndexed
from merlot_jax.data.random_batch import random_batch, random_batches

# The library's random batches under the names these tests use.
synthetic_batch = random_batch
synthetic_batches = random_batches


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


POISON_MARK = 7  # video_src_ids of a batch whose gradients `nan_gradient_loss` makes NaN


def mark_poisoned(batch: dict) -> dict:
  return {**batch, 'video_src_ids': np.full_like(batch['video_src_ids'], POISON_MARK)}


@jax.custom_vjp
def _nan_gradient_if(x, flag):
  return x


_nan_gradient_if.defvjp(lambda x, flag: (x, flag), lambda flag, g: (jnp.where(flag, jnp.nan, g), None))


def nan_gradient_loss(loss_fn):
  """`loss_fn` whose loss is unchanged (finite) but whose gradients are NaN on `mark_poisoned` batches."""

  def poisoned(model, batch, rng, config, train=True):
    loss, m = loss_fn(model, batch, rng, config, train=train)
    return _nan_gradient_if(loss, batch['video_src_ids'][0, 0] == POISON_MARK), m

  return poisoned


def throttled(batches: Iterator[dict], seconds: float) -> StepIndexed:
  """The same batches, each `seconds` late: a run slow enough for a test to signal it between checkpoints
  whatever the host's speed (the math, and so every checkpoint, is unchanged)."""
  return StepIndexed(_after(batch, seconds) for batch in batches)


def _after(value, seconds: float):
  time.sleep(seconds)
  return value
