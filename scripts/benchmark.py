"""Benchmarks, one subcommand each.

  python scripts/benchmark.py data [--examples 128] [--frame-size 384 512] [--parallel-calls K]
  python scripts/benchmark.py train --config configs/tiny.py [--steps 5] [--depths 4 12]

`data`: writes a synthetic corpus of JPEG records to a temporary folder, times the full input pipeline
and bare JPEG decode + resize of the same frames (same process, cores and parallel calls) and prints
both; the last line is `pipeline/decode ratio: X`.
`train`: compiles the config's train step, times it, counts model FLOPs (checked against XLA's cost
analysis) and measures this machine's matmul peak in the same process; then compile time of the joint
encoder at each of --depths; the last line is `MFU: X`.
"""

import argparse

from merlot_jax.data import bench


def _data(args: argparse.Namespace) -> None:
  result = bench.run_data_benchmark(args.examples, frame_size=tuple(args.frame_size),
                                    parallel_calls=args.parallel_calls)
  print(bench.format_report(result))


def _train(args: argparse.Namespace) -> None:
  from merlot_jax.config import load_config  # noqa: PLC0415 - keep `data` free of JAX start-up
  from merlot_jax.train import bench as train_bench  # noqa: PLC0415

  config = load_config(args.config)
  for depth in args.depths:
    deep = load_config(args.config)
    deep.model.num_joint_layers = deep.model.num_vision_layers = depth
    deep.model.num_langonly_layers = min(deep.model.num_langonly_layers, depth)
    print(f'compile with {depth} layers: {train_bench.compile_seconds(deep):.1f} s', flush=True)
  print(train_bench.format_report(train_bench.run_train_benchmark(config, args.steps)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  data = commands.add_parser('data', help='input pipeline examples/s against bare decode + resize')
  data.add_argument('--examples', type=int, default=128, help='examples timed per measurement')
  data.add_argument('--frame-size', type=int, nargs=2, default=(384, 512), metavar=('HEIGHT', 'WIDTH'),
                    help='size of the stored JPEG frames')
  data.add_argument('--parallel-calls', type=int, default=None, help='parallel decodes (default: cores)')
  data.set_defaults(run=_data)
  train = commands.add_parser('train', help='train-step time, FLOPs and MFU against the measured matmul peak')
  train.add_argument('--config', default='configs/tiny.py')
  train.add_argument('--steps', type=int, default=5, help='timed steps')
  train.add_argument('--depths', type=int, nargs='*', default=(4, 12),
                     help='vision/joint depths whose compile time is measured')
  train.set_defaults(run=_train)
  args = parser.parse_args()
  args.run(args)


if __name__ == '__main__':
  main()
