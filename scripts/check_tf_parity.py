"""Compares merlot_jax with the original TF MERLOT on a reference folder; exits non-zero on a mismatch.

  python scripts/check_tf_parity.py tests/golden/tf_reference_A [--tolerance 1e-4]

The folder holds config.json, variables.npz, inputs.npz and outputs.npz. Prints, for every output key of the
reference, the max absolute error and max |reference| (integer and boolean keys exactly); the last line is
`max relative error: X` (worst key). Fails when X > --tolerance or a key is not produced.
"""

from absl import app, flags

from merlot_jax.convert import parity

_TOLERANCE = flags.DEFINE_float('tolerance', 1e-4, 'largest accepted relative error')


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    raise app.UsageError(f'expected one reference folder, got {argv[1:]}')
  ref = parity.load_reference(argv[1])
  model = parity.build_converted_model(ref)
  ours = parity.model_outputs(model, ref.config.objectives, ref.inputs, ref.outputs)
  results, missing = parity.compare(ours, ref.outputs)
  problems = parity.check_draws(ref.inputs, ref.outputs, ref.config.model.segments_per_group)
  print(f'{"key":34s} {"max abs error":>14s} {"max |ref|":>12s}')
  for r in results:
    print(f'{r.key:34s} {r.max_abs_error:14.3e} {r.max_abs_reference:12.3e}{"  (exact)" if r.exact else ""}')
  for key in parity.DRAW_KEYS:
    if key in ref.outputs:
      print(f'{key:34s} recorded random draw: used as input, consistency checked')
  for key in missing:
    problems.append(f'{key}: not produced by merlot_jax')
  worst = max(results, key=lambda r: r.relative)
  for p in problems:
    print(f'PROBLEM: {p}')
  print(f'max relative error: {worst.relative:.3e} ({worst.key})')
  return 1 if problems or worst.relative > _TOLERANCE.value else 0


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
