"""The pure train and eval steps (train/setup.py jits them with their shardings), and host batches -> global
arrays."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

from merlot_jax.train.optim import learning_rate_schedule
from merlot_jax.train.state import TrainState, merge
from merlot_jax.train.task import Batch, LossFn, Metrics


def global_batch(local: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]) -> Batch:
  """This host's numpy batch -> global jax arrays sharded over ('data', 'fsdp'), one per key of
  `shardings`. Extra keys (e.g. the pipeline's 'skipped') are dropped."""
  missing = [k for k in shardings if k not in local]
  if missing:
    raise KeyError(f'batch lacks {missing}; it has {sorted(local)}')
  return {k: jax.make_array_from_process_local_data(s, np.asarray(local[k])) for k, s in shardings.items()}


def _l2_norm(tree) -> jax.Array:
  return optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def train_step_fn(config: ml_collections.ConfigDict, loss_fn: LossFn, graphdef: nnx.GraphDef,
                  tx: optax.GradientTransformation) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The pure train step (train/setup.py jits it with the state's and the batch's shardings).

  Metrics: the loss terms of `loss_fn` plus grad_norm, param_norm, learning_rate (the rate this step used)
  and the non-finite guard's: a step whose loss, gradients or updates hold a NaN or inf leaves params and
  optimizer state as they were (the step counter still advances, as does the data) and reports `skipped` = 1
  with which of the three was non-finite (`nonfinite/loss`, `nonfinite/grads`, `nonfinite/updates`).
  """
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

  return train_step


def eval_step_fn(config: ml_collections.ConfigDict, loss_fn: LossFn, graphdef: nnx.GraphDef
                 ) -> Callable[[TrainState, Batch], Metrics]:
  """The pure eval step: metrics of `loss_fn` without dropout; the masking RNG is fixed (folded from the
  state's rng with 2^31 - 1, a stream no train step uses), so the same batch always gives the same numbers."""

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    rng = jax.random.fold_in(state.rng, 2**31 - 1)
    _, metrics = loss_fn(merge(graphdef, state.params), batch, rng, config, train=False)
    return metrics

  return eval_step
