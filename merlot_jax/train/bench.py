"""Train-step benchmark: step time, model FLOPs (analytic, cross-checked with XLA) and MFU against this
machine's own measured matmul peak, all measured in one process; plus compile time against depth."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from merlot_jax import sharding
from merlot_jax.data.random_batch import random_batch
from merlot_jax.train import metrics, optim
from merlot_jax.train import state as state_lib
from merlot_jax.train import step as step_lib


def matmul_peak(size: int = 2048, repeats: int = 10, trials: int = 3) -> float:
  """Achieved FLOP/s of a large float32 matmul on all local devices at once (the machine's peak): the
  best of `trials` timings of `repeats` matmuls, since a peak is what the machine can do, not its average."""
  devices = jax.local_devices()
  spread = NamedSharding(Mesh(np.asarray(devices), ('d',)), PartitionSpec('d'))
  x = jax.device_put(jnp.ones((len(devices), size, size), jnp.float32), spread)
  mm = jax.jit(lambda a: jnp.einsum('nij,njk->nik', a, a))  # one independent matmul per device
  mm(x).block_until_ready()
  best = float('inf')
  for _ in range(trials):
    start = time.perf_counter()
    for _ in range(repeats):
      y = mm(x)
    y.block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 * repeats * len(devices) / best


@dataclasses.dataclass(frozen=True)
class TrainBenchResult:
  compile_seconds: float
  step_seconds: float
  model_flops_per_step: float  # analytic count (train = 3x forward)
  xla_flops_per_step: float  # XLA's cost analysis of the compiled step (all devices)
  peak_flops: float

  @property
  def achieved_flops(self) -> float:
    return self.model_flops_per_step / self.step_seconds

  @property
  def mfu(self) -> float:
    return self.achieved_flops / self.peak_flops


def _compiled_step(config: ml_collections.ConfigDict):
  mesh = sharding.make_mesh(config.mesh)
  tx = optim.make_optimizer(config.optim, config.train.total_steps)
  graphdef, state, shardings = state_lib.create_train_state(config, mesh, tx)
  jitted = step_lib.jit_train_step(config, graphdef, tx, mesh, shardings)
  batch_sh = step_lib.batch_shardings(mesh, config)
  batch = step_lib.global_batch(random_batch(config, config.train.global_batch_size, 0), batch_sh)
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = jitted.lower(state, batch).compile()
  return compiled, state, batch, mesh, time.perf_counter() - start


def compile_seconds(config: ml_collections.ConfigDict) -> float:
  """Wall time to compile the train step (scan over layers keeps it nearly flat in depth)."""
  return _compiled_step(config)[-1]


def run_train_benchmark(config: ml_collections.ConfigDict, steps: int = 5) -> TrainBenchResult:
  compiled, state, batch, mesh, seconds = _compiled_step(config)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  with jax.set_mesh(mesh):
    state, out = compiled(state, batch)  # warm-up
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(steps):
      state, out = compiled(state, batch)
    jax.block_until_ready(out)
  step_seconds = (time.perf_counter() - start) / steps
  flops = metrics.model_flops_per_example(config) * config.train.global_batch_size
  return TrainBenchResult(seconds, step_seconds, flops, float(cost.get('flops', np.nan)), matmul_peak())


def format_report(r: TrainBenchResult) -> str:
  return '\n'.join([
      f'compile: {r.compile_seconds:.1f} s   step: {r.step_seconds * 1e3:.1f} ms',
      f'model FLOPs/step: {r.model_flops_per_step:.4g} (analytic)   XLA cost analysis: {r.xla_flops_per_step:.4g} '
      f'(ratio {r.xla_flops_per_step / r.model_flops_per_step:.3f})',
      f'achieved: {r.achieved_flops / 1e9:.2f} GFLOP/s   matmul peak (measured): {r.peak_flops / 1e9:.2f} GFLOP/s',
      f'MFU: {r.mfu:.4f}'])
