"""Orbax checkpoints of model parameters (a converted TF model, or the params of a training run).

A params checkpoint is a directory with `config.json` (the full config, so the model can be rebuilt)
and `params/` (an Orbax checkpoint of the NNX parameter state as a pure dict). Orbax writes to a
temporary directory and renames it when complete, so a crash never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from merlot_jax.config import default_config, validate


def as_path(path: str | os.PathLike) -> epath.Path:
  """A local (made absolute, as Orbax wants) or remote (gs://...) path; pathlib would mangle 'gs://'."""
  text = os.fspath(path)
  return epath.Path(text if '://' in text else os.path.abspath(text))


def save_params(directory: str | pathlib.Path, model: nnx.Module, config: ml_collections.ConfigDict) -> None:
  directory = as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  params = nnx.state(model, nnx.Param).to_pure_dict()
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / 'params', params, force=True)
  tmp = directory / 'config.json.tmp'
  tmp.write_text(config.to_json(indent=1))
  tmp.replace(directory / 'config.json')


def load_config_json(directory: str | pathlib.Path) -> ml_collections.ConfigDict:
  path = as_path(directory) / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing: not a merlot_jax params checkpoint')
  config = default_config()  # fields added to the defaults since the checkpoint was written keep them
  config.update(ml_collections.ConfigDict(json.loads(path.read_text(), object_hook=_lists_to_tuples)))
  return validate(config)


def _lists_to_tuples(obj: dict) -> dict:
  """JSON has no tuples; configs use them (image_size, resnet_blocks, ...), and jit's static hashing
  of the config would otherwise see a different config and recompile."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}


def restore_params(directory: str | pathlib.Path, model: nnx.Module) -> None:
  """Restores the parameters saved by `save_params` into `model`, in the shardings its params have."""
  directory = as_path(directory)
  if not (directory / 'params').is_dir():
    raise FileNotFoundError(f'{directory / "params"} is missing: not a merlot_jax params checkpoint')
  state = nnx.state(model, nnx.Param)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
                        state.to_pure_dict())
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(directory / 'params', target)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)


# ---------------------------------------------------------------------------------------------------
# Training checkpoints: the whole TrainState plus the data position, every N steps, keeping K.


class CheckpointError(RuntimeError):
  """No checkpoint of a training run can be restored."""


class TrainCheckpointer:
  """Orbax CheckpointManager for `TrainState` (params, optimizer state, step, RNG) and the input
  position. Saves are asynchronous (training continues while arrays are written) and atomic (a step
  directory appears only when complete); `restore` places arrays straight into the target shardings.

  Layout: directory/<step>/state (the TrainState pytree) and directory/<step>/data (JSON: step and
  each host's data position, so the pipeline resumes with `start_step` / `start_position`).
  """

  def __init__(self, directory: str | pathlib.Path, *, every: int, keep: int):
    if every < 1 or keep < 1:
      raise ValueError(f'train.checkpoint_every = {every} and train.keep_checkpoints = {keep}: both must be >= 1')
    self.directory = as_path(directory)
    options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'data'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_position: int | None = None, *, force: bool = False) -> bool:
    """Starts an async save of `state` at `step` if the interval says so (or `force`); returns
    whether a save started. data_position: this host's records consumed (None if unknown)."""
    positions = [data_position]
    if jax.process_count() > 1 and data_position is not None:
      positions = [int(p) for p in multihost_utils.process_allgather(jnp.asarray(data_position))]
    data = {'step': int(step), 'positions': positions}
    return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           data=ocp.args.JsonSave(data)), force=force)

  def restore(self, abstract_state, step: int | None = None):
    """(state, data) of `step` (default: the latest). abstract_state: a pytree of
    jax.ShapeDtypeStruct with `sharding` set, like the TrainState to restore."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    data = dict(restored.data)
    positions = data.get('positions') or [None]
    data['position'] = positions[jax.process_index()] if len(positions) > jax.process_index() else None
    return restored.state, data

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
        logging.warning('checkpoint of step %d in %s cannot be restored (%s); resuming from step %d and moving '
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
