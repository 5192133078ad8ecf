"""Compares merlot_jax with the original TF MERLOT on a reference folder; exits non-zero on a mismatch.

  python scripts/check_tf_parity.py tests/golden/tf_reference_A [--mode=relative|exact] [--tolerance 1e-4]
      [--atol 1e-6] [--factor 2] [--original_factor 16]

The folder holds config.json, variables.npz, inputs.npz and outputs.npz (docs/reference.md says how to make
one). The first line says which mode ran and why; then one line per output key: its rule, pass/FAIL and the
numbers behind it; the last line is the verdict, `PASS (<mode> mode): ...` or `FAIL (<mode> mode): ...`.
It fails when a key fails its rule, a reference key is not produced, or the recorded masking draw is
inconsistent with the inputs. Integer and boolean keys are compared exactly in both modes.
"""

import jax
from absl import app, flags

from merlot_jax.convert import parity

_MODE = flags.DEFINE_enum('mode', 'relative', ['relative', 'exact'],
                          'relative: ours against the original within --tolerance (shallow references); exact: '
                          'ours and the original against merlot_jax in float64 (any depth)')
_TOLERANCE = flags.DEFINE_float('tolerance', parity.DEFAULT_RTOL, 'relative mode: largest accepted relative error')
_ATOL = flags.DEFINE_float('atol', parity.DEFAULT_ATOL, 'absolute tolerance for zero or near-zero references')
_FACTOR = flags.DEFINE_float('factor', parity.EXACT_FACTOR, "exact mode: merlot_jax's error against float64 may "
                             "be at most this many times the original's (plus a floor)")
_ORIGINAL_FACTOR = flags.DEFINE_float('original_factor', parity.ORIGINAL_FACTOR, "exact mode: the original's error "
                                      "against float64 may be at most this many times merlot_jax's (plus a floor)")

WHY = {
    'relative': ('each float key passes when its max abs error <= tolerance x max|ref| (atol where max|ref| is '
                 'zero or too small). One float32 pass: right for shallow references such as tests/golden, whose '
                 "float32 noise is far below the tolerance. For a deep model (the paper's) use --mode=exact: "
                 "there both sides' float32 rounding nears the tolerance and the verdict depends on the input."),
    'exact': ('merlot_jax evaluated in float64 on the same weights and inputs is the exact value; a float key '
              "passes when merlot_jax's float32 error against it is at most {factor:g}x the original's and the "
              "original's at most {original_factor:g}x merlot_jax's, each plus a floor ({ulps} float32 ulps of the "
              'key, at least atol): both are then float32 roundings of the same math, at any depth. Accuracies are '
              'judged only where no counted argmax is a near-tie.'),
}


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    raise app.UsageError(f'expected one reference folder, got {argv[1:]}')
  ref = parity.load_reference(argv[1])
  mode, chosen = _MODE.value, 'chosen by --mode' if flags.FLAGS['mode'].present else 'the default'
  print(f'mode: {mode} ({chosen}): '
        + WHY[mode].format(factor=_FACTOR.value, original_factor=_ORIGINAL_FACTOR.value, ulps=parity.FLOOR_ULPS))
  model = parity.build_converted_model(ref)
  draws = {k: ref.outputs[k] for k in parity.DRAW_KEYS if k in ref.outputs}
  ours, ours_decisions = jax.device_get(parity.forward(model, ref.config.objectives, ref.inputs, draws))
  if mode == 'exact':
    exact, exact_decisions = parity.exact_outputs(model, ref.config.objectives, ref.inputs, draws)
    verdicts, missing = parity.check_exact(ours, ref.outputs, exact, ours_decisions, exact_decisions,
                                           _FACTOR.value, _ORIGINAL_FACTOR.value, _ATOL.value)
  else:
    verdicts, missing = parity.check_relative(ours, ref.outputs, _TOLERANCE.value, _ATOL.value)
  problems = parity.check_draws(ref.inputs, ref.outputs, ref.config.model.segments_per_group)
  problems += [f'{key}: not produced by merlot_jax' for key in missing]
  print(f'{"key":34s} {"rule":9s} verdict')
  for v in verdicts:
    print(f'{v.key:34s} {v.rule:9s} {"pass" if v.passed else "FAIL"}  {v.detail}')
  for key in draws:
    print(f'{key:34s} {"input":9s} -     recorded random draw: used as input, consistency checked')
  for p in problems:
    print(f'PROBLEM: {p}')
  line = parity.summary(mode, verdicts, problems)
  print(line)
  return 0 if line.startswith('PASS') else 1


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
