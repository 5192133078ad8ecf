"""Console vs log file: the console shows this project's lines and everyone's warnings; the run's log
file keeps everything, including the libraries' INFO chatter (Orbax's manager options, barrier syncs,
read speeds), which would otherwise be most of a run's console output. While a progress bar is drawn,
console lines are written above it, never onto its line.

The project's lines are told apart by logger name, so an installed package behaves like the checkout:
library modules log through `logging.getLogger(__name__)` ('merlot_jax.train.metrics', ...), and scripts,
whose `__name__` is '__main__' when run as files, through a logger named after their installed module
('merlot_jax.scripts.run_demo'). Lines logged through absl (logger 'absl', shared with Orbax and other
libraries) or the root logger count as library lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import tqdm
from etils import epath

PROJECT_LOGGER = 'merlot_jax'


def is_project_record(record: logging.LogRecord) -> bool:
  """True for lines logged through the 'merlot_jax' logger or one below it."""
  return record.name == PROJECT_LOGGER or record.name.startswith(PROJECT_LOGGER + '.')


class _ConsoleFilter(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or is_project_record(record)


class _LogFile(logging.StreamHandler):
  """The run's log file, a stream opened through etils.epath (so a gs:// workdir gets it too)."""


@contextlib.contextmanager
def library_info_to_file(log_file: str | os.PathLike | None) -> Iterator[None]:
  """While active, libraries' INFO lines leave the console and go to `log_file` (appended to, with
  everything else at INFO and above); warnings and errors still reach the console. None: only filter
  the console."""
  root = logging.getLogger()
  with contextlib.ExitStack() as stack:
    console_filter = _ConsoleFilter()
    for handler in list(root.handlers):
      handler.addFilter(console_filter)
      stack.callback(handler.removeFilter, console_filter)
    if log_file is not None:
      path = epath.Path(log_file)
      path.parent.mkdir(parents=True, exist_ok=True)
      file_handler = _LogFile(stack.enter_context(path.open('a')))
      file_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(filename)s:%(lineno)d] %(message)s'))
      root.addHandler(file_handler)
      stack.callback(root.removeHandler, file_handler)
    stack.callback(root.setLevel, root.level)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    yield


class _AboveBars(logging.Handler):
  """Hands records to `handler` with every tqdm bar on the terminal cleared first and redrawn after."""

  def __init__(self, handler: logging.Handler):
    super().__init__(handler.level)
    self.handler = handler

  def handle(self, record: logging.LogRecord) -> bool:
    if not (self.filter(record) and self.handler.filter(record)):  # nothing to write: leave the bars alone
      return False
    with tqdm.tqdm.external_write_mode():
      return bool(self.handler.handle(record))


@contextlib.contextmanager
def lines_above_progress_bars() -> Iterator[None]:
  """While active, the root logger's console handlers write each line above the tqdm bars on stdout and
  stderr instead of onto a bar's line (tqdm's logging_redirect_tqdm, for any handler, absl's included)."""
  root = logging.getLogger()
  above = {h: _AboveBars(h) for h in root.handlers if not isinstance(h, _LogFile)}
  root.handlers = [above.get(h, h) for h in root.handlers]
  try:
    yield
  finally:
    below = {wrapper: h for h, wrapper in above.items()}
    root.handlers = [below.get(h, h) for h in root.handlers]
