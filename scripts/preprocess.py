"""Preprocesses videos with word-timed transcripts into the sharded TFRecord pretraining corpus.

  python scripts/preprocess.py --videos VIDEOS/ --out DATA/ --tokenizer spm.model --workers 8
  python scripts/preprocess.py --videos gs://b/videos --out gs://b/data --tokenizer spm.model --beam \
      --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp

A video X.mp4 (.mkv, .webm) needs a transcript X.vtt, X.en.vtt, X.srt or X.json beside it and may have a
denoised X.grover.json. Rerunning into the same --out finishes an interrupted run. The finished corpus
also loads with TFDS (merlot_jax/preprocess/tfds_merlot.py). With --beam, arguments this script does not know go
to the Beam pipeline (merlot_jax/preprocess/beam_pipeline.py); without it they are refused.
"""

import json
import os
import sys

from absl import app, flags

_VIDEOS = flags.DEFINE_string('videos', None, 'directory searched recursively for videos')
_OUT = flags.DEFINE_string('out', None, 'DATA_DIR for the shards and manifest.json')
_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'SentencePiece .model (or a GPT-2 BPE directory)')
_WORKERS = flags.DEFINE_integer('workers', os.cpu_count(), 'processes (without --beam)')
_NUM_SEGMENTS = flags.DEFINE_integer('num_segments', 16, 'segments per example')
_SEGMENT_TOKENS = flags.DEFINE_integer('segment_tokens', 32, 'max tokens per segment incl. start')
_VIDEOS_PER_SHARD = flags.DEFINE_integer('videos_per_shard', 64, 'videos per TFRecord shard')
_JPEG_QUALITY = flags.DEFINE_integer('jpeg_quality', 90, 'JPEG quality of the stored frames')
_VIDEO_TIMEOUT = flags.DEFINE_float('video_timeout', 300,
                                    'seconds per video before its worker is killed and the video skipped (0: no '
                                    'limit); the local pool only: with --beam the runner handles stuck or dead '
                                    'workers')
_BEAM = flags.DEFINE_bool('beam', False, 'run as an Apache Beam pipeline (unknown arguments go to Beam)')
flags.mark_flags_as_required(['videos', 'out', 'tokenizer'])


def parse_flags(argv: list[str]) -> list[str]:
  """This script's flags; returns the rest of argv (program name first), which only --beam may have."""
  try:
    return flags.FLAGS(argv, known_only=True)
  except flags.Error as e:
    sys.exit(f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.')


def main(argv: list[str]) -> None:
  beam_args = argv[1:]
  if beam_args and not _BEAM.value:
    raise app.UsageError(f'unrecognized arguments: {" ".join(beam_args)} (only --beam passes arguments on)')
  # Imported here, not at the top: spawned worker processes re-import this file and need no TensorFlow.
  from merlot_jax.preprocess import corpus, tfds_merlot

  options = corpus.Options(_NUM_SEGMENTS.value, _SEGMENT_TOKENS.value, _VIDEOS_PER_SHARD.value, _JPEG_QUALITY.value)
  if _BEAM.value:
    from merlot_jax.preprocess import beam_pipeline

    manifest = beam_pipeline.run(_VIDEOS.value, _OUT.value, _TOKENIZER.value, options, beam_args)
  else:
    manifest = corpus.write_corpus(_VIDEOS.value, _OUT.value, _TOKENIZER.value, options, workers=_WORKERS.value,
                                   video_timeout=_VIDEO_TIMEOUT.value)
  print(json.dumps({k: v for k, v in manifest.items() if k not in ('skipped_videos', 'shard_examples')}, indent=1))
  tfds_merlot.write_metadata(_OUT.value)


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
