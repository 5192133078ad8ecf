"""Benchmarks, one subcommand each.

  python scripts/benchmark.py data [--examples=128] [--frame_size=384,512] [--parallel_calls=K]
  python scripts/benchmark.py train --config configs/tiny.py [--steps=5] [--depths=4,12] [--peak_tflops=T]
      [--skip_flop_check] [--find_max_batch [--memory_gib=G]] [--config.model.x=... overrides]

`data`: writes a synthetic corpus of JPEG records to a temporary folder, times the full input pipeline
and bare JPEG decode + resize of the same frames (same process, cores and parallel calls) and prints
both; the last line is `pipeline/decode ratio: X`.
`train`: checks the analytic model FLOPs against XLA's cost analysis of the unrolled step (fails when they
disagree), compiles the config's train step, times it and prints achieved TFLOP/s, per-device memory and MFU
against the GPU's datasheet bf16 peak (--peak_tflops per device overrides it) or, on the CPU, this machine's
matmul peak measured in the same process; then compile time of the joint encoder at each of --depths
(--depths= skips them); the last line is `MFU: X`. --find_max_batch instead searches the largest per-device
batch whose compiled step fits --memory_gib (default: the GPU's memory limit), from XLA's memory analysis,
and times nothing.
"""

import copy

from absl import app, flags

from merlot_jax import flags as flags_lib
from merlot_jax.config import validate
from merlot_jax.pretraining.task import PRETRAINING

COMMANDS = ('data', 'train')
_EXAMPLES = flags.DEFINE_integer('examples', 128, 'data: examples timed per measurement')
_FRAME_SIZE = flags.DEFINE_list('frame_size', ['384', '512'], 'data: HEIGHT,WIDTH of the stored JPEG frames')
_PARALLEL_CALLS = flags.DEFINE_integer('parallel_calls', None, 'data: parallel decodes (default: cores)')
_CONFIG = flags_lib.define_config(None, 'train: config name (configs/NAME.py) or file')
_STEPS = flags.DEFINE_integer('steps', 5, 'train: timed steps')
_DEPTHS = flags.DEFINE_list('depths', ['4', '12'], 'train: vision/joint depths whose compile time is measured')
_PEAK_TFLOPS = flags.DEFINE_float('peak_tflops', None, 'train: peak TFLOP/s per device for MFU (default: the GPU '
                                  'datasheet bf16 dense peak by device kind; on the CPU the measured matmul peak)')
_SKIP_FLOP_CHECK = flags.DEFINE_bool('skip_flop_check', False, 'train: skip the analytic-vs-XLA FLOP check (it '
                                     'compiles the step a second time, unrolled)')
_FIND_MAX_BATCH = flags.DEFINE_bool('find_max_batch', False, 'train: search the largest per-device batch that fits '
                                    '--memory_gib (compile only)')
_MEMORY_GIB = flags.DEFINE_float('memory_gib', None, 'train: device memory for --find_max_batch (default: the GPU '
                                 'allocator bytes_limit)')


def run_data() -> None:
  from merlot_jax.data import bench  # noqa: PLC0415 - TensorFlow (the data extra): `train` runs without it

  height, width = (int(v) for v in _FRAME_SIZE.value)
  result = bench.run_data_benchmark(_EXAMPLES.value, frame_size=(height, width), parallel_calls=_PARALLEL_CALLS.value)
  print(bench.format_report(result))


def run_train() -> None:
  from merlot_jax.train import batch_search  # noqa: PLC0415 - keep `data` free of JAX start-up
  from merlot_jax.train import bench as train_bench  # noqa: PLC0415

  if _CONFIG.value is None:
    raise app.UsageError('train needs --config, e.g. --config configs/tiny.py')
  config = validate(_CONFIG.value)
  if _FIND_MAX_BATCH.value:
    memory = train_bench.device_memory_bytes(_MEMORY_GIB.value)
    best = batch_search.find_max_batch(config, PRETRAINING, memory).best
    print(f'largest per-device batch whose compiled step fits {memory / train_bench.GiB:.1f} GiB: {best} '
          f'(global {train_bench.with_batch(config, best).train.global_batch_size})')
    return
  for depth in map(int, _DEPTHS.value):
    deep = copy.deepcopy(config)
    deep.model.num_joint_layers = deep.model.num_vision_layers = depth
    deep.model.num_langonly_layers = min(deep.model.num_langonly_layers, depth)
    print(f'compile with {depth} layers: {train_bench.compile_seconds(deep, PRETRAINING):.1f} s', flush=True)
  result = train_bench.run_train_benchmark(config, PRETRAINING, _STEPS.value, peak_tflops=_PEAK_TFLOPS.value,
                                           flop_check=not _SKIP_FLOP_CHECK.value)
  print(train_bench.format_report(result))


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'give one command, {" or ".join(COMMANDS)}; got {argv[1:]}')
  if argv[1] == 'data':
    run_data()
  else:
    run_train()


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
