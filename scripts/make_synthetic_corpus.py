"""Writes the built-in synthetic corpus: narrated shape-story videos, held-out videos and stories."""

import argparse
import json

from merlot_jax.data import synthetic


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--videos', type=int, required=True, help='number of videos (train + held-out)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--stories', type=int, default=synthetic.Config.num_stories, help='held-out stories')
  parser.add_argument('--heldout_fraction', type=float, default=synthetic.Config.heldout_fraction)
  parser.add_argument('--width', type=int, default=synthetic.Config.width)
  parser.add_argument('--height', type=int, default=synthetic.Config.height)
  parser.add_argument('--fps', type=int, default=synthetic.Config.fps)
  parser.add_argument('--min_events', type=int, default=synthetic.Config.min_events)
  parser.add_argument('--max_events', type=int, default=synthetic.Config.max_events)
  args = parser.parse_args()
  config = synthetic.Config(width=args.width, height=args.height, fps=args.fps, min_events=args.min_events,
                            max_events=args.max_events, heldout_fraction=args.heldout_fraction,
                            num_stories=args.stories)
  info = synthetic.make_corpus(args.out, args.videos, args.seed, config)
  print(json.dumps({'train': len(info['videos']['train']), 'heldout': len(info['videos']['heldout']),
                    'stories': info['stories']}))


if __name__ == '__main__':
  main()
