"""The same computation on two devices, compared: a model's forward outputs and one train step's loss, gradient
norm and updated parameter norm, from the same parameters and batch.

The device check runs it for an accelerator against the host's CPU (float32 and bfloat16) and for one
attention implementation against another on the accelerator. Parameters are initialised once, on the
reference device, and copied to the other, so that only the arithmetic differs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from merlot_jax.train import setup as setup_lib
from merlot_jax.train.state import merge
from merlot_jax.train.task import Batch, Task

Forward = Callable[[Any, Batch], Any]  # (model, batch) -> a pytree of outputs
STEP_METRICS = ('loss', 'grad_norm', 'param_norm')


def parity_config(config: ml_collections.ConfigDict, *, dtype: str, attention: str = 'xla',
                  batch_size: int = 2) -> ml_collections.ConfigDict:
  """`config` on one device at `batch_size`, computing in `dtype` with `attention`. The masked tokens depend
  on the RNG only (objectives.mask_use_attention off): the attention-based choice is a top-k, which on
  near-ties picks different tokens under different rounding, and the losses would then differ by that
  choice rather than by arithmetic."""
  c = copy.deepcopy(config)
  c.model.dtype, c.model.attention_impl = dtype, attention
  c.objectives.mask_use_attention = False
  c.train.global_batch_size = batch_size
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  return c


@contextlib.contextmanager
def _precision(matmul_precision: str | None):
  if matmul_precision is None:
    yield
  else:
    with jax.default_matmul_precision(matmul_precision):
      yield


def runner(device: jax.Device, config: ml_collections.ConfigDict, task: Task, forward: Forward, *,
           matmul_precision: str | None = None) -> Callable[[Any, Mapping[str, np.ndarray]], dict[str, Any]]:
  """(host state, host batch) -> the forward outputs and one train step's STEP_METRICS on `device`; each call
  copies the numpy state and batch to the device (the steps compile on the first call)."""
  run = setup_lib.build(config, task, devices=[device])
  forward_jit = jax.jit(lambda params, batch: forward(merge(run.graphdef, params), batch))

  def run_once(host_state: Any, host_batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    state = jax.device_put(host_state, run.state_shardings)
    batch = run.global_batch(host_batch)
    with _precision(matmul_precision), jax.set_mesh(run.mesh):
      outputs = jax.device_get(forward_jit(state.params, batch))
      _, metrics = run.train_step(state, batch)
    metrics = jax.device_get(metrics)
    return {'outputs': outputs, **{k: float(metrics[k]) for k in STEP_METRICS}}

  return run_once


def initial_state(config: ml_collections.ConfigDict, task: Task, device: jax.Device) -> Any:
  """The task's fresh train state for `config`, created on `device`, as numpy arrays."""
  return jax.device_get(setup_lib.build(config, task, devices=[device]).init_state())


def _relative(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| over max |b| (the reference's scale), in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = np.max(np.abs(b)) if b.size else 0.0
  diff = np.max(np.abs(a - b)) if b.size else 0.0
  return float(diff / scale) if scale > 0 else float(diff)


def compare(result: Mapping[str, Any], reference: Mapping[str, Any], tolerance: float) -> dict[str, Any]:
  """Each output's and each step metric's relative difference from `reference`, the worst output, and
  whether everything is within `tolerance`."""
  leaves = jax.tree_util.tree_leaves_with_path(reference['outputs'])
  got = jax.tree_util.tree_leaves(result['outputs'])
  per_output = {jax.tree_util.keystr(path): _relative(a, b) for (path, b), a in zip(leaves, got, strict=True)}
  worst = max(per_output, key=per_output.get) if per_output else None
  metrics = {k: {'value': result[k], 'reference': reference[k], 'relative_diff': _relative(result[k], reference[k])}
             for k in STEP_METRICS}
  worst_diff = max([per_output.get(worst, 0.0)] + [m['relative_diff'] for m in metrics.values()])
  return {'tolerance': tolerance, 'within_tolerance': bool(worst_diff <= tolerance), 'max_relative_diff': worst_diff,
          'forward_max_relative_diff': per_output.get(worst, 0.0), 'worst_output': worst,
          'outputs_compared': len(per_output), **metrics}
