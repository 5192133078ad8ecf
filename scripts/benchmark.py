"""Benchmarks, one subcommand each.

  python scripts/benchmark.py data [--examples 128] [--frame-size 384 512] [--parallel-calls K]

`data`: writes a synthetic corpus of JPEG records to a temporary folder, times the full input pipeline
and bare JPEG decode + resize of the same frames (same process, cores and parallel calls) and prints
both; the last line is `pipeline/decode ratio: X`.
"""

import argparse

from merlot_jax.data import bench


def _data(args: argparse.Namespace) -> None:
  result = bench.run_data_benchmark(args.examples, frame_size=tuple(args.frame_size),
                                    parallel_calls=args.parallel_calls)
  print(bench.format_report(result))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  data = commands.add_parser('data', help='input pipeline examples/s against bare decode + resize')
  data.add_argument('--examples', type=int, default=128, help='examples timed per measurement')
  data.add_argument('--frame-size', type=int, nargs=2, default=(384, 512), metavar=('HEIGHT', 'WIDTH'),
                    help='size of the stored JPEG frames')
  data.add_argument('--parallel-calls', type=int, default=None, help='parallel decodes (default: cores)')
  data.set_defaults(run=_data)
  args = parser.parse_args()
  args.run(args)


if __name__ == '__main__':
  main()
