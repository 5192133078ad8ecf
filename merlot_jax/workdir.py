"""A training run's config.json: written by the trainer, checked when a run resumes.

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
import pathlib
import shutil
from typing import Any

import ml_collections

from merlot_jax.config import ConfigError
from merlot_jax.train.checkpoint import load_config_json

CONFIG_FILE = 'config.json'
# Fields whose change makes a resumed run a different run (prefixes of dotted names).
RUN_DEFINING = ('model.', 'objectives.', 'optim.', 'data.', 'finetune.', 'train.global_batch_size')


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


def _write(path: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(config.to_json(indent=1))
  os.replace(tmp, path)


def check_and_write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict, *,
                           resumed_step: int | None, override_ok: bool = False, write: bool = True) -> None:
  """Writes workdir/config.json for a fresh run; for a run resumed at `resumed_step`, first compares it
  with the saved one: run-defining changes raise ConfigChangeError (nothing written) unless
  `override_ok`; any accepted change is logged and the saved file kept as config.until_step_<S>.json.
  Every process checks; only the one with `write` (process 0) writes."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if resumed_step is None or not path.is_file():
    if resumed_step is not None:
      logging.warning('%s is missing: resuming at step %d without a config to check against', path, resumed_step)
    if write:
      _write(path, config)
    return
  changes = config_changes(load_config_json(workdir), config)
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
  logging.warning('resuming at step %d with config changes (saved -> new):\n%s', resumed_step, listed)
  if write:  # config.json exists throughout, for the other processes reading it
    shutil.copyfile(path, path.with_name(f'config.until_step_{resumed_step}.json'))
    _write(path, config)
