"""Converts an original TF MERLOT checkpoint (rowanz/merlot) into a merlot_jax params checkpoint.

  python scripts/convert_tf_checkpoint.py CKPT_PREFIX OUT_DIR [--config configs/base.py]

CKPT_PREFIX is the tf.train.Saver prefix (e.g. /path/model.ckpt-460000). Optimiser slots and
global_step are skipped; unknown or missing variables stop the conversion with their names listed.
"""

import argparse

from flax import nnx

from merlot_jax.config import load_config
from merlot_jax.convert.tf_checkpoint import convert_variables, read_tf_checkpoint
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.train.checkpoint import save_params


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('ckpt_prefix')
  parser.add_argument('out_dir')
  parser.add_argument('--config', default='configs/base.py', help='config whose model matches the checkpoint')
  args = parser.parse_args()
  config = load_config(args.config)
  config.model.dtype = 'float32'
  variables = read_tf_checkpoint(args.ckpt_prefix)
  model = nnx.eval_shape(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0)))
  convert_variables(variables, model)
  save_params(args.out_dir, model, config)
  print(f'converted {len(variables)} TF variables into {args.out_dir}')


if __name__ == '__main__':
  main()
