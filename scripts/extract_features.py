"""Per-segment MERLOT features of every video in a folder: OUT/<video path>.npz each, and OUT/index.json.

  python scripts/extract_features.py --checkpoint CKPT --tokenizer spm.model --videos DIR --out DIR

CKPT is a params checkpoint (config.json + params/) or a training workdir (config.json + checkpoints/).
Videos (.mp4 / .mkv / .webm) need their transcript beside them (X.vtt, X.en.vtt, X.srt, X.json); those that
cannot be used are skipped and counted by reason in index.json. merlot_jax/tasks/features.py has the method
and the fields of each .npz.
"""

from absl import app, flags

from merlot_jax.data.tokenizer import check_vocab, load_tokenizer
from merlot_jax.pretrained import load_pretrained
from merlot_jax.tasks.features import extract_directory

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'params checkpoint or training workdir')
_TOKENIZER = flags.DEFINE_string('tokenizer', None,
                                 'the checkpoint\'s tokenizer: SentencePiece .model, or a GPT-2 BPE directory')
_VIDEOS = flags.DEFINE_string('videos', None, 'folder searched recursively for videos')
_OUT = flags.DEFINE_string('out', None, 'folder for the .npz files and index.json')
_STEP = flags.DEFINE_integer('step', None, 'training checkpoint step (default: the latest)')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'chunks of num_segments segments per forward')
flags.mark_flags_as_required(['checkpoint', 'tokenizer', 'videos', 'out'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  model, config = load_pretrained(_CHECKPOINT.value, step=_STEP.value)
  tokenizer = load_tokenizer(_TOKENIZER.value)
  check_vocab(tokenizer, config)
  index = extract_directory(model, config, tokenizer, _VIDEOS.value, _OUT.value, batch_size=_BATCH_SIZE.value,
                            info={'checkpoint': _CHECKPOINT.value, 'tokenizer': tokenizer.name})
  skipped = ', '.join(f'{n} {reason}' for reason, n in sorted(index['skipped'].items())) or 'none'
  print(f'features of {len(index["videos"])} videos in {_OUT.value}; skipped: {skipped}')
  for s in index['skipped_videos']:
    print(f'  skipped {s["video"]}: {s["detail"]}')


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
