"""Training metrics: one log line per interval, TensorBoard, progress bar, throughput and MFU (from the
task's analytic FLOPs per example), and the count of steps the non-finite guard skipped (train/step.py),
with the divergence that should stop the run (too many in a row)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping

import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath

from merlot_jax.train import logs
from merlot_jax.train.summary import SummaryWriter

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
  """Too many consecutive train steps had a non-finite loss, gradient or update."""


@dataclasses.dataclass(frozen=True)
class Divergence:
  """`steps` train steps in a row, the last of them `step`, were skipped as non-finite (`what` was)."""

  step: int
  steps: int
  what: str

  def error(self) -> NonFiniteError:
    return NonFiniteError(f'step {self.step}: {self.steps} steps in a row had non-finite {self.what} '
                          f'(config.train.max_consecutive_skips = {self.steps}); stopping. None of them changed '
                          'the params, so every checkpoint holds params from finite steps.')


# Per-step outputs of the train step's non-finite guard, counted rather than averaged.
GUARD_METRICS = ('skipped', 'nonfinite/loss', 'nonfinite/grads', 'nonfinite/updates')


class MetricsLogger:
  """Collects each step's device metrics without blocking; `flush()` fetches them, counts the steps the
  train step skipped as non-finite (`skipped_steps`; `diverged` is set at the step that makes
  config.train.max_consecutive_skips in a row), and writes the interval's mean over the steps that were not
  skipped as one log line and TensorBoard scalars (workdir/<name>/). While its progress bar is shown, console
  lines are written above it (logs.lines_above_progress_bars).

  Throughput (examples/s, TFLOP/s, MFU) counts train steps only: wrap compiles, evaluations and checkpoint
  saves in `untimed()`. `clock` (seconds) times them.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, total_steps: int,
               start_step: int, flops_per_example: float | None = None,
               peak_flops_per_device: float | None = None, num_devices: int = 1,
               progress: bool = True, name: str = 'train', clock: Callable[[], float] = time.perf_counter):
    self.batch_size = config.train.global_batch_size
    self.flops_per_example = flops_per_example
    self.peak = None if peak_flops_per_device is None else peak_flops_per_device * num_devices
    self.primary = jax.process_index() == 0
    self.writer = SummaryWriter(epath.Path(workdir) / name) if self.primary else None
    shown = progress and self.primary
    self.bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not shown, dynamic_ncols=True)
    self.console = contextlib.ExitStack()
    if shown:
      self.console.enter_context(logs.lines_above_progress_bars())
    self.clock = clock
    self.pending: list[tuple[int, dict[str, jax.Array]]] = []
    self.last_time, self.last_step = clock(), start_step
    self.untimed_seconds = 0.0  # of the current interval
    self.max_consecutive_skips = config.train.max_consecutive_skips
    self.consecutive_skips = self.skipped_steps = 0
    self.diverged: Divergence | None = None

  def record(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    """`step` is the step the metrics belong to (1-based: the state's step after the update)."""
    self.pending.append((step, dict(metrics)))
    self.bar.update(1)

  def flush(self) -> dict[str, float]:
    """Writes the pending interval; returns its mean metrics (empty if nothing was pending)."""
    if not self.pending:
      return {}
    fetched = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in self.pending]
    self.pending = []
    for s, m in fetched:
      self._count_skip(s, m)
    step = fetched[-1][0]
    now = self.clock()
    steps, seconds = step - self.last_step, max(now - self.last_time - self.untimed_seconds, 1e-9)
    self.last_time, self.last_step, self.untimed_seconds = now, step, 0.0
    kept = [m for _, m in fetched if not m.get('skipped')]  # an interval of skipped steps logs only the counts
    mean = {k: float(np.mean([m[k] for m in kept])) for k in (kept[0] if kept else ()) if k not in GUARD_METRICS}
    mean['skipped_steps'] = self.skipped_steps
    mean['examples_per_sec'] = steps * self.batch_size / seconds
    mean['steps_per_sec'] = steps / seconds
    if self.flops_per_example:
      mean['tflops_per_sec'] = mean['examples_per_sec'] * self.flops_per_example / 1e12
      if self.peak:
        mean['mfu'] = mean['tflops_per_sec'] * 1e12 / self.peak
    self.write(step, mean)
    return mean

  def _count_skip(self, step: int, m: Mapping[str, float]) -> None:
    if not m.get('skipped'):
      self.consecutive_skips = 0
      return
    self.consecutive_skips += 1
    self.skipped_steps += 1
    what = ', '.join(k.split('/')[1] for k in GUARD_METRICS[1:] if m.get(k)) or 'values'
    log.warning('step %d skipped: non-finite %s (params and optimizer state unchanged)', step, what)
    if self.consecutive_skips == self.max_consecutive_skips and self.diverged is None:
      self.diverged = Divergence(step, self.consecutive_skips, what)

  @contextlib.contextmanager
  def untimed(self) -> Iterator[None]:
    """Leaves the wall time inside out of the throughput. Waits first for the steps already dispatched,
    so that their time still counts."""
    jax.block_until_ready([m for _, m in self.pending])
    start = self.clock()
    try:
      yield
    finally:
      self.untimed_seconds += self.clock() - start

  def log_compile(self, step: int, seconds: float, memory_bytes: int | None = None) -> None:
    """The train step's compile time (the TensorBoard scalar compile_seconds) and its compiled memory per
    device, logged once."""
    if self.primary:
      memory = '' if memory_bytes is None else f'; {memory_bytes / 2**30:.2f} GiB per device (XLA memory analysis)'
      log.info('compiled the train step in %.1f s%s', seconds, memory)
      self.writer.scalars(step, {'compile_seconds': seconds})

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = '') -> None:
    if not self.primary:
      return
    log.info('step %d | %s', step, ' '.join(f'{prefix}{k}={_fmt(v)}' for k, v in sorted(scalars.items())))
    self.writer.scalars(step, {prefix + k: v for k, v in scalars.items()})
    self.writer.flush()
    self.bar.set_postfix(loss=scalars.get('loss', float('nan')), refresh=False)

  def close(self) -> None:
    self.bar.close()
    self.console.close()
    if self.writer is not None:
      self.writer.close()


def _fmt(v: float) -> str:
  return f'{v:.4g}' if abs(v) < 1e4 else f'{v:.3e}'
