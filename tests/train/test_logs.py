"""The console shows the project's lines (chosen by logger name) and everyone's warnings, above the progress
bar; the run's log file everything; throughput leaves out what `untimed()` wraps."""

import logging
import pathlib
import re
import sys

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


@pytest.fixture
def console():
  """A console handler on the root logger, as absl's app.run installs one."""
  handler = _ListHandler()
  root = logging.getLogger()
  root.addHandler(handler)
  yield handler
  root.removeHandler(handler)


def test_library_info_goes_to_the_file_only(tmp_path, console):
  with logs.library_info_to_file(tmp_path / 'log.txt'):
    logging.getLogger('orbax').info('CheckpointManager options dump')
    logging.getLogger('absl').info('absl info from a library')
    logging.info('root logger info')
    logging.getLogger('orbax').warning('orbax warning')
    logging.getLogger('merlot_jax.train.metrics').info('step 10 | loss=1.0')
    logging.getLogger('merlot_jax.scripts.run_demo').info('train corpus: 8 examples')
    logging.getLogger('merlot_jaxx').info('a lookalike name')
  logging.getLogger('orbax').warning('after the run')  # the filter and the file are gone again
  assert console.messages == ['orbax warning', 'step 10 | loss=1.0', 'train corpus: 8 examples', 'after the run']
  written = (tmp_path / 'log.txt').read_text()
  for message in ('CheckpointManager options dump', 'absl info from a library', 'root logger info', 'orbax warning',
                  'step 10 | loss=1.0', 'train corpus: 8 examples', 'a lookalike name'):
    assert message in written
  assert 'after the run' not in written


def _shown(line: str) -> str:
  """What a terminal shows of one line: each carriage return goes back to its start, and later text
  overwrites earlier text."""
  shown = ''
  for part in line.split('\r'):
    shown = part + shown[len(part):]
  return shown


def test_metric_lines_are_written_above_the_progress_bar(tmp_path, capsys):
  stream = logging.StreamHandler(sys.stderr)  # capsys's stderr, where the bar draws too
  root = logging.getLogger()
  root.addHandler(stream)
  try:
    with logs.library_info_to_file(None):
      logger = metrics.MetricsLogger(micro_config(), tmp_path, total_steps=4, start_step=0, progress=True)
      for step in (1, 2):
        logger.record(step, {'loss': jnp.float32(1.0)})
      logger.flush()
      logger.close()
  finally:
    root.removeHandler(stream)
  assert stream not in root.handlers and not any(isinstance(h, logs._AboveBars) for h in root.handlers)
  lines = [_shown(line) for line in capsys.readouterr().err.split('\n')]
  assert any('%|' in line for line in lines), lines  # the bar was drawn
  metric_lines = [line for line in lines if 'step 2 |' in line]
  assert len(metric_lines) == 1 and metric_lines[0].startswith('step 2 | ') and '%|' not in metric_lines[0], lines


def test_throughput_leaves_out_untimed_work(tmp_path):
  now = [0.0]
  logger = metrics.MetricsLogger(micro_config(), tmp_path, total_steps=4, start_step=0, progress=False,
                                 clock=lambda: now[0])
  for step in (1, 2):
    now[0] += 0.1  # a 'train step'
    logger.record(step, {'loss': jnp.float32(1.0)})
  with logger.untimed():  # an eval or a checkpoint save
    now[0] += 1.0
  mean = logger.flush()
  logger.close()
  # 2 steps in 0.2 s of training: 10 steps/s; counting the untimed second would give ~1.7.
  assert mean['steps_per_sec'] == pytest.approx(10)
  assert mean['examples_per_sec'] == pytest.approx(mean['steps_per_sec'] * 8)


def test_project_code_logs_through_named_loggers():
  """The console rule goes by logger name, so a module-level `logging.info(...)` (the root logger) would
  send a project line to log.txt only: every module logs through `logging.getLogger(__name__)` or a
  'merlot_jax.*' name."""
  root = pathlib.Path(__file__).resolve().parents[2]
  offenders = [f'{path.relative_to(root)}:{number}'
               for folder in ('merlot_jax', 'scripts') for path in sorted((root / folder).rglob('*.py'))
               for number, line in enumerate(path.read_text().splitlines(), 1)
               if re.search(r'\blogging\.(debug|info|warning|error|exception|critical)\b', line)]
  assert not offenders, offenders
