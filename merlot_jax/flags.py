"""The scripts' `--config` flag: a config's name ('tiny', 'base', 'finetune_vcr', ...) or a config file's path,
with ml_collections' `--config.x.y=value` overrides, so that installed commands run from any directory."""

from __future__ import annotations

import importlib.util
import os

from absl import flags
from ml_collections import config_flags

from merlot_jax.config import config_names


def config_file(name_or_path: str) -> str:
  """The file of a named config (configs/NAME.py, installed as merlot_jax.configs.NAME); a path unchanged."""
  if name_or_path in config_names():
    return importlib.util.find_spec(f'merlot_jax.configs.{name_or_path}').origin
  return name_or_path


class _NamedConfigParser(flags.ArgumentParser):
  """ml_collections' config file parser, given the file of a named config."""

  def __init__(self, file_parser: flags.ArgumentParser):
    self._file_parser = file_parser

  def parse(self, argument: str):
    path = config_file(argument)
    if not os.path.isfile(path.split(':', 1)[0]):  # ml_collections passes what follows a colon to get_config
      raise ValueError(f'{argument}: no such config file, and not a config name (one of {config_names()})')
    return self._file_parser.parse(path)

  def flag_type(self) -> str:
    return self._file_parser.flag_type()


def define_config(default: str | None, help_string: str, name: str = 'config') -> flags.FlagHolder:
  """`--config=NAME_OR_PATH` (unlocked, so scripts may fill derived fields) with `--config.x.y=` overrides."""
  holder = config_flags.DEFINE_config_file(name, default and config_file(default), help_string, lock_config=False)
  flags.FLAGS[name].parser = _NamedConfigParser(flags.FLAGS[name].parser)
  return holder
