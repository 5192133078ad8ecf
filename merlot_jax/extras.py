"""Optional dependencies: the core (model, converter, loading, training on random batches) needs none of them.

`import_extra('tensorflow', 'data')` imports a module of an extra, or raises an ImportError that names the
extra to install, so a user of the core who reaches for the input pipeline learns the one command to run.
"""

from __future__ import annotations

import importlib
import types

# The extras of pyproject.toml and what each is for (the ImportError quotes it).
EXTRAS = {
    'data': 'the tf.data input pipeline, video preprocessing and the downstream releases',
    'beam': 'corpus-scale preprocessing with Apache Beam',
    'plots': "a pretraining run's loss curves",
}


def import_extra(module: str, extra: str) -> types.ModuleType:
  """`module`, imported; ImportError naming `pip install 'merlot_jax[EXTRA]'` when it is not installed."""
  if extra not in EXTRAS:
    raise ValueError(f'unknown extra {extra!r}: one of {sorted(EXTRAS)}')
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"{module} is not installed; it comes with merlot_jax's {extra!r} extra "
                      f"({EXTRAS[extra]}): pip install 'merlot_jax[{extra}]'") from e
