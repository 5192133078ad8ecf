"""Orbax checkpoints of model parameters (a converted TF model, or the params of a training run).

A params checkpoint is a directory with `config.json` (the full config, so the model can be rebuilt)
and `params/` (an Orbax checkpoint of the NNX parameter state as a pure dict). Orbax writes to a
temporary directory and renames it when complete, so a crash never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from merlot_jax.config import validate


def save_params(directory: str | pathlib.Path, model: nnx.Module, config: ml_collections.ConfigDict) -> None:
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  params = nnx.state(model, nnx.Param).to_pure_dict()
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / 'params', params, force=True)
  tmp = directory / 'config.json.tmp'
  tmp.write_text(config.to_json(indent=1))
  tmp.replace(directory / 'config.json')


def load_config_json(directory: str | pathlib.Path) -> ml_collections.ConfigDict:
  path = pathlib.Path(directory) / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing: not a merlot_jax params checkpoint')
  return validate(ml_collections.ConfigDict(json.loads(path.read_text())))


def restore_params(directory: str | pathlib.Path, model: nnx.Module) -> None:
  """Restores the parameters saved by `save_params` into `model`, in the shardings its params have."""
  directory = pathlib.Path(directory).absolute()
  if not (directory / 'params').is_dir():
    raise FileNotFoundError(f'{directory / "params"} is missing: not a merlot_jax params checkpoint')
  state = nnx.state(model, nnx.Param)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
                        state.to_pure_dict())
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(directory / 'params', target)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
