"""What the trainer needs from a task: the model it trains, its loss, its batch spec and its start.

Pretraining (merlot_jax/pretraining/task.py) and each finetuning task (merlot_jax/tasks/) provide one;
`train.setup.build` and `train.loop.train` take it, so the generic trainer never names a task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from merlot_jax.data.batch_spec import BatchSpec

Params = dict[str, Any]
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# (config, rngs) -> the module to train.
ModelFn = Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]
# (model, batch, rng, config, train) -> (scalar loss, metrics).
LossFn = Callable[[nnx.Module, Batch, jax.Array, ml_collections.ConfigDict, bool], tuple[jax.Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class Task:
  """model_fn builds the module; loss_fn scores a batch; batch_spec is the model's inputs (the step's
  shardings and abstract batches come from it); init_params maps fresh sharded params to the starting
  ones (e.g. a pretrained body loaded into them), used only when a run does not resume."""

  name: str
  model_fn: ModelFn
  loss_fn: LossFn
  batch_spec: BatchSpec
  init_params: Callable[[Params], Params] | None = None

  def with_init(self, init_params: Callable[[Params], Params] | None) -> Task:
    return dataclasses.replace(self, init_params=init_params)
