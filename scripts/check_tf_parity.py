"""Compares merlot_jax with the original TF MERLOT on a reference folder; exits non-zero on a mismatch.

Prints, for every output key of the reference, the max absolute error and max |reference| (integer and
boolean keys exactly); the last line is `max relative error: X` (worst key). Fails when X > --tolerance
or a key is not produced.
"""

import argparse
import sys

from merlot_jax.convert import parity


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('reference', help='folder with config.json, variables.npz, inputs.npz, outputs.npz')
  parser.add_argument('--tolerance', type=float, default=1e-4)
  args = parser.parse_args()
  ref = parity.load_reference(args.reference)
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
  return 1 if problems or worst.relative > args.tolerance else 0


if __name__ == '__main__':
  sys.exit(main())
