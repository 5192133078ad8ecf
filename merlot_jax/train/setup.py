"""The trainer's setup, in one place: mesh -> optimizer -> abstract state and shardings -> jitted steps.

Training (loop.py), evaluation of a final state, ahead-of-time compiles (aot.py), the benchmark (bench.py)
and finetuning all start from `build(config, task)`; the abstract model is built once. The steps are
jitted, not compiled: the first call (or `.lower(...)`) compiles them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from merlot_jax import sharding
from merlot_jax.data import batch_spec
from merlot_jax.train import optim
from merlot_jax.train import state as state_lib
from merlot_jax.train import step as step_lib
from merlot_jax.train.task import Batch, Metrics, Task


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything a run of `task` under `config` on `mesh` needs, with nothing allocated yet.

  abstract_state: ShapeDtypeStructs carrying their shardings (a restore target, or an AOT argument);
  jit_train_step / jit_eval_step: the jitted steps, to call or lower inside `jax.set_mesh(mesh)` (or use
  `train_step` / `eval_step`, which do). The train step donates its input state.
  """

  config: ml_collections.ConfigDict
  task: Task
  mesh: Mesh
  tx: optax.GradientTransformation
  graphdef: nnx.GraphDef
  abstract_state: state_lib.TrainState
  state_shardings: state_lib.TrainState
  batch_shardings: dict[str, NamedSharding]
  jit_train_step: jax.stages.Wrapped
  jit_eval_step: jax.stages.Wrapped

  def init_state(self) -> state_lib.TrainState:
    """A fresh state, created in its shardings (the task's init_params applied)."""
    return state_lib.init_state(self.config, self.mesh, self.tx, self.task.model_fn, self.state_shardings,
                                self.task.init_params)

  def global_batch(self, local: Mapping[str, np.ndarray]) -> Batch:
    """This host's numpy batch -> the global arrays of the task's batch spec (host-only keys dropped),
    checked against the spec at config.train.global_batch_size."""
    batch = step_lib.global_batch(local, self.batch_shardings)
    batch_spec.check(self.task.batch_spec, batch, self.config, self.config.train.global_batch_size,
                     f'{self.task.name} batch')
    return batch

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch (config.train.global_batch_size) as sharded ShapeDtypeStructs."""
    shapes = batch_spec.shapes(self.task.batch_spec, self.config, self.config.train.global_batch_size)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_shardings[k])
            for k, (shape, dtype) in shapes.items()}

  def train_step(self, state: state_lib.TrainState, batch: Batch) -> tuple[state_lib.TrainState, Metrics]:
    with jax.set_mesh(self.mesh):
      return self.jit_train_step(state, batch)

  def eval_step(self, state: state_lib.TrainState, batch: Batch) -> Metrics:
    with jax.set_mesh(self.mesh):
      return self.jit_eval_step(state, batch)


def build(config: ml_collections.ConfigDict, task: Task, *, mesh: Mesh | None = None,
          devices: Sequence[jax.Device] | None = None) -> Setup:
  """The Setup of `task`; the mesh from config.mesh over `devices` (default all) unless one is given
  (e.g. a TPU topology's compile-only devices)."""
  mesh = sharding.make_mesh(config.mesh, devices) if mesh is None else mesh
  batch_devices = mesh.shape['data'] * mesh.shape['fsdp']
  if config.train.global_batch_size % batch_devices:
    raise ValueError(f'config.train.global_batch_size = {config.train.global_batch_size} must be divisible by '
                     f'mesh data x fsdp = {batch_devices}: the batch is split over those axes')
  tx = optim.make_optimizer(config.optim, config.train.total_steps)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx, task.model_fn)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  batch_sh = {k: sharding.batch_sharding(mesh, len(f.shape)) for k, f in task.batch_spec.items()}
  replicated = NamedSharding(mesh, PartitionSpec())
  train: Callable = step_lib.train_step_fn(config, task.loss_fn, graphdef, tx)
  jit_train = jax.jit(train, in_shardings=(shardings, batch_sh), out_shardings=(shardings, replicated),
                      donate_argnums=0)
  jit_eval = jax.jit(step_lib.eval_step_fn(config, task.loss_fn, graphdef), in_shardings=(shardings, batch_sh),
                     out_shardings=replicated)
  return Setup(config, task, mesh, tx, graphdef, abstract, shardings, batch_sh, jit_train, jit_eval)
