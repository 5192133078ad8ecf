"""Per-segment MERLOT features of every video in a folder: OUT/<video path>.npz each, and OUT/index.json.

  python scripts/extract_features.py --checkpoint CKPT --tokenizer spm.model --videos DIR --out DIR

CKPT is a params checkpoint (config.json + params/) or a training workdir (config.json + checkpoints/).
Videos (.mp4 / .mkv / .webm) need their transcript beside them (X.vtt, X.en.vtt, X.srt, X.json); those that
cannot be used are skipped and counted by reason in index.json. merlot_jax/tasks/features.py has the method
and the fields of each .npz.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from merlot_jax.data.tokenizer import load_tokenizer  # noqa: E402
from merlot_jax.pretrained import load_pretrained  # noqa: E402
from merlot_jax.tasks.features import extract_directory  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', required=True, help='params checkpoint or training workdir')
  parser.add_argument('--tokenizer', required=True,
                      help='the checkpoint\'s tokenizer: SentencePiece .model, or a GPT-2 BPE directory')
  parser.add_argument('--videos', required=True, help='folder searched recursively for videos')
  parser.add_argument('--out', required=True, help='folder for the .npz files and index.json')
  parser.add_argument('--step', type=int, default=None, help='training checkpoint step (default: the latest)')
  parser.add_argument('--batch_size', type=int, default=1, help='chunks of num_segments segments per forward')
  args = parser.parse_args(argv)

  model, config = load_pretrained(args.checkpoint, step=args.step)
  tokenizer = load_tokenizer(args.tokenizer)
  index = extract_directory(model, config, tokenizer, args.videos, args.out, batch_size=args.batch_size,
                            info={'checkpoint': args.checkpoint, 'tokenizer': tokenizer.name})
  skipped = ', '.join(f'{n} {reason}' for reason, n in sorted(index['skipped'].items())) or 'none'
  print(f'features of {len(index["videos"])} videos in {args.out}; skipped: {skipped}')
  for s in index['skipped_videos']:
    print(f'  skipped {s["video"]}: {s["detail"]}')
  return index


if __name__ == '__main__':
  main()
