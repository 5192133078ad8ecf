"""A finetuned model on its release: VCR / TVQA val predictions and accuracies and the test split in leaderboard
format; MSRVTT-QA accuracies on val and test (it has no leaderboard: its test answers are public).

  python scripts/predict.py --workdir /tmp/vcr --data_dir /data/vcr1 --tokenizer gpt2_dir

WORKDIR is a scripts/finetune.py workdir (config.json + checkpoints/); the task and layout come from its
config. Writes to --out (default WORKDIR/predictions): <val>_predictions.jsonl and summary.json (accuracies next
to chance, skip counts), <test>_predictions.jsonl and vcr_test_submission.csv (VCR) or prediction_val.json,
prediction_test_public.json, meta.json and tvqa_submission.zip (TVQA); merlot_jax/tasks/leaderboard.py has the
formats. MSRVTT-QA: msrvtt_qa_<split>.json (accuracy next to chance, skip counts) for val and test.
"""

from absl import app, flags

from merlot_jax import workdir
from merlot_jax.checkpoint import as_path
from merlot_jax.data.tokenizer import check_vocab, load_tokenizer
from merlot_jax.tasks import finetune as ft
from merlot_jax.tasks import leaderboard, msrvtt_qa, open_qa
from merlot_jax.train import logs

_WORKDIR = flags.DEFINE_string('workdir', None, 'the finetuning workdir (config.json + checkpoints/)')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'the release root, as unpacked')
_TOKENIZER = flags.DEFINE_string('tokenizer', None, "the checkpoint's tokenizer (.model or GPT-2 dir)")
_TFDS_DIR = flags.DEFINE_string('tfds_data_dir', None, 'where TFDS prepares the dataset')
_OUT = flags.DEFINE_string('out', None, 'output folder (default WORKDIR/predictions)')
_STEP = flags.DEFINE_integer('step', None, 'checkpoint step (default: the latest)')
_VAL_SPLIT = flags.DEFINE_string('val_split', 'val', 'labelled split: per-question predictions and accuracies')
_TEST_SPLIT = flags.DEFINE_string('test_split', 'test', "unlabelled split for the leaderboard ('' to skip)")
_MODEL_NAME = flags.DEFINE_string('model_name', 'merlot_jax', "TVQA meta.json's model_name")
flags.mark_flags_as_required(['workdir', 'data_dir', 'tokenizer'])


def predict_msrvtt_qa(out) -> None:
  config, params = ft.restore_finetuned(_WORKDIR.value, open_qa.OPEN_QA, _STEP.value)
  tokenizer = load_tokenizer(_TOKENIZER.value)
  check_vocab(tokenizer, config)
  vocabulary = msrvtt_qa.load_vocabulary(_WORKDIR.value)
  for split in filter(None, (_VAL_SPLIT.value, _TEST_SPLIT.value)):
    print(msrvtt_qa.format_summary(msrvtt_qa.evaluate(config, params, _DATA_DIR.value, split, tokenizer,
                                                      vocabulary, workdir=out)))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  out = as_path(_OUT.value or as_path(_WORKDIR.value) / 'predictions')
  if workdir.read_config(_WORKDIR.value).finetune.task == 'msrvtt_qa':
    with logs.library_info_to_file(out / 'log.txt'):
      predict_msrvtt_qa(out)
    print(f'written to {out}')
    return
  with logs.library_info_to_file(out / 'log.txt'):
    config, params = ft.restore_finetuned(_WORKDIR.value, ft.MULTIPLE_CHOICE, _STEP.value)
    tokenizer = load_tokenizer(_TOKENIZER.value)
    check_vocab(tokenizer, config)
    result = leaderboard.write_outputs(config, params, tokenizer, _DATA_DIR.value, out, tfds_dir=_TFDS_DIR.value,
                                       val_split=_VAL_SPLIT.value, test_split=_TEST_SPLIT.value or None,
                                       model_name=_MODEL_NAME.value)
  print(leaderboard.format_summary(result))
  print(f'written to {out}')


def run() -> None:
  """The console entry point (pyproject.toml's [project.scripts])."""
  app.run(main)


if __name__ == '__main__':
  run()
