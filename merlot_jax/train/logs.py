"""Console vs log file: the console shows this project's lines and everyone's warnings; the run's log
file keeps everything, including the libraries' INFO chatter (Orbax's manager options, barrier syncs,
read speeds), which would otherwise be most of a run's console output."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
from collections.abc import Iterator

_PROJECT_DIR = str(pathlib.Path(__file__).resolve().parents[2])  # the checkout (merlot_jax/, scripts/)
_INSTALLED = (f'{os.sep}site-packages{os.sep}', f'{os.sep}dist-packages{os.sep}')


def is_project_record(record: logging.LogRecord) -> bool:
  """True for log calls made by merlot_jax or its scripts (by the calling file, which absl keeps)."""
  path = record.pathname
  return path.startswith(_PROJECT_DIR) and not any(part in path for part in _INSTALLED)


class _ConsoleFilter(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or is_project_record(record)


@contextlib.contextmanager
def library_info_to_file(log_file: str | os.PathLike | None) -> Iterator[None]:
  """While active, libraries' INFO lines leave the console and go to `log_file` (with everything else
  at INFO and above); warnings and errors still reach the console. None: only filter the console."""
  root = logging.getLogger()
  console_filter = _ConsoleFilter()
  handlers = list(root.handlers)
  for handler in handlers:
    handler.addFilter(console_filter)
  file_handler = None
  if log_file is not None:
    pathlib.Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(filename)s:%(lineno)d] %(message)s'))
    root.addHandler(file_handler)
  previous_level = root.level
  root.setLevel(min(previous_level or logging.INFO, logging.INFO))
  try:
    yield
  finally:
    root.setLevel(previous_level)
    for handler in handlers:
      handler.removeFilter(console_filter)
    if file_handler is not None:
      root.removeHandler(file_handler)
      file_handler.close()
