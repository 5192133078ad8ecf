"""The largest per-device batch whose compiled train step fits in memory, in few compiles and within a deadline.

Doubling from 1 and bisecting takes about 2 log2(answer) compiles, minutes each for the paper's model on a GPU.
A step's compiled memory is close to affine in the batch (fixed: parameters and optimizer state; per example:
activations), so this search extrapolates the line through the two nearest sizes tried (regula falsi) from a
starting guess, and ends after about 3-4 compiles from batch 1, 2 from a good guess, with the largest size
known to fit next to the smallest known not to (or the limit). It stops early when `can_continue()` says the
time is up, and says so. `scripts/benchmark.py train --find_max_batch` and the device check both use it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from merlot_jax.train import bench
from merlot_jax.train import compiled as compiled_lib
from merlot_jax.train.task import Task

TOO_BIG = int(np.iinfo(np.int64).max)  # the measure of a size whose compile ran out of memory


@dataclasses.dataclass(frozen=True)
class Search:
  best: int  # the largest per-device batch known to fit (0: not even 1 does)
  tried: dict[int, int]  # every size tried -> its compiled bytes per device (TOO_BIG: its compile ran out of memory)
  complete: bool  # best + 1 is known not to fit, or best is the limit; False: stopped by can_continue
  too_big: int | None  # the smallest size known not to fit


def _line_guess(points: list[tuple[int, int]], memory: int) -> int | None:
  """The batch where the line through two (batch, bytes) points reaches `memory` (None: not increasing)."""
  (x1, y1), (x2, y2) = points
  if x1 == x2 or y2 <= y1:
    return None
  return int(x1 + (memory - y1) * (x2 - x1) // (y2 - y1))


def _next_size(tried: dict[int, int], memory: int, lo: int, hi: int) -> int:
  """A size strictly between lo (fits; 0: none known) and hi (does not fit, or limit + 1)."""
  finite = sorted((b, y) for b, y in tried.items() if y != TOO_BIG)
  fits = [p for p in finite if p[1] <= memory]
  over = [p for p in finite if p[1] > memory]
  if fits and over:
    points = [fits[-1], over[0]]
  elif len(fits) >= 2:
    points = fits[-2:]
  elif len(over) >= 2:
    points = over[:2]
  else:
    points = None
  guess = points and _line_guess(points, memory)
  if guess is None or guess >= hi:  # one point, a flat line, or a line past a size known not to fit (a compile
    guess = 2 * lo if lo and hi == TOO_BIG else (lo + hi) // 2  # that ran out of memory): double, or bisect
  return min(max(guess, lo + 1), hi - 1)  # at or below lo: the line says lo is the edge, so try lo + 1


def search_max_batch(measure: Callable[[int], int], memory: int, *, start: int = 1, limit: int = 4096,
                     can_continue: Callable[[], bool] = lambda: True) -> Search:
  """The largest per-device batch b <= `limit` with measure(b) <= `memory`, measure(b) being the compiled bytes
  per device (assumed to grow with b), trying `start` first."""
  tried: dict[int, int] = {}
  lo, hi = 0, limit + 1  # largest known fit; smallest known misfit (limit + 1: none known)
  size = min(max(start, 1), limit)
  while hi - lo > 1:
    if not can_continue():
      return Search(lo, tried, False, None if hi > limit else hi)
    tried[size] = measure(size)
    lo, hi = (max(lo, size), hi) if tried[size] <= memory else (lo, min(hi, size))
    if hi - lo > 1:
      size = _next_size(tried, memory, lo, hi if hi <= limit else TOO_BIG)
      size = min(size, limit)
  return Search(lo, tried, True, None if hi > limit else hi)


def compiled_step_bytes(config: ml_collections.ConfigDict, task: Task, per_device_batch: int) -> tuple[int, float]:
  """(compiled bytes per device, compile seconds) of the train step at `per_device_batch`; a compile that runs
  out of memory measures TOO_BIG."""
  start = time.perf_counter()
  try:
    compiled = bench.compile_step(bench.with_batch(config, per_device_batch), task)[0]
    return bench.compiled_bytes(compiled), time.perf_counter() - start
  except jax.errors.JaxRuntimeError as e:
    if compiled_lib.is_out_of_memory(e):
      return TOO_BIG, time.perf_counter() - start
    raise


def find_max_batch(config: ml_collections.ConfigDict, task: Task, memory: int, *, start: int = 1, limit: int = 4096,
                   log: Callable[[str], None] = print) -> Search:
  """search_max_batch over the compiled train step of `config` at each size, one log line per size tried."""

  def measure(b: int) -> int:
    size, seconds = compiled_step_bytes(config, task, b)
    shown = 'out of memory' if size == TOO_BIG else f'{size / bench.GiB:.2f} GiB'
    log(f'per-device batch {b}: {shown} compiled in {seconds:.0f} s: {"fits" if size <= memory else "too big"}')
    return size

  return search_max_batch(measure, memory, start=start, limit=limit)
