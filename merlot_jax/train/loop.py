"""The training loop of any Task: setup -> resume or init -> data -> steps -> logs, evals, checkpoints.

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

from merlot_jax import checkpoint
from merlot_jax import workdir as workdir_lib
from merlot_jax.data.host_batches import HostBatches
from merlot_jax.train import compiled
from merlot_jax.train import metrics as metrics_lib
from merlot_jax.train import setup as setup_lib
from merlot_jax.train import state as state_lib
from merlot_jax.train.task import Task

log = logging.getLogger(__name__)

# (start_step, start_position or None) -> this host's numpy batches from that point on.
BatchesFactory = Callable[[int, int | None], HostBatches]


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
    log.warning('signal %d: saving a checkpoint and stopping after this step', signum)
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


def evaluate(setup: setup_lib.Setup, state: state_lib.TrainState, batches: Iterator[dict[str, np.ndarray]],
             num_batches: int = sys.maxsize) -> dict[str, float]:
  """Mean eval metrics of `state` over up to `num_batches` batches (all of them by default)."""
  results = [setup.eval_step(state, setup.global_batch(local))
             for _, local in zip(range(num_batches), batches, strict=False)]
  if not results:
    raise ValueError('the eval iterator yielded no batches')
  fetched = jax.device_get(results)
  return {k: float(np.mean([r[k] for r in fetched])) for k in fetched[0]}


def _restore_or_init(setup: setup_lib.Setup, ckpt: checkpoint.TrainCheckpointer
                     ) -> tuple[state_lib.TrainState, int, int | None]:
  """(state, start step, data position): the newest readable checkpoint's, or a fresh state's."""
  if ckpt.latest_step() is None:
    return setup.init_state(), 0, None
  state, data = ckpt.restore_newest_readable(setup.abstract_state)
  log.info('resumed from %s at step %d (data position %s)', ckpt.directory, int(state.step), data['position'])
  return state, int(state.step), data['position']


def train(config: ml_collections.ConfigDict, task: Task, workdir: str | pathlib.Path,
          batches_factory: BatchesFactory, *,
          eval_batches_factory: Callable[[], Iterator[dict[str, np.ndarray]]] | None = None,
          peak_flops_per_device: float | None = None, progress: bool = True,
          devices: Sequence[jax.Device] | None = None, config_override_ok: bool = False) -> state_lib.TrainState:
  """Trains `task` to config.train.total_steps, resuming from workdir/checkpoints if one is there.

  Writes workdir/config.json; on resume, a config that changes what the run trains stops it first
  (merlot_jax/workdir.py; `config_override_ok` accepts any change). An unreadable latest checkpoint is set
  aside and the newest readable one restored. The train step is compiled before the first batch is read.
  Evaluates every config.train.eval_every steps (0: never) on config.train.eval_steps batches of a fresh
  `eval_batches_factory()`. Stops with NonFiniteError after config.train.max_consecutive_skips non-finite
  steps in a row, before it writes another checkpoint. Returns the final (saved) state.
  """
  t = config.train
  workdir = checkpoint.as_path(workdir)
  setup = setup_lib.build(config, task, devices=devices)
  ckpt = workdir_lib.train_checkpointer(workdir, config)
  workdir_lib.check_and_write_config(workdir, config, resumed_step=ckpt.latest_step(),
                                     override_ok=config_override_ok, write=jax.process_index() == 0)
  state, start, position = _restore_or_init(setup, ckpt)
  logger = metrics_lib.MetricsLogger(config, workdir, total_steps=t.total_steps, start_step=start,
                                     flops_per_example=task.flops_per_example and task.flops_per_example(config),
                                     peak_flops_per_device=peak_flops_per_device, num_devices=setup.mesh.size,
                                     progress=progress)
  evaluate_now = lambda step: (eval_batches_factory is not None and t.get('eval_every', 0)
                               and step % t.eval_every == 0)
  step = start
  try:
    train_step = _compile_train_step(setup, logger, start)
    batches = _host_batches(batches_factory, start, position)
    with PreemptionSync() as preemption:
      while step < t.total_steps:
        state, step_metrics = train_step(state, setup.global_batch(next(batches)))
        step += 1
        preempted = preemption.reached(step)
        logger.record(step, step_metrics)
        save = step % t.checkpoint_every == 0 or preempted or step == t.total_steps
        if step % t.log_every == 0 or save:  # before a save: a diverged run stops before it writes a checkpoint
          _flush(logger)
        if evaluate_now(step):
          with logger.untimed():
            logger.write(step, evaluate(setup, state, eval_batches_factory(), t.get('eval_steps', 1)), prefix='eval/')
        if save:
          with logger.untimed():
            ckpt.save(step, state, batches.position)
        if preempted:
          ckpt.wait()
          log.warning('preempted: every process stopped at step %d; its checkpoint is in %s', step, ckpt.directory)
          break
    _flush(logger)
  finally:
    ckpt.wait()
    ckpt.close()
    logger.close()
  return state


def _compile_train_step(setup: setup_lib.Setup, logger: metrics_lib.MetricsLogger, start: int
                        ) -> jax.stages.Compiled:
  """The setup's train step, compiled (timed, logged with its compiled memory, left out of the throughput)."""
  begin = time.perf_counter()
  with logger.untimed():
    train_step = setup.train_step
  logger.log_compile(start + 1, time.perf_counter() - begin, compiled.memory(train_step).total_bytes)
  return train_step


def _host_batches(batches_factory: BatchesFactory, start: int, position: int | None) -> HostBatches:
  batches = batches_factory(start, position)
  if not isinstance(batches, HostBatches):
    raise TypeError(f'batches_factory returned a {type(batches).__name__}, not a HostBatches: the trainer saves '
                    'its `position` with each checkpoint (merlot_jax/data/host_batches.py; wrap batches that are '
                    'a function of the step alone in host_batches.StepIndexed)')
  return batches


def _flush(logger: metrics_lib.MetricsLogger) -> None:
  """Writes the pending metrics; stops the run once too many steps in a row were non-finite."""
  logger.flush()
  if logger.diverged is not None:
    raise logger.diverged.error()
