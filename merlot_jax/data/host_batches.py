"""The trainer's view of a data source: one host's numpy batches and where in its stream they have got to."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np

HostBatch = dict[str, np.ndarray]


@runtime_checkable
class HostBatches(Protocol):
  """One host's numpy batches, in order. `position` says where the next batch starts in this host's data
  stream: the trainer saves it with every checkpoint and hands it back to the batches' factory on resume.
  It is None for batches that are a function of the step alone (the factory gets the step too)."""

  position: int | None

  def __iter__(self) -> Iterator[HostBatch]: ...

  def __next__(self) -> HostBatch: ...


class StepIndexed:
  """HostBatches over an iterator whose batch k depends only on k: resumed by step, so no position."""

  position = None

  def __init__(self, batches: Iterable[HostBatch]):
    self._batches = iter(batches)

  def __iter__(self) -> StepIndexed:
    return self

  def __next__(self) -> HostBatch:
    return next(self._batches)
