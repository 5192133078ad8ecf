"""Ahead-of-time compile of the full train step for a TPU slice, on this (CPU) host; prints per-device
memory against HBM, FLOPs, the estimated step time and MFU. Exits 1 when the step does not fit.

  python scripts/aot_compile.py --config configs/base.py --topology v3-1024
  python scripts/aot_compile.py --config configs/base.py --topology v5e-256 --config.mesh.fsdp=-1 --remat full
"""

import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the TPU is only a compile target here
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from merlot_jax.config import validate  # noqa: E402
from merlot_jax.train import aot  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'config file (configs/*.py)', lock_config=False)
_TOPOLOGY = flags.DEFINE_string('topology', None, 'TPU slice: v3-1024, v4-256, v5e-256 (v5litepod-256), v5p-512, '
                                'or libtpu form such as v5e:2x2')
_REMAT = flags.DEFINE_enum('remat', None, ['none', 'full', 'dots_saveable'], 'overrides config.model.remat_policy')
flags.mark_flags_as_required(['config', 'topology'])


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  if _REMAT.value:
    config.model.remat_policy = _REMAT.value
  config = validate(config)
  start = time.time()
  try:
    report, _ = aot.compile_train_step(config, _TOPOLOGY.value)
  except aot.DoesNotFitError as e:
    print(f'DOES NOT FIT: {e}', file=sys.stderr)
    sys.exit(1)
  print(report.format())
  print(f'compiled in {time.time() - start:.0f} s')


if __name__ == '__main__':
  app.run(main)
