"""Run Python code in a subprocess where the optional dependencies are not installed, as after a core
`pip install merlot_jax`: TensorFlow, TensorFlow Datasets, Apache Beam and PyAV are found nowhere on sys.path."""

import subprocess
import sys
import textwrap

NOT_INSTALLED = ('tensorflow', 'tensorflow_datasets', 'apache_beam', 'av')

_PRELUDE = f'''
import importlib.machinery
import sys


class NotInstalled(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    return None if name.split('.')[0] in {NOT_INSTALLED!r} else super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = NotInstalled
'''


def run_without_extras(code: str, cwd, timeout: float = 600) -> subprocess.CompletedProcess:
  """Runs `code` (dedented) after the prelude; the result's stdout/stderr are text."""
  return subprocess.run([sys.executable, '-c', _PRELUDE + textwrap.dedent(code)], cwd=cwd, capture_output=True,
                        text=True, timeout=timeout)
