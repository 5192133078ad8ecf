"""Ahead-of-time compile of the full train step for a TPU slice, on this (CPU) host; prints per-device memory
against HBM (compiled), XLA's FLOPs and bytes accessed of the step compiled unrolled (compiled), the analytic
FLOPs, and two lower bounds on the step time: compute (FLOPs at peak) and roofline (FLOPs at peak or bytes at
HBM bandwidth). Nothing is measured: there is no step time or MFU without a TPU. Exits 1 when the step does
not fit.

  python scripts/aot_compile.py --config configs/base.py --topology v3-1024
  python scripts/aot_compile.py --config configs/base.py --topology v3-1024 --nounrolled_cost   # memory only
  python scripts/aot_compile.py --config configs/base.py --topology v5e-256 --config.model.remat_policy=full
"""

import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the TPU is only a compile target here
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from merlot_jax import flags as flags_lib  # noqa: E402
from merlot_jax.config import validate  # noqa: E402
from merlot_jax.pretraining.task import PRETRAINING  # noqa: E402
from merlot_jax.train import aot  # noqa: E402

_CONFIG = flags_lib.define_config(None, 'config name (configs/NAME.py) or file')
_TOPOLOGY = flags.DEFINE_string('topology', None, 'TPU slice: v3-1024, v4-256, v5e-256 (v5litepod-256), v5p-512, '
                                'or libtpu form such as v5e:2x2')
_UNROLLED_COST = flags.DEFINE_bool(
    'unrolled_cost', True, "also compile the step unrolled (model.scan_layers=False) for XLA's FLOPs and bytes "
    'accessed of every layer and the roofline bound; about doubles the compile time (docs/aot.md)')
flags.mark_flags_as_required(['config', 'topology'])


def main(argv) -> None:
  del argv
  config = validate(_CONFIG.value)
  try:
    report, _ = aot.compile_train_step(config, PRETRAINING, _TOPOLOGY.value, unrolled_cost=_UNROLLED_COST.value)
  except aot.DoesNotFitError as e:
    print(f'DOES NOT FIT: {e}', file=sys.stderr)
    sys.exit(1)
  print(report.format())


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
