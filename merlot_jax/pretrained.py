"""Loading MERLOT parameters from disk: a params checkpoint or a training workdir, one place for every caller
(load_pretrained, finetuning's --init, story ordering, features, predict, scripts/export_params.py).

  model, config = merlot_jax.load_pretrained('converted/')            # config.json + params/
  model, config = merlot_jax.load_pretrained('workdir/demo')          # config.json + checkpoints/<step>/
  model, config = merlot_jax.load_pretrained(path, config_fn=story_config)   # a task's segment layout

The model is built as shapes only (`nnx.eval_shape`, no initialisation) and the parameters are read
straight into it. From a training workdir only the parameters of the TrainState are read (an Orbax partial
restore), never the optimizer moments, which are twice the size of the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import ml_collections
from etils import epath
from flax import nnx

from merlot_jax import workdir
from merlot_jax.checkpoint import as_path
from merlot_jax.models.merlot import MerlotModel

ConfigFn = Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]


def _checkpoint_kind(directory: epath.Path, step: int | None) -> str:
  """'params' (config.json + params/) or 'workdir' (config.json + checkpoints/); a clear error otherwise."""
  is_params, is_workdir = (directory / workdir.PARAMS_DIR).is_dir(), (directory / workdir.CHECKPOINTS_DIR).is_dir()
  if not (directory / workdir.CONFIG_FILE).is_file() or not (is_params or is_workdir):
    contents = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else 'nothing (no such folder)'
    raise FileNotFoundError(
        f'{directory}: neither a params checkpoint (config.json + params/, from save_params, '
        f'scripts/export_params.py or scripts/convert_tf_checkpoint.py) nor a training workdir (config.json + '
        f'checkpoints/, from scripts/pretrain.py); it holds {contents}')
  if is_params and step is not None:
    raise ValueError(f'{directory} is a params checkpoint (one set of parameters): step={step} applies to '
                     'training workdirs only')
  return 'params' if is_params else 'workdir'


def pretrained_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config saved with a params checkpoint or a training workdir (its config.json)."""
  directory = as_path(path)
  _checkpoint_kind(directory, None)
  return workdir.read_config(directory)


def restore_pretrained(path: str | os.PathLike, model: nnx.Module, step: int | None = None) -> None:
  """Reads into `model`, in the shardings its params have, the parameters of a params checkpoint or of a
  training workdir's checkpoint at `step` (default: the latest; only the params, never the optimizer state)."""
  directory = as_path(path)
  if _checkpoint_kind(directory, step) == 'params':
    workdir.restore_params(directory, model)
  else:
    state = nnx.state(model, nnx.Param)
    shape = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None))
    nnx.replace_by_pure_dict(state, workdir.restore_train_params(directory, jax.tree.map(shape, state.to_pure_dict()),
                                                                 step))
    nnx.update(model, state)


def load_pretrained(path: str | os.PathLike, *, config_fn: ConfigFn | None = None,
                    step: int | None = None) -> tuple[MerlotModel, ml_collections.ConfigDict]:
  """(model, config) from a params checkpoint (config.json + params/) or a training workdir
  (config.json + checkpoints/<step>/, the latest step unless `step` is given).

  config_fn: applied to the saved config before the model is built (e.g. story_ordering.story_config);
  it must keep every parameter shape.
  """
  config = pretrained_config(path)
  if config_fn is not None:
    config = config_fn(config)
  model = nnx.eval_shape(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0)))
  restore_pretrained(path, model, step)
  return model, config
