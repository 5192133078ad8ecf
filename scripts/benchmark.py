"""Benchmarks, one subcommand each.

  python scripts/benchmark.py data [--examples 128] [--frame-size 384 512] [--parallel-calls K]
  python scripts/benchmark.py train --config configs/tiny.py [--steps 5] [--depths 4 12] [--peak_tflops T]
      [--skip_flop_check] [--find_max_batch [--memory_gib G]] [--config.model.x=... overrides]

`data`: writes a synthetic corpus of JPEG records to a temporary folder, times the full input pipeline
and bare JPEG decode + resize of the same frames (same process, cores and parallel calls) and prints
both; the last line is `pipeline/decode ratio: X`.
`train`: checks the analytic model FLOPs against XLA's cost analysis of the unrolled step (fails when they
disagree), compiles the config's train step, times it and prints achieved TFLOP/s, per-device memory and MFU
against the GPU's datasheet bf16 peak (--peak_tflops per device overrides it) or, on the CPU, this machine's
matmul peak measured in the same process; then compile time of the joint encoder at each of --depths; the last
line is `MFU: X`. --find_max_batch instead searches the largest per-device batch whose compiled step fits
--memory_gib (default: the GPU's memory limit), from XLA's memory analysis, and times nothing.
"""

import argparse
import copy

from merlot_jax.data import bench


def _data(args: argparse.Namespace) -> None:
  result = bench.run_data_benchmark(args.examples, frame_size=tuple(args.frame_size),
                                    parallel_calls=args.parallel_calls)
  print(bench.format_report(result))


def _train(args: argparse.Namespace) -> None:
  from absl import flags  # noqa: PLC0415 - keep `data` free of JAX start-up
  from ml_collections import config_flags  # noqa: PLC0415

  from merlot_jax.config import validate  # noqa: PLC0415
  from merlot_jax.train import bench as train_bench  # noqa: PLC0415

  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', args.config, flag_values=values, lock_config=False)
  values(['benchmark.py', f'--config={args.config}', *args.overrides])  # --config.x.y=v overrides
  config = validate(values.config)
  if args.find_max_batch:
    memory = train_bench.device_memory_bytes(args.memory_gib)
    best, _ = train_bench.find_max_batch(config, memory)
    print(f'largest per-device batch whose compiled step fits {memory / train_bench.GiB:.1f} GiB: {best} '
          f'(global {train_bench.with_batch(config, best).train.global_batch_size})')
    return
  for depth in args.depths:
    deep = copy.deepcopy(config)
    deep.model.num_joint_layers = deep.model.num_vision_layers = depth
    deep.model.num_langonly_layers = min(deep.model.num_langonly_layers, depth)
    print(f'compile with {depth} layers: {train_bench.compile_seconds(deep):.1f} s', flush=True)
  result = train_bench.run_train_benchmark(config, args.steps, peak_tflops=args.peak_tflops,
                                           flop_check=not args.skip_flop_check)
  print(train_bench.format_report(result))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  data = commands.add_parser('data', help='input pipeline examples/s against bare decode + resize')
  data.add_argument('--examples', type=int, default=128, help='examples timed per measurement')
  data.add_argument('--frame-size', type=int, nargs=2, default=(384, 512), metavar=('HEIGHT', 'WIDTH'),
                    help='size of the stored JPEG frames')
  data.add_argument('--parallel-calls', type=int, default=None, help='parallel decodes (default: cores)')
  data.set_defaults(run=_data)
  train = commands.add_parser('train', allow_abbrev=False,
                               help='train-step time, FLOPs, memory and MFU; --config.x.y=v overrides config fields')
  train.add_argument('--config', default='configs/tiny.py')
  train.add_argument('--steps', type=int, default=5, help='timed steps')
  train.add_argument('--depths', type=int, nargs='*', default=(4, 12),
                     help='vision/joint depths whose compile time is measured')
  train.add_argument('--peak_tflops', type=float, default=None,
                     help='peak TFLOP/s per device for MFU (default: the GPU datasheet bf16 dense peak by device '
                     "kind; on the CPU the measured matmul peak)")
  train.add_argument('--skip_flop_check', action='store_true',
                     help='skip the analytic-vs-XLA FLOP check (it compiles the step a second time, unrolled)')
  train.add_argument('--find_max_batch', action='store_true',
                     help='search the largest per-device batch that fits --memory_gib (compile only)')
  train.add_argument('--memory_gib', type=float, default=None,
                     help='device memory for --find_max_batch (default: the GPU allocator bytes_limit)')
  train.set_defaults(run=_train)
  args, args.overrides = parser.parse_known_args()
  if args.overrides and args.command != 'train':
    parser.error(f'unrecognized arguments: {" ".join(args.overrides)}')
  args.run(args)


if __name__ == '__main__':
  main()
