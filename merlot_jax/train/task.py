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
import numpy as np
from flax import nnx

from merlot_jax.data.batch_spec import BatchSpec

Params = dict[str, Any]
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# (config, rngs) -> the module to train.
ModelFn = Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]
# (model, batch, rng, config, train) -> (scalar loss, metrics).
LossFn = Callable[[nnx.Module, Batch, jax.Array, ml_collections.ConfigDict, bool], tuple[jax.Array, Metrics]]
# (config, batch_size, seed) -> a host batch that meets the batch spec.
ExampleBatchFn = Callable[[ml_collections.ConfigDict, int, int], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Task:
  """model_fn builds the module; loss_fn scores a batch; batch_spec is the model's inputs (the step's
  shardings and abstract batches come from it); init_params maps fresh sharded params to the starting
  ones (e.g. a pretrained body loaded into them), used only when a run does not resume.

  Optional, for throughput: flops_per_example (config -> the model's analytic train FLOPs per example, behind
  the logged TFLOP/s and MFU; without it they are not reported) and example_batch (synthetic batches for the
  benchmark's timed steps)."""

  name: str
  model_fn: ModelFn
  loss_fn: LossFn
  batch_spec: BatchSpec
  init_params: Callable[[Params], Params] | None = None
  flops_per_example: Callable[[ml_collections.ConfigDict], float] | None = None
  example_batch: ExampleBatchFn | None = None

  def flops_per_step(self, config: ml_collections.ConfigDict) -> float:
    """The analytic train FLOPs of one global batch; ValueError for a task without flops_per_example."""
    if self.flops_per_example is None:
      raise ValueError(f'task {self.name!r} gives no flops_per_example: FLOP counts, MFU and bounds need one')
    return self.flops_per_example(config) * config.train.global_batch_size

  def with_init(self, init_params: Callable[[Params], Params] | None) -> Task:
    return dataclasses.replace(self, init_params=init_params)
