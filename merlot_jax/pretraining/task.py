"""MERLOT pretraining as a trainer Task: the paper model, its three-objective loss and its batch spec."""

from __future__ import annotations

import ml_collections
from flax import nnx

from merlot_jax.data import batch_spec
from merlot_jax.data.random_batch import random_batch
from merlot_jax.models.flops import model_flops_per_example
from merlot_jax.models.merlot import MerlotModel, MerlotOutput
from merlot_jax.pretraining.loss import pretraining_loss
from merlot_jax.train.task import Task


def merlot_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> MerlotModel:
  """Pretraining's ModelFn: the paper model."""
  return MerlotModel(config.model, rngs=rngs)


PRETRAINING = Task('pretraining', merlot_model, pretraining_loss, batch_spec.PRETRAINING,
                   flops_per_example=model_flops_per_example, example_batch=random_batch)


def pretraining_forward(model: MerlotModel, batch: dict) -> MerlotOutput:
  """The evaluation forward on a pretraining batch: what the device check compares across devices."""
  return model(batch['images'], batch['input_ids'], batch['image_index'])
