"""The console shows the project's lines and warnings, the run's log file everything; throughput
leaves out what `untimed()` wraps."""

import logging
import time

import jax.numpy as jnp
import pytest

from merlot_jax.train import logs, metrics
from tests.train.batches import micro_config


class _ListHandler(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def _log(path: str, level: int, message: str) -> None:
  logging.getLogger().handle(logging.makeLogRecord(
      {'name': 'absl', 'levelno': level, 'levelname': logging.getLevelName(level), 'pathname': path,
       'msg': message}))


def test_library_info_goes_to_the_file_only(tmp_path):
  console = _ListHandler()
  root = logging.getLogger()
  root.addHandler(console)
  library = '/usr/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py'
  project = logs.__file__
  try:
    with logs.library_info_to_file(tmp_path / 'log.txt'):
      _log(library, logging.INFO, 'CheckpointManager options dump')
      _log(library, logging.WARNING, 'orbax warning')
      _log(project, logging.INFO, 'step 10 | loss=1.0')
    _log(library, logging.INFO, 'after the run')  # the filter is gone again
  finally:
    root.removeHandler(console)
  assert console.messages == ['orbax warning', 'step 10 | loss=1.0', 'after the run']
  written = (tmp_path / 'log.txt').read_text()
  for message in ('CheckpointManager options dump', 'orbax warning', 'step 10 | loss=1.0'):
    assert message in written
  assert 'after the run' not in written


def test_throughput_leaves_out_untimed_work(tmp_path):
  logger = metrics.MetricsLogger(micro_config(), tmp_path, total_steps=4, start_step=0, progress=False)
  for step in (1, 2):
    time.sleep(0.1)  # a 'train step'
    logger.record(step, {'loss': jnp.float32(1.0)})
  with logger.untimed():  # an eval or a checkpoint save
    time.sleep(1.0)
  mean = logger.flush()
  logger.close()
  # 2 steps in ~0.2 s of training: ~10 steps/s; counting the untimed second would give ~1.7.
  assert 5 < mean['steps_per_sec'] < 11, mean
  assert mean['examples_per_sec'] == pytest.approx(mean['steps_per_sec'] * 8)
