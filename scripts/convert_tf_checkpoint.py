"""Converts an original TF MERLOT checkpoint (rowanz/merlot) into a merlot_jax params checkpoint.

  python scripts/convert_tf_checkpoint.py CKPT_PREFIX OUT_DIR [--config configs/base.py]

CKPT_PREFIX is the tf.train.Saver prefix (e.g. /path/model.ckpt-460000). Only the model's variables are
read, one at a time (bfloat16 or float16 ones cast to float32); the optimizer slots (adam_m, adam_v) and
global_step are skipped unread. Unknown or missing variables stop the conversion with their names listed.
Prints what was converted and what was skipped.

The parameters are float32; the saved config.json keeps --config's compute settings (model.dtype,
attention_impl, remat_policy: bfloat16 for configs/base.py), which load_pretrained and finetuning's --init
build the model with. For the original's float32 math: --config.model.dtype=float32.
"""

from absl import app
from flax import nnx

from merlot_jax import flags as flags_lib
from merlot_jax.config import validate
from merlot_jax.convert.tf_checkpoint import convert_variables, open_tf_checkpoint
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.workdir import save_params

_CONFIG = flags_lib.define_config('base', 'config whose model matches the checkpoint')


def main(argv: list[str]) -> None:
  if len(argv) != 3:
    raise app.UsageError(f'expected CKPT_PREFIX OUT_DIR, got {argv[1:]}')
  ckpt_prefix, out_dir = argv[1:]
  config = validate(_CONFIG.value)
  reader = open_tf_checkpoint(ckpt_prefix)
  model = nnx.eval_shape(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0)))
  summary = convert_variables(reader, model)
  save_params(out_dir, model, config)
  print(f'{summary}\nwrote {out_dir}')


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
