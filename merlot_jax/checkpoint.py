"""Orbax training checkpoints: the whole TrainState plus the data position, saved when the loop says,
keeping the newest K. Where they live in a run's folder is merlot_jax/workdir.py's business."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def as_path(path: str | os.PathLike) -> epath.Path:
  """A local (made absolute, as Orbax wants) or remote (gs://...) path; pathlib would mangle 'gs://'."""
  text = os.fspath(path)
  return epath.Path(text if '://' in text else os.path.abspath(text))


class CheckpointError(RuntimeError):
  """No checkpoint of a training run can be restored."""


STATE_ITEM, DATA_ITEM = 'state', 'data'  # the items of a step's folder: <step>/state and <step>/data


class TrainCheckpointer:
  """Orbax CheckpointManager for `TrainState` (params, optimizer state, step, RNG) and the input
  position. Saves are asynchronous (training continues while arrays are written) and atomic (a step
  directory appears only when complete); `restore` places arrays straight into the target shardings.

  Layout: directory/<step>/state (the TrainState pytree) and directory/<step>/data (JSON: step and
  each host's data position, so the pipeline resumes with `start_step` / `start_position`).
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int):
    if keep < 1:
      raise ValueError(f'train.keep_checkpoints = {keep}: must be >= 1')
    self.directory = as_path(directory)
    # Which steps to save is the training loop's decision (its interval, preemption, the last step).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_position: int | None = None) -> None:
    """Starts an async save of `state` at `step`. data_position: this host's records consumed (None if
    unknown)."""
    positions = [data_position]
    if jax.process_count() > 1 and data_position is not None:
      positions = [int(p) for p in multihost_utils.process_allgather(jnp.asarray(data_position))]
    data = {'step': int(step), 'positions': positions}
    self.manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                                       DATA_ITEM: ocp.args.JsonSave(data)}), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """(state, data) of `step` (default: the latest). abstract_state: a pytree of
    jax.ShapeDtypeStruct with `sharding` set, like the TrainState to restore."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    restored = self.manager.restore(step, args=ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardRestore(abstract_state), DATA_ITEM: ocp.args.JsonRestore()}))
    data = dict(restored[DATA_ITEM])
    positions = data.get('positions') or [None]
    data['position'] = positions[jax.process_index()] if len(positions) > jax.process_index() else None
    return restored[STATE_ITEM], data

  def restore_newest_readable(self, abstract_state):
    """(state, data) of the newest checkpoint that restores. Newer ones that cannot be restored (a missing
    or truncated file) are moved aside to `<step>.unreadable` with a warning naming the step and why, so
    nothing is deleted and the run saves those steps again. When none restores, raises CheckpointError
    naming each step tried and its error, and moves nothing."""
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.restore(abstract_state, step)
      except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many types for a bad file
        failed.append((step, f'{type(e).__name__}: {str(e)[:300]}'))
        continue
      for bad, why in failed:
        log.warning('checkpoint of step %d in %s cannot be restored (%s); resuming from step %d and moving '
                        'it to %d.unreadable', bad, self.directory, why, step, bad)
        self._set_aside(bad)
      return restored
    tried = '\n'.join(f'  step {step}: {why}' for step, why in failed) or '  (none)'
    raise CheckpointError(f'no checkpoint in {self.directory} can be restored; tried, newest first:\n{tried}')

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(self.directory / f'{step}.unreadable')
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until the pending save is on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
