"""The pretraining loop: mesh -> sharded state -> resume -> steps -> logs, evals, checkpoints.

Preemption: a SIGTERM to any process stops every process at the same step (`PreemptionSync`); they
save that step's checkpoint together, wait for it to be on disk and return normally. A hard kill loses
at most the steps since the last checkpoint; the next run with the same workdir resumes from it (params,
optimizer state, step, RNG and data position).
"""

from __future__ import annotations

import logging
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from merlot_jax import sharding
from merlot_jax import workdir as workdir_lib
from merlot_jax.train import checkpoint, optim
from merlot_jax.train import metrics as metrics_lib
from merlot_jax.train import state as state_lib
from merlot_jax.train import step as step_lib

# (start_step, start_position or None) -> this host's numpy batches from that point on.
BatchesFactory = Callable[[int, int | None], Iterator[dict[str, np.ndarray]]]


class PreemptionSync:
  """Says after which step every process saves and stops; use as a context manager.

  Multi-process (jax.distributed initialized): JAX's preemption sync point. The coordination service
  catches SIGTERM on any process and all processes agree on one step (the largest step any of them has
  reached, plus one), so they enter the collective checkpoint save together instead of one saving while
  another runs the next step's collectives. It must be asked after every step, by every process.
  One process: a SIGTERM handler sets a flag, checked after the step in flight.
  """

  def __init__(self):
    self._distributed = jax.distributed.is_initialized()
    self._signalled = False
    self._previous = None

  def _handler(self, signum, frame) -> None:
    logging.warning('signal %d: saving a checkpoint and stopping after this step', signum)
    self._signalled = True

  def __enter__(self) -> PreemptionSync:
    if not self._distributed:  # with jax.distributed, the coordination service's handler must stay installed
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    if not self._distributed:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    """True when every process is to save `step` and stop."""
    if self._distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled


def evaluate(eval_step, state: state_lib.TrainState, batches: Iterator[dict[str, np.ndarray]],
             shardings: dict, num_batches: int) -> dict[str, float]:
  """Mean of eval_step metrics over up to `num_batches` batches (fewer if the iterator ends)."""
  results = []
  for _, local in zip(range(num_batches), batches, strict=False):
    results.append(eval_step(state, step_lib.global_batch(local, shardings)))
  if not results:
    raise ValueError('the eval iterator yielded no batches')
  fetched = jax.device_get(results)
  return {k: float(np.mean([r[k] for r in fetched])) for k in fetched[0]}


