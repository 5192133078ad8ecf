"""Writes the built-in synthetic corpus: narrated shape-story videos, held-out videos and stories.

  python scripts/make_synthetic_corpus.py --out /tmp/corpus --videos 40 [--seed 1 --stories 20]
"""

import json

from absl import app, flags

from merlot_jax.preprocess import synthetic

_OUT = flags.DEFINE_string('out', None, 'output directory')
_VIDEOS = flags.DEFINE_integer('videos', None, 'number of videos (train + held-out)')
_SEED = flags.DEFINE_integer('seed', 0, 'corpus seed')
_STORIES = flags.DEFINE_integer('stories', synthetic.Config.num_stories, 'held-out stories')
_HELDOUT = flags.DEFINE_float('heldout_fraction', synthetic.Config.heldout_fraction, 'videos held out')
_WIDTH = flags.DEFINE_integer('width', synthetic.Config.width, 'frame width')
_HEIGHT = flags.DEFINE_integer('height', synthetic.Config.height, 'frame height')
_FPS = flags.DEFINE_integer('fps', synthetic.Config.fps, 'frames per second')
_MIN_EVENTS = flags.DEFINE_integer('min_events', synthetic.Config.min_events, 'fewest events per video')
_MAX_EVENTS = flags.DEFINE_integer('max_events', synthetic.Config.max_events, 'most events per video')
flags.mark_flags_as_required(['out', 'videos'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = synthetic.Config(width=_WIDTH.value, height=_HEIGHT.value, fps=_FPS.value, min_events=_MIN_EVENTS.value,
                            max_events=_MAX_EVENTS.value, heldout_fraction=_HELDOUT.value,
                            num_stories=_STORIES.value)
  info = synthetic.make_corpus(_OUT.value, _VIDEOS.value, _SEED.value, config)
  print(json.dumps({'train': len(info['videos']['train']), 'heldout': len(info['videos']['heldout']),
                    'stories': info['stories']}))


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
