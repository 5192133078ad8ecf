"""The trainer's setup, in one place: mesh -> optimizer -> abstract state and shardings -> compiled steps.

Training (loop.py), evaluation of a final state, ahead-of-time compiles (aot.py), the benchmark (bench.py)
and finetuning all start from `build(config, task)`; the abstract model is built once. Prediction needs
only where the params and the batch live: `layout(config, task)`. Each step is
compiled once, for the abstract state and global batch, when it is first asked for (`Setup.train_step`):
the loop compiles before its first step, and an AOT compile is the same call on a topology's mesh.
"""

from __future__ import annotations

import dataclasses
import functools
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
from merlot_jax.train.task import Batch, Task


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a run of `task` under `config` puts its arrays on `mesh`: the model's graphdef, its params as
  ShapeDtypeStructs carrying their shardings (a restore target), and the batch's shardings. All that
  prediction needs; no optimizer, no steps."""

  config: ml_collections.ConfigDict
  task: Task
  mesh: Mesh
  graphdef: nnx.GraphDef
  abstract_params: state_lib.Params
  batch_shardings: dict[str, NamedSharding]

  @property
  def param_shardings(self) -> state_lib.Params:
    return jax.tree.map(lambda a: a.sharding, self.abstract_params)

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


@dataclasses.dataclass(frozen=True)
class Setup(Layout):
  """A Layout and everything training needs beside it, with nothing allocated yet.

  abstract_state: ShapeDtypeStructs carrying their shardings (a restore target, or an AOT argument);
  jit_train_step / jit_eval_step: the jitted steps, before lowering; `train_step` / `eval_step` compile them.
  """

  tx: optax.GradientTransformation
  abstract_state: state_lib.TrainState
  state_shardings: state_lib.TrainState
  jit_train_step: jax.stages.Wrapped
  jit_eval_step: jax.stages.Wrapped

  def init_state(self) -> state_lib.TrainState:
    """A fresh state, created in its shardings (the task's init_params applied)."""
    return state_lib.init_state(self.config, self.mesh, self.tx, self.task.model_fn, self.state_shardings,
                                self.task.init_params)

  @functools.cached_property
  def train_step(self) -> jax.stages.Compiled:
    """(state, global batch) -> (new state, metrics), compiled on first access; it donates the input state.
    Called anywhere (the shardings are compiled in); a state or batch of another shape or sharding is an error,
    not a recompile."""
    return self._compile(self.jit_train_step)

  @functools.cached_property
  def eval_step(self) -> jax.stages.Compiled:
    """(state, global batch) -> metrics, without dropout; compiled on first access."""
    return self._compile(self.jit_eval_step)

  def _compile(self, step: jax.stages.Wrapped) -> jax.stages.Compiled:
    with jax.set_mesh(self.mesh):  # activation sharding constraints (sharding.constrain) read it while tracing
      return step.lower(self.abstract_state, self.abstract_batch()).compile()


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """config.mesh over `devices` (default all), checked to split config.train.global_batch_size evenly."""
  mesh = sharding.make_mesh(config.mesh, devices)
  batch_devices = mesh.shape['data'] * mesh.shape['fsdp']
  if config.train.global_batch_size % batch_devices:
    raise ValueError(f'config.train.global_batch_size = {config.train.global_batch_size} must be divisible by '
                     f'mesh data x fsdp = {batch_devices}: the batch is split over those axes')
  return mesh


def layout(config: ml_collections.ConfigDict, task: Task, *, mesh: Mesh | None = None,
           devices: Sequence[jax.Device] | None = None) -> Layout:
  """The Layout of `task`; the mesh from config.mesh over `devices` (default all) unless one is given."""
  mesh = make_mesh(config, devices) if mesh is None else mesh
  graphdef, params, param_sh = state_lib.param_shardings(config, mesh, task.model_fn)
  return Layout(config, task, mesh, graphdef, _with_shardings(params, param_sh), _batch_shardings(task, mesh))


def build(config: ml_collections.ConfigDict, task: Task, *, mesh: Mesh | None = None,
          devices: Sequence[jax.Device] | None = None) -> Setup:
  """The Setup of `task`; the mesh from config.mesh over `devices` (default all) unless one is given
  (e.g. a TPU topology's compile-only devices)."""
  mesh = make_mesh(config, devices) if mesh is None else mesh
  tx = optim.make_optimizer(config.optim, config.train.total_steps)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx, task.model_fn)
  abstract = _with_shardings(abstract, shardings)
  batch_sh = _batch_shardings(task, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  train: Callable = step_lib.train_step_fn(config, task.loss_fn, graphdef, tx)
  jit_train = jax.jit(train, in_shardings=(shardings, batch_sh), out_shardings=(shardings, replicated),
                      donate_argnums=0)
  jit_eval = jax.jit(step_lib.eval_step_fn(config, task.loss_fn, graphdef), in_shardings=(shardings, batch_sh),
                     out_shardings=replicated)
  return Setup(config, task, mesh, graphdef, abstract.params, batch_sh, tx, abstract, shardings, jit_train,
               jit_eval)


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _batch_shardings(task: Task, mesh: Mesh) -> dict[str, NamedSharding]:
  return {k: sharding.batch_sharding(mesh, len(f.shape)) for k, f in task.batch_spec.items()}
