"""The folders merlot_jax reads and writes, in one place: a training run's workdir and a params checkpoint.

  workdir/                    (scripts/pretrain.py, scripts/finetune.py: written by train.loop.train)
    config.json               the run's config; config.until_step_<S>.json: earlier stretches of it
    checkpoints/<step>/state  the TrainState (Orbax; merlot_jax/checkpoint.py), <step>/data the data positions
    train/, eval/             TensorBoard event files (train/metrics.py)
  params checkpoint/          (save_params, scripts/convert_tf_checkpoint.py)
    config.json               the config the model is rebuilt from
    params/                   the model's parameters (Orbax pytree of the NNX Param state as a pure dict)

Orbax writes to a temporary directory and renames it when complete, and config.json is replaced
atomically, so a crash never leaves a half-written checkpoint or config. Every path goes through
etils.epath (merlot_jax/checkpoint.py's `as_path`), so a workdir may be a gs:// URL.

A resumed run must train what the checkpoint was trained for: a different model, objective, optimizer,
data or global batch size would silently change the run (or fail deep inside a restore), so it stops
before anything is written, naming every changed field. Changing how long the run is (train.total_steps)
or how it logs, evaluates and checkpoints only warns. The config of each earlier stretch of the run is
kept beside config.json as config.until_step_<S>.json.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from merlot_jax.checkpoint import DATA_ITEM, STATE_ITEM, TrainCheckpointer, as_path
from merlot_jax.config import ConfigError, default_config, validate

CONFIG_FILE = 'config.json'
CHECKPOINTS_DIR = 'checkpoints'
PARAMS_DIR = 'params'
# Fields whose change makes a resumed run a different run (prefixes of dotted names).
RUN_DEFINING = ('model.', 'objectives.', 'optim.', 'data.', 'finetune.', 'train.global_batch_size')

log = logging.getLogger(__name__)


class ConfigChangeError(ConfigError):
  """A run was resumed with a config that changes what it trains."""


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: tuple(tree) if isinstance(tree, list) else tree}


def config_changes(saved: ml_collections.ConfigDict, new: ml_collections.ConfigDict
                   ) -> list[tuple[str, Any, Any]]:
  """(dotted field, saved value, new value) for every field that differs (absent: None), sorted."""
  old, cur = _flatten(json.loads(saved.to_json())), _flatten(json.loads(new.to_json()))
  return [(k, old.get(k), cur.get(k)) for k in sorted(old.keys() | cur.keys()) if old.get(k) != cur.get(k)]


def _write(path: epath.Path, config: ml_collections.ConfigDict) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(config.to_json(indent=1))
  tmp.replace(path)


def _lists_to_tuples(obj: dict) -> dict:
  """JSON has no tuples; configs use them (image_size, resnet_blocks, ...), and jit's static hashing
  of the config would otherwise see a different config and recompile."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}


def read_config(directory: str | os.PathLike) -> ml_collections.ConfigDict:
  """The validated config.json of a workdir or params checkpoint; fields added to the defaults since it
  was written keep their defaults."""
  path = as_path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing: not a merlot_jax workdir or params checkpoint')
  config = default_config()
  config.update(ml_collections.ConfigDict(json.loads(path.read_text(), object_hook=_lists_to_tuples)))
  return validate(config)


def check_and_write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict, *,
                           resumed_step: int | None, override_ok: bool = False, write: bool = True) -> None:
  """Writes workdir/config.json for a fresh run; for a run resumed at `resumed_step`, first compares it
  with the saved one: run-defining changes raise ConfigChangeError (nothing written) unless
  `override_ok`; any accepted change is logged and the saved file kept as config.until_step_<S>.json.
  Every process checks; only the one with `write` (process 0) writes."""
  path = as_path(workdir) / CONFIG_FILE
  if resumed_step is None or not path.is_file():
    if resumed_step is not None:
      log.warning('%s is missing: resuming at step %d without a config to check against', path, resumed_step)
    if write:
      _write(path, config)
    return
  changes = config_changes(read_config(workdir), config)
  if not changes:
    return
  listed = '\n'.join(f'  {k}: {old!r} -> {new!r}' for k, old, new in changes)
  defining = [k for k, _, _ in changes if k.startswith(RUN_DEFINING)]
  if defining and not override_ok:
    raise ConfigChangeError(
        f'{path}: resuming at step {resumed_step} with a config that changes what this run trains '
        f'({", ".join(defining)}). Differing fields (saved -> new):\n{listed}\n'
        'Only train.total_steps and the logging, evaluation and checkpoint intervals may change on resume; '
        'use a new workdir, or pass --config_override_ok to resume with these changes anyway.')
  log.warning('resuming at step %d with config changes (saved -> new):\n%s', resumed_step, listed)
  if write:  # config.json exists throughout, for the other processes reading it
    path.copy(path.with_name(f'config.until_step_{resumed_step}.json'), overwrite=True)
    _write(path, config)


# Checkpoints.


def save_params(directory: str | os.PathLike, model: nnx.Module, config: ml_collections.ConfigDict) -> None:
  """Writes a params checkpoint: `model`'s parameters and the config to rebuild it."""
  directory = as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  params = nnx.state(model, nnx.Param).to_pure_dict()
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / PARAMS_DIR, params, force=True)
  _write(directory / CONFIG_FILE, config)


def restore_params(directory: str | os.PathLike, model: nnx.Module) -> None:
  """Restores the parameters saved by `save_params` into `model`, in the shardings its params have."""
  directory = as_path(directory)
  if not (directory / PARAMS_DIR).is_dir():
    raise FileNotFoundError(f'{directory / PARAMS_DIR} is missing: not a merlot_jax params checkpoint')
  state = nnx.state(model, nnx.Param)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
                        state.to_pure_dict())
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(directory / PARAMS_DIR, target)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)


def train_checkpointer(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> TrainCheckpointer:
  """The checkpoints of the run in `workdir`, keeping config.train.keep_checkpoints."""
  return TrainCheckpointer(as_path(workdir) / CHECKPOINTS_DIR, keep=config.train.keep_checkpoints)


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The complete training checkpoints (steps, ascending) of a workdir's checkpoints/ folder."""
  directory = as_path(workdir) / CHECKPOINTS_DIR
  if not directory.is_dir():
    return []
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  with ocp.CheckpointManager(directory, options=options, item_names=(STATE_ITEM, DATA_ITEM)) as manager:
    return sorted(manager.all_steps())


def restore_train_params(workdir: str | os.PathLike, target: Any, step: int | None = None) -> Any:
  """Reads only `params` of the TrainState saved at `step` (default: the latest), never the optimizer state,
  into the shapes, dtypes and shardings of `target` (a pytree of ShapeDtypeStructs)."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'{as_path(workdir) / CHECKPOINTS_DIR}: no complete training checkpoint in it')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f'{as_path(workdir) / CHECKPOINTS_DIR}: no checkpoint of step {step}; it has {steps}')
  target = {'params': target}
  args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                partial_restore=True)
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(as_path(workdir) / CHECKPOINTS_DIR / str(step) / STATE_ITEM, args=args)
  return restored['params']