def evaluate_state(config: ml_collections.ConfigDict, state: state_lib.TrainState,
                   batches: Iterator[dict[str, np.ndarray]], num_batches: int | None = None) -> dict[str, float]:
  """Mean eval metrics of a (final) train state over `batches` (all of them by default)."""
  mesh = sharding.make_mesh(config.mesh)
  graphdef, _, shardings = state_lib.state_shardings(config, mesh, optim.make_optimizer(config.optim,
                                                                                           config.train.total_steps))
  eval_step = step_lib.make_eval_step(config, graphdef, mesh, shardings)
  return evaluate(eval_step, state, batches, step_lib.batch_shardings(mesh, config),
                  sys.maxsize if num_batches is None else num_batches)


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, batches_factory: BatchesFactory, *,
          eval_batches_factory: Callable[[], Iterator[dict[str, np.ndarray]]] | None = None,
          peak_flops_per_device: float | None = None, progress: bool = True,
          devices: Sequence[jax.Device] | None = None, model_fn: state_lib.ModelFn = state_lib.merlot_model,
          loss_fn: step_lib.LossFn | None = None, batch_ndims: dict[str, int] | None = None,
          init_params: Callable[[state_lib.Params], state_lib.Params] | None = None,
          config_override_ok: bool = False) -> state_lib.TrainState:
  """Trains to config.train.total_steps, resuming from workdir/checkpoints if one is there.

  Writes workdir/config.json; on resume, a config that changes what the run trains stops it first
  (merlot_jax/workdir.py; `config_override_ok` accepts any change). An unreadable latest checkpoint is
  set aside and the newest readable one restored.

  Evaluates every config.train.eval_every steps (0: never) on config.train.eval_steps batches of a
  fresh `eval_batches_factory()` iterator. `devices` default to all. Returns the final state (also saved).
  Pretraining by default (loss_fn None: pretraining_loss); a task passes its `model_fn`, `loss_fn`,
  `batch_ndims` (key -> rank) and `init_params` (fresh sharded params -> the starting ones, used only
  when not resuming).
  """
  t = config.train
  workdir = checkpoint.as_path(workdir)
  mesh = sharding.make_mesh(config.mesh, devices)
  tx = optim.make_optimizer(config.optim, t.total_steps)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx, model_fn)
  ckpt = checkpoint.TrainCheckpointer(workdir / 'checkpoints', every=t.checkpoint_every, keep=t.keep_checkpoints)
  workdir_lib.check_and_write_config(workdir, config, resumed_step=ckpt.latest_step(),
                                     override_ok=config_override_ok, write=jax.process_index() == 0)
  if ckpt.latest_step() is not None:
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    state, data = ckpt.restore_newest_readable(target)
    start, position = int(state.step), data['position']
    logging.info('resumed from %s at step %d (data position %s)', ckpt.directory, start, position)
  else:
    graphdef, state, shardings = state_lib.create_train_state(config, mesh, tx, model_fn, init_params)
    start, position = 0, None
  batches = batches_factory(start, position)
  task = dict(loss_fn=loss_fn, batch_ndims=batch_ndims)
  train_step = step_lib.make_train_step(config, graphdef, tx, mesh, shardings, **task)
  eval_every = t.get('eval_every', 0)
  eval_step = step_lib.make_eval_step(config, graphdef, mesh, shardings, **task) if eval_batches_factory else None
  batch_sh = step_lib.batch_shardings(mesh, config, batch_ndims)
  logger = metrics_lib.MetricsLogger(config, workdir, total_steps=t.total_steps, start_step=start,
                                     peak_flops_per_device=peak_flops_per_device, num_devices=mesh.size,
                                     progress=progress)
  step = start
  try:
    with PreemptionSync() as preemption:
      while step < t.total_steps:
        batch = step_lib.global_batch(next(batches), batch_sh)
        if batch['input_ids'].shape[0] != t.global_batch_size:
          raise ValueError(f'the global batch has {batch["input_ids"].shape[0]} examples, '
                           f'config.train.global_batch_size = {t.global_batch_size}')
        if step == start:  # the first call compiles: timed once, left out of the throughput
          compile_start = time.perf_counter()
          with logger.untimed():
            state, step_metrics = train_step(state, batch)
          logger.log_compile(step + 1, time.perf_counter() - compile_start)
        else:
          state, step_metrics = train_step(state, batch)
        step += 1
        preempted = preemption.reached(step)
        logger.record(step, step_metrics)
        if step % t.log_every == 0:
          logger.flush()
        if eval_step is not None and eval_every and step % eval_every == 0:
          with logger.untimed():
            scalars = evaluate(eval_step, state, eval_batches_factory(), batch_sh, t.get('eval_steps', 1))
          logger.write(step, scalars, prefix='eval/')
        if step % t.checkpoint_every == 0 or preempted or step == t.total_steps:
          logger.flush()  # the NaN guard runs before a checkpoint is written
          if ckpt.latest_step() != step:
            with logger.untimed():
              ckpt.save(step, state, getattr(batches, 'position', None), force=True)
        if preempted:
          ckpt.wait()
          logging.warning('preempted: every process stopped at step %d; its checkpoint is in %s', step,
                          ckpt.directory)
          break
    logger.flush()
  finally:
    ckpt.wait()
    ckpt.close()
    logger.close()
  return state
