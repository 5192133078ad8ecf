"""Preprocesses videos with word-timed transcripts into the sharded TFRecord pretraining corpus.

A video X.mp4 (.mkv, .webm) needs a transcript X.vtt, X.en.vtt, X.srt or X.json beside it and may have a
denoised X.grover.json. Rerunning into the same --out finishes an interrupted run. The finished corpus
also loads with TFDS (merlot_jax/data/tfds_merlot.py). With --beam, arguments
this script does not know go to the Beam pipeline (e.g. --runner=DataflowRunner ...; see
merlot_jax/data/beam_pipeline.py).
"""

import argparse
import json
import os


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--videos', required=True, help='directory searched recursively for videos')
  parser.add_argument('--out', required=True, help='DATA_DIR for the shards and manifest.json')
  parser.add_argument('--tokenizer', required=True, help='SentencePiece .model (or a GPT-2 BPE directory)')
  parser.add_argument('--workers', type=int, default=os.cpu_count(), help='processes (without --beam)')
  parser.add_argument('--num_segments', type=int, default=16, help='segments per example')
  parser.add_argument('--segment_tokens', type=int, default=32, help='max tokens per segment incl. start')
  parser.add_argument('--videos_per_shard', type=int, default=64)
  parser.add_argument('--jpeg_quality', type=int, default=90)
  parser.add_argument('--video_timeout', type=float, default=300,
                      help='seconds per video before its worker is killed and the video skipped (0: no limit); '
                           'the local pool only: with --beam the runner handles stuck or dead workers')
  parser.add_argument('--beam', action='store_true', help='run as an Apache Beam pipeline')
  args, beam_args = parser.parse_known_args()
  if beam_args and not args.beam:
    parser.error(f'unrecognized arguments: {" ".join(beam_args)} (only --beam passes arguments on)')
  # Imported here, not at the top: spawned worker processes re-import this file and need no TensorFlow.
  from merlot_jax.data import corpus, tfds_merlot

  options = corpus.Options(args.num_segments, args.segment_tokens, args.videos_per_shard, args.jpeg_quality)
  if args.beam:
    from merlot_jax.data import beam_pipeline

    manifest = beam_pipeline.run(args.videos, args.out, args.tokenizer, options, beam_args)
  else:
    manifest = corpus.write_corpus(args.videos, args.out, args.tokenizer, options, workers=args.workers,
                                   video_timeout=args.video_timeout)
  print(json.dumps({k: v for k, v in manifest.items() if k not in ('skipped_videos', 'shard_examples')}, indent=1))
  tfds_merlot.write_metadata(args.out)


if __name__ == '__main__':
  main()
