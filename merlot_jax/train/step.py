"""Pure, jitted train and eval steps with explicit shardings, and host batches -> global arrays."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from merlot_jax import sharding
from merlot_jax.train.loss import pretraining_loss
from merlot_jax.train.optim import learning_rate_schedule
from merlot_jax.train.state import TrainState, merge

# The pretraining batch: key -> rank. Tasks pass their own as `batch_ndims`.
PRETRAINING_BATCH = {'images': 5, 'input_ids': 3, 'video_src_ids': 2, 'image_index': 2}
BATCH_KEYS = tuple(PRETRAINING_BATCH)
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# (model, batch, rng, config, train) -> (scalar loss, metrics); `pretraining_loss` is the default.
LossFn = Callable[[nnx.Module, Batch, jax.Array, ml_collections.ConfigDict, bool], tuple[jax.Array, Metrics]]


def batch_shardings(mesh: Mesh, config: ml_collections.ConfigDict,
                    batch_ndims: Mapping[str, int] | None = None) -> dict[str, NamedSharding]:
  """Each batch key's sharding (leading axis over ('data', 'fsdp')); pretraining's keys by default."""
  ndims = PRETRAINING_BATCH if batch_ndims is None else batch_ndims
  return {k: sharding.batch_sharding(mesh, n) for k, n in ndims.items()}


def global_batch(local: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]) -> Batch:
  """This host's numpy batch -> global jax arrays sharded over ('data', 'fsdp'), one per key of
  `shardings`. Extra keys (e.g. the pipeline's 'skipped') are dropped."""
  missing = [k for k in shardings if k not in local]
  if missing:
    raise KeyError(f'batch lacks {missing}; it has {sorted(local)}')
  return {k: jax.make_array_from_process_local_data(s, np.asarray(local[k])) for k, s in shardings.items()}


def _l2_norm(tree) -> jax.Array:
  return optax.global_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def jit_train_step(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                   mesh: Mesh, state_shardings: TrainState, *, loss_fn: LossFn | None = None,
                   batch_ndims: Mapping[str, int] | None = None) -> jax.stages.Wrapped:
  """The jitted train step itself (for `.lower(...)` on abstract inputs, e.g. ahead-of-time compiles);
  call or lower it inside `jax.set_mesh(mesh)`. `make_train_step` wraps it for training.

  Metrics: the loss terms of `loss_fn` (`pretraining_loss` by default) plus grad_norm, param_norm,
  learning_rate (the rate this step used) and the non-finite guard's: a step whose loss, gradients or
  updates hold a NaN or inf leaves params and optimizer state as they were (the step counter still
  advances, as does the data) and reports `skipped` = 1 with which of the three was non-finite
  (`nonfinite/loss`, `nonfinite/grads`, `nonfinite/updates`).
  """
  loss_fn = pretraining_loss if loss_fn is None else loss_fn  # looked up per call (tests patch it)
  schedule = learning_rate_schedule(config.optim.learning_rate, config.optim.warmup_steps,
                                    config.train.total_steps)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(state.rng, state.step)

    def objective(params):
      return loss_fn(merge(graphdef, params), batch, rng, config, train=True)

    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    grad_norm = _l2_norm(grads)
    nonfinite = {'loss': ~jnp.isfinite(loss), 'grads': ~jnp.isfinite(grad_norm),
                 'updates': ~jnp.isfinite(_l2_norm(updates))}  # a norm is finite iff every entry is
    skip = nonfinite['loss'] | nonfinite['grads'] | nonfinite['updates']
    keep_if_skipped = lambda new, old: jax.tree.map(lambda n, o: jnp.where(skip, o, n), new, old)
    params = keep_if_skipped(optax.apply_updates(state.params, updates), state.params)
    opt_state = keep_if_skipped(opt_state, state.opt_state)
    metrics = {**metrics, 'grad_norm': grad_norm, 'param_norm': _l2_norm(params),
               'learning_rate': schedule(state.step), 'skipped': skip.astype(jnp.float32),
               **{f'nonfinite/{k}': v.astype(jnp.float32) for k, v in nonfinite.items()}}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings(mesh, config, batch_ndims)),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def make_train_step(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    mesh: Mesh, state_shardings: TrainState, *, loss_fn: LossFn | None = None,
                    batch_ndims: Mapping[str, int] | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """train_step(state, batch) -> (state, metrics); the input state is donated. Metrics as in
  `jit_train_step`."""
  jitted = jit_train_step(config, graphdef, tx, mesh, state_shardings, loss_fn=loss_fn, batch_ndims=batch_ndims)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    chex.assert_rank(batch['images'], 5)
    with jax.set_mesh(mesh):
      return jitted(state, batch)

  return step


def make_eval_step(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, mesh: Mesh,
                   state_shardings: TrainState, *, loss_fn: LossFn | None = None,
                   batch_ndims: Mapping[str, int] | None = None) -> Callable[[TrainState, Batch], Metrics]:
  """eval_step(state, batch) -> metrics of `loss_fn` without dropout; the masking RNG is
  fixed (folded from the state's rng with -1), so the same batch always gives the same numbers."""

  loss_fn = pretraining_loss if loss_fn is None else loss_fn

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    rng = jax.random.fold_in(state.rng, 2**31 - 1)  # a stream no train step uses (steps < 2^31 - 1)
    _, metrics = loss_fn(merge(graphdef, state.params), batch, rng, config, train=False)
    return metrics

  replicated = NamedSharding(mesh, PartitionSpec())
  jitted = jax.jit(eval_step, in_shardings=(state_shardings, batch_shardings(mesh, config, batch_ndims)),
                   out_shardings=replicated)

  def step(state: TrainState, batch: Batch) -> Metrics:
    with jax.set_mesh(mesh):
      return jitted(state, batch)

  return step
