"""Subprocess entry for the resume tests: trains the micro config on synthetic batches.

usage: run_training.py WORKDIR TOTAL_STEPS CHECKPOINT_EVERY [BATCH_SECONDS]; prints 'final <step> <checksum>' at
the end. BATCH_SECONDS delays each batch, so that a test can signal the run between two checkpoints.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from merlot_jax.pretraining.task import PRETRAINING  # noqa: E402
from merlot_jax.train import loop  # noqa: E402
from tests.train.batches import micro_config, synthetic_batches, throttled  # noqa: E402


def main(workdir: str, total_steps: str, every: str, batch_seconds: str = '0') -> None:
  config = micro_config(data=2, fsdp=2, tensor=2)
  config.train.total_steps, config.train.checkpoint_every = int(total_steps), int(every)
  config.train.log_every = 1
  batches = lambda start, _: throttled(synthetic_batches(config, 8, start_step=start), float(batch_seconds))
  state = loop.train(config, PRETRAINING, workdir, batches, progress=False)
  checksum = sum(float(np.abs(np.asarray(x, np.float64)).sum()) for x in jax.tree.leaves(state.params))
  print('final', int(state.step), repr(checksum), flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
