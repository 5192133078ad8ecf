"""Converts an original TF MERLOT checkpoint (rowanz/merlot) into a merlot_jax params checkpoint.

  python scripts/convert_tf_checkpoint.py CKPT_PREFIX OUT_DIR [--config configs/base.py]

CKPT_PREFIX is the tf.train.Saver prefix (e.g. /path/model.ckpt-460000). Optimiser slots and
global_step are skipped; unknown or missing variables stop the conversion with their names listed.
"""

from absl import app
from flax import nnx

from merlot_jax import flags as flags_lib
from merlot_jax.config import validate
from merlot_jax.convert.tf_checkpoint import convert_variables, read_tf_checkpoint
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.workdir import save_params

_CONFIG = flags_lib.define_config('base', 'config whose model matches the checkpoint')


def main(argv: list[str]) -> None:
  if len(argv) != 3:
    raise app.UsageError(f'expected CKPT_PREFIX OUT_DIR, got {argv[1:]}')
  ckpt_prefix, out_dir = argv[1:]
  config = validate(_CONFIG.value)
  config.model.dtype = 'float32'
  variables = read_tf_checkpoint(ckpt_prefix)
  model = nnx.eval_shape(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0)))
  convert_variables(variables, model)
  save_params(out_dir, model, config)
  print(f'converted {len(variables)} TF variables into {out_dir}')


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
