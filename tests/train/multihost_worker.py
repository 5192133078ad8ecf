"""Subprocess entry for the multi-host tests: trains the micro config on synthetic batches, each
process feeding its own rows of the (deterministic) global batch.

usage: multihost_worker.py WORKDIR STEPS NUM_PROCESSES PROCESS_ID PORT [CHECKPOINT_EVERY [BATCH_SECONDS]]
With NUM_PROCESSES > 1 it joins a localhost cluster (coordinator on PORT) before jax starts; the
devices per process come from XLA_FLAGS. Resumes from WORKDIR's checkpoint if one is there (with
STEPS equal to its step, that is a pure restore). CHECKPOINT_EVERY defaults to STEPS. BATCH_SECONDS > 0
slows each batch down by that long and writes the number of batches fed so far to WORKDIR/fed.<process>,
so that a test can signal a run in the middle.
Prints 'final <process> <step> <param checksum> <held-out loss>'.
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from merlot_jax.data.host_batches import StepIndexed  # noqa: E402
from merlot_jax.pretraining.task import PRETRAINING  # noqa: E402
from merlot_jax.train import loop, setup  # noqa: E402
from tests.train.batches import micro_config, synthetic_batch, synthetic_batches  # noqa: E402

GLOBAL_BATCH = 8


def host_rows(batches, config):
  """This process's contiguous slice of each global batch (devices are ordered by process)."""
  n, i = jax.process_count(), jax.process_index()
  per_host = config.train.global_batch_size // n
  for batch in batches:
    yield {k: v[i * per_host:(i + 1) * per_host] for k, v in batch.items()}


def slowed(batches, seconds: float, progress: pathlib.Path):
  """`batches`, each after `seconds`, counting those fed in `progress`."""
  for fed, batch in enumerate(batches, 1):
    time.sleep(seconds)
    progress.write_text(str(fed))
    yield batch


def main(workdir: str, steps: str, num_processes: str, process_id: str, port: str, checkpoint_every: str = '0',
         batch_seconds: str = '0') -> None:
  if int(num_processes) > 1:
    jax.distributed.initialize(coordinator_address=f'localhost:{port}', num_processes=int(num_processes),
                               process_id=int(process_id), initialization_timeout=120)
  config = micro_config(data=2, fsdp=2)
  config.train.global_batch_size = GLOBAL_BATCH
  config.train.total_steps = int(steps)
  config.train.checkpoint_every = int(checkpoint_every) or int(steps)
  config.train.log_every = 1

  def batches(start, _):
    rows = host_rows(synthetic_batches(config, GLOBAL_BATCH, start_step=start), config)
    if float(batch_seconds) > 0:
      rows = slowed(rows, float(batch_seconds), pathlib.Path(workdir) / f'fed.{jax.process_index()}')
    return StepIndexed(rows)

  state = loop.train(config, PRETRAINING, workdir, batches, progress=False)
  checksum = jax.jit(lambda p: sum(jnp.abs(x.astype(jnp.float32)).sum() for x in jax.tree.leaves(p)))(state.params)
  held_out = host_rows(iter([synthetic_batch(config, GLOBAL_BATCH, seed=10**6)]), config)
  loss = loop.evaluate(setup.build(config, PRETRAINING), state, held_out)['loss']
  print('final', jax.process_index(), int(state.step), repr(float(checksum)), repr(loss), flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
