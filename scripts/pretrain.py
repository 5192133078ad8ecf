"""MERLOT pretraining; resumes from --workdir when it holds a checkpoint.

  python scripts/pretrain.py --config configs/demo.py --workdir /tmp/merlot_demo \
      --config.train.total_steps=20
"""

import jax
from absl import app, flags

from merlot_jax import flags as flags_lib
from merlot_jax.checkpoint import as_path
from merlot_jax.config import validate
from merlot_jax.data.pipeline import check_corpus, make_dataset
from merlot_jax.pretraining.task import PRETRAINING
from merlot_jax.train import logs, loop

_CONFIG = flags_lib.define_config(None, 'config name (configs/NAME.py) or file')
_WORKDIR = flags.DEFINE_string('workdir', None, 'checkpoints, TensorBoard events and config.json go here')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'multi-host run (TPU pod): jax.distributed.initialize() '
                                  'with the coordinator auto-detected')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'multi-process run on any cluster or on localhost: '
                                   'HOST:PORT where process 0 serves (with --num_processes, --process_id)')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'processes of the run (with --coordinator_address)')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'this process, 0 .. num_processes-1 (with '
                                   '--coordinator_address)')
_PEAK = flags.DEFINE_float('peak_tflops_per_device', None, 'accelerator peak TFLOP/s per device, for MFU')
_OVERRIDE = flags.DEFINE_bool('config_override_ok', False, 'resume even if the config changes what the run trains '
                               '(model, objectives, optimizer, data, global batch size)')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit):
    if None in explicit or _DISTRIBUTED.value:
      raise app.UsageError('--coordinator_address, --num_processes and --process_id go together (given: '
                           f'{explicit}), and replace --distributed\'s auto-detection')
    jax.distributed.initialize(*explicit)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  config = validate(_CONFIG.value)
  d = config.data
  if not d.train_pattern:
    raise app.UsageError('config.data.train_pattern is empty: point it at the corpus shards '
                         '(scripts/make_synthetic_corpus.py writes a built-in one)')
  for pattern in filter(None, (d.train_pattern, d.eval_pattern)):  # before the workdir gets its first file
    check_corpus(config, pattern, jax.process_count())
  workdir = as_path(_WORKDIR.value)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
  train = lambda start, position: make_dataset(config, d.train_pattern, train=True, seed=d.seed,
                                               start_step=start, start_position=position)
  evaluate = None
  if d.eval_pattern:
    evaluate = lambda: make_dataset(config, d.eval_pattern, train=False, seed=d.seed, shuffle_frames=True)
  peak = None if _PEAK.value is None else _PEAK.value * 1e12
  with logs.library_info_to_file(workdir / 'log.txt' if jax.process_index() == 0 else None):
    loop.train(config, PRETRAINING, workdir, train, eval_batches_factory=evaluate, peak_flops_per_device=peak,
               config_override_ok=_OVERRIDE.value)


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
