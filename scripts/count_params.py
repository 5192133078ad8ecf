"""Prints the parameter count of a config's model (last line: the total), without allocating it.

  python scripts/count_params.py --config configs/base.py [--config.model.num_joint_layers=6]
"""

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from merlot_jax import flags as flags_lib
from merlot_jax.config import validate
from merlot_jax.models.merlot import build_model

_CONFIG = flags_lib.define_config(None, 'config name (configs/NAME.py) or file')
flags.mark_flags_as_required(['config'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = validate(_CONFIG.value)
  state = nnx.state(nnx.eval_shape(lambda: build_model(config)), nnx.Param)
  leaves = jax.tree_util.tree_leaves_with_path(state)
  by_top: dict[str, int] = {}
  for path, leaf in leaves:
    top = str(getattr(path[0], 'key', path[0]))
    by_top[top] = by_top.get(top, 0) + int(np.prod(leaf.shape))
  for name, count in sorted(by_top.items()):
    print(f'{name:28s} {count:>14,d}')
  print(f'arrays: {len(leaves)}')
  print(f'total parameters: {sum(by_top.values())}')


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
