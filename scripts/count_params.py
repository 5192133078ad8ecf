"""Prints the parameter count of a config's model (last line: the total), without allocating it."""

import argparse

import jax
import numpy as np
from flax import nnx

from merlot_jax.config import load_config
from merlot_jax.models.merlot import build_model


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('config', help='a config file, e.g. configs/base.py')
  args = parser.parse_args()
  config = load_config(args.config)
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


if __name__ == '__main__':
  main()
