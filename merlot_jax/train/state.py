"""The training state, created already sharded: abstract shapes -> shardings -> jitted init.

Functional style: the model is split once into a static `graphdef` and its parameters, kept as a pure
nested dict of arrays (Orbax and optax see plain pytrees). `nnx.merge(graphdef, params)` rebuilds
the model inside jitted functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from merlot_jax import sharding
from merlot_jax.train.task import ModelFn, Params


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Params
  opt_state: optax.OptState
  rng: jax.Array  # uint32 [2] raw key; step k uses fold_in(rng, k)


def abstract_params(config: ml_collections.ConfigDict, seed: int, model_fn: ModelFn
                    ) -> tuple[nnx.GraphDef, nnx.State]:
  """The model's graphdef and its parameter state as shapes only (no memory, no compute)."""
  model = nnx.eval_shape(lambda: model_fn(config, nnx.Rngs(params=seed)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(f'{type(model).__name__} holds non-Param state {jax.tree.map(lambda x: x.shape, rest)}: '
                     'train/state.py only carries nnx.Param')
  return graphdef, params


def _opt_state_shardings(abstract_opt_state: Any, param_sh: Params, mesh: Mesh) -> Any:
  """Each optimizer leaf whose key path ends with a parameter's path (Adam moments) takes that
  parameter's sharding; everything else (counters) is replicated."""
  by_path = {tuple(str(k) for k in path): s for path, s in jax.tree_util.tree_leaves_with_path(param_sh)}
  depth = {len(p) for p in by_path}
  replicated = NamedSharding(mesh, PartitionSpec())

  def one(path, leaf):
    keys = tuple(str(k) for k in path)
    for d in depth:
      s = by_path.get(keys[-d:])
      if s is not None and len(s.spec) <= leaf.ndim:
        return s
    return replicated

  return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def param_shardings(config: ml_collections.ConfigDict, mesh: Mesh, model_fn: ModelFn
                    ) -> tuple[nnx.GraphDef, Params, Params]:
  """(graphdef, abstract params, params' NamedShardings) of the model for `config` on `mesh`."""
  graphdef, params_state = abstract_params(config, config.train.seed, model_fn)
  return graphdef, params_state.to_pure_dict(), sharding.param_shardings(params_state, mesh).to_pure_dict()


def state_shardings(config: ml_collections.ConfigDict, mesh: Mesh, tx: optax.GradientTransformation,
                    model_fn: ModelFn) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """(graphdef, abstract TrainState, TrainState of NamedShardings) for `config` on `mesh`."""
  graphdef, params, param_sh = param_shardings(config, mesh, model_fn)
  opt_state = jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state,
                        rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  shardings = TrainState(step=replicated, params=param_sh,
                         opt_state=_opt_state_shardings(opt_state, param_sh, mesh), rng=replicated)
  return graphdef, abstract, shardings


def init_state(config: ml_collections.ConfigDict, mesh: Mesh, tx: optax.GradientTransformation, model_fn: ModelFn,
               shardings: TrainState, init_params: Callable[[Params], Params] | None = None) -> TrainState:
  """Initialises parameters and optimizer state directly in `shardings` (no host copy).

  Parameters come from seed config.train.seed, the step RNG from the same seed folded with 1.
  `init_params(params)`, if given, replaces the fresh (sharded) parameters before the optimizer state is
  made, e.g. with pretrained ones loaded into the same shardings.
  """
  seed = config.train.seed

  def init_model() -> Params:
    return nnx.state(model_fn(config, nnx.Rngs(params=seed)), nnx.Param).to_pure_dict()

  def init(params: Params) -> TrainState:
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)

  with jax.set_mesh(mesh):
    params = _compile_run_once(jax.jit(init_model, out_shardings=shardings.params))()
    if init_params is not None:
      params = init_params(params)
    init = jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings, donate_argnums=0)
    return _compile_run_once(init, params)(params)


# Programs that run once (initialisation) gain nothing from optimised code generation; LLVM's cheapest compiles
# them in about a third of the time (configs/tiny.py's init on the CPU: 8.5 s -> 3.4 s, measured).
RUN_ONCE_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def _compile_run_once(jitted: jax.stages.Wrapped, *args: Any) -> jax.stages.Compiled:
  return jitted.lower(*args).compile(compiler_options=RUN_ONCE_COMPILER_OPTIONS)


def merge(graphdef: nnx.GraphDef, params: Params) -> nnx.Module:
  """The model with `params` (inside or outside jit)."""
  return nnx.merge(graphdef, params)
