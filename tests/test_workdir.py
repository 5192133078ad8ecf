"""config.json of a run: written fresh, checked on resume (run-defining changes refused, naming each
field; length and intervals allowed with a warning), earlier configs kept."""

import json
import logging

import pytest

from merlot_jax import workdir
from tests.train.batches import micro_config


def _saved(tmp_path) -> dict:
  return json.loads((tmp_path / 'config.json').read_text())


def test_a_fresh_run_writes_its_config(tmp_path):
  config = micro_config()
  workdir.check_and_write_config(tmp_path, config, resumed_step=None)
  assert _saved(tmp_path) == json.loads(config.to_json())


def test_resuming_with_a_run_defining_change_is_refused_naming_every_field(tmp_path):
  workdir.check_and_write_config(tmp_path, micro_config(), resumed_step=None)
  before = (tmp_path / 'config.json').read_bytes()
  changed = micro_config()
  changed.optim.learning_rate = 1e-3
  changed.model.hidden_size = 128
  changed.train.global_batch_size = 16
  changed.train.total_steps = 200  # allowed on its own, listed with the rest
  with pytest.raises(workdir.ConfigChangeError) as error:
    workdir.check_and_write_config(tmp_path, changed, resumed_step=4)
  message = str(error.value)
  for line in ('model.hidden_size: 64 -> 128', 'optim.learning_rate: 0.003 -> 0.001',
               'train.global_batch_size: 8 -> 16', 'train.total_steps: 100 -> 200'):
    assert line in message, message
  assert (tmp_path / 'config.json').read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json']


def test_a_longer_run_and_new_intervals_resume_with_a_warning_and_keep_the_old_config(tmp_path, caplog):
  workdir.check_and_write_config(tmp_path, micro_config(), resumed_step=None)
  longer = micro_config()
  longer.train.total_steps, longer.train.log_every = 300, 5
  with caplog.at_level(logging.WARNING):
    workdir.check_and_write_config(tmp_path, longer, resumed_step=4)
  assert 'train.total_steps: 100 -> 300' in caplog.text and 'train.log_every: 1 -> 5' in caplog.text
  assert _saved(tmp_path)['train']['total_steps'] == 300
  assert json.loads((tmp_path / 'config.until_step_4.json').read_text())['train']['total_steps'] == 100


def test_override_accepts_any_change(tmp_path):
  workdir.check_and_write_config(tmp_path, micro_config(), resumed_step=None)
  changed = micro_config()
  changed.optim.learning_rate = 1e-3
  workdir.check_and_write_config(tmp_path, changed, resumed_step=4, override_ok=True)
  assert _saved(tmp_path)['optim']['learning_rate'] == 1e-3


def test_an_unchanged_config_leaves_the_files_alone(tmp_path):
  workdir.check_and_write_config(tmp_path, micro_config(), resumed_step=None)
  workdir.check_and_write_config(tmp_path, micro_config(), resumed_step=4)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json']
