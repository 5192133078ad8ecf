"""Runs a script of scripts/ in the test process, as `python scripts/NAME ARGS` would (absl's app.run, sys.argv),
so that it shares the process's compiled programs; afterwards the flags it defined and the logging setup of
app.run are removed, so that the next script run starts from absl's defaults."""

import logging
import runpy
import sys

from absl import app, flags

from tests.models.testlib import REPO


def run_script(name: str, *args) -> int:
  """Exit status of scripts/<name> run with `args` (str()-ed); exceptions of the script propagate."""
  path = REPO / 'scripts' / name
  app.define_help_flags()  # absl.app's own flags (--helpfull, --run_with_pdb, ...) stay: app.run defines them once
  defined, argv = set(flags.FLAGS), sys.argv
  root_level, root_handlers = logging.root.level, list(logging.root.handlers)
  sys.argv = [str(path), *map(str, args)]
  try:
    runpy.run_path(str(path), run_name='__main__')
  except SystemExit as e:  # app.run exits with main's return value
    return 0 if e.code is None else e.code
  finally:
    sys.argv = argv
    for flag in set(flags.FLAGS) - defined:
      delattr(flags.FLAGS, flag)
    logging.root.handlers[:] = root_handlers
    logging.root.setLevel(root_level)
  raise AssertionError(f'{path} returned without sys.exit: not run by app.run')
