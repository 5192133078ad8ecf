"""Exports a training workdir's parameters (one step, default the latest) as a params checkpoint.

  python scripts/export_params.py WORKDIR OUT_DIR [--step=S]

OUT_DIR gets config.json and params/ (the model only, no optimizer state): what finetuning's --init,
load_pretrained and the released-checkpoint converter all read. A finetuning --init may also name the
workdir itself; the export is the smaller, self-contained thing to keep or share.
"""

from absl import app, flags

from merlot_jax.pretrained import load_pretrained
from merlot_jax.workdir import save_params

_STEP = flags.DEFINE_integer('step', None, 'the checkpoint step to export (default: the latest)')


def main(argv: list[str]) -> None:
  if len(argv) != 3:
    raise app.UsageError(f'expected WORKDIR OUT_DIR, got {argv[1:]}')
  workdir, out_dir = argv[1:]
  model, config = load_pretrained(workdir, step=_STEP.value)
  save_params(out_dir, model, config)
  print(f'exported the parameters of {workdir} (step {_STEP.value or "latest"}) to {out_dir}')


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
