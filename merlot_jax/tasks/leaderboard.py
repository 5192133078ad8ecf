"""A finetuned model's outputs on a release: the leaderboards' submission files (test), per-question
predictions and the summary (val), written by scripts/predict.py.

VCR (visualcommonsense.com/leaderboard, the format of r2c's eval_for_leaderboard.py and MERLOT Reserve's
finetune/vcr/submit_to_leaderboard.py): vcr_test_submission.csv, one row per annot_id in test order, columns
  annot_id, answer_0..answer_3, rationale_conditioned_on_a<i>_<j> (i: the answer assumed, j: the rationale)
holding softmax probabilities; the leaderboard takes the argmax answer and the argmax rationale under the
true answer. TVQA (its CodaLab leaderboard, as MERLOT Reserve's finetune/tvqa/submit_to_leaderboard.py):
prediction_test_public.json and prediction_val.json ({qid: answer index}) and meta.json, zipped together.

Per-question predictions (<split>_predictions.jsonl): per example id and head its probabilities, prediction,
label and correctness (VCR also q_ar). summary.json: the accuracies next to chance and the skip counts.
Every file is written and read through etils.epath, so `out` may be a gs:// URL.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np
from etils import epath

from merlot_jax.data.tokenizer import Tokenizer
from merlot_jax.tasks import finetune as ft
from merlot_jax.tasks import mc_data, vcr
from merlot_jax.train import state as state_lib

VCR_COLUMNS = ([f'answer_{j}' for j in range(vcr.OPTIONS)] +
               [f'rationale_conditioned_on_a{i}_{j}' for i in range(vcr.OPTIONS) for j in range(vcr.OPTIONS)])
TVQA_FILES = ('prediction_val.json', 'prediction_test_public.json', 'meta.json')


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.asarray(logits, np.float64) - np.max(logits)
  return np.exp(z) / np.exp(z).sum()


# --- VCR -------------------------------------------------------------------------------------------


def _annot_order(annot_id: str) -> tuple:
  prefix, _, number = annot_id.rpartition('-')
  return (prefix, int(number)) if number.isdigit() else (annot_id, -1)


def vcr_test_rows(predictions: Sequence[ft.Prediction]) -> dict[str, np.ndarray]:
  """annot_id -> float [20] in VCR_COLUMNS order, from test's Q->A and 4 conditioned QA->R predictions."""
  by_id = {(p.example_id, p.head): softmax(p.logits) for p in predictions}
  rows, missing = {}, []
  for annot_id in sorted({i for i, head in by_id if head == 0}, key=_annot_order):
    parts = [by_id.get((annot_id, 0))] + [by_id.get((vcr.conditioned_id(annot_id, j), 1)) for j in range(vcr.OPTIONS)]
    if any(p is None for p in parts):
      missing.append(annot_id)
    else:
      rows[annot_id] = np.concatenate(parts)
  if missing or not rows:
    raise ValueError(f'VCR test predictions: {len(missing)} annotations lack a Q->A or a conditioned QA->R '
                     f'prediction (e.g. {missing[:3]}), {len(rows)} are complete')
  return rows


def write_vcr_submission(predictions: Sequence[ft.Prediction], path: str | os.PathLike) -> epath.Path:
  text = io.StringIO(newline='')
  writer = csv.writer(text)
  writer.writerow(['annot_id', *VCR_COLUMNS])
  for annot_id, row in vcr_test_rows(predictions).items():
    writer.writerow([annot_id, *(repr(float(x)) for x in row)])
  path = epath.Path(path)
  path.write_text(text.getvalue())
  return path


def read_vcr_submission(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """annot_id -> (answer probabilities [4], rationale probabilities [answer assumed 4, rationale 4])."""
  with io.StringIO(epath.Path(path).read_text(), newline='') as f:
    reader = csv.DictReader(f)
    if reader.fieldnames != ['annot_id', *VCR_COLUMNS]:
      raise ValueError(f'{path}: columns {reader.fieldnames}, expected annot_id + {VCR_COLUMNS}')
    out = {}
    for row in reader:
      values = np.array([float(row[c]) for c in VCR_COLUMNS])
      out[row['annot_id']] = (values[:vcr.OPTIONS], values[vcr.OPTIONS:].reshape(vcr.OPTIONS, vcr.OPTIONS))
  return out


# --- TVQA ------------------------------------------------------------------------------------------


def tvqa_answers(predictions: Sequence[ft.Prediction]) -> dict[str, int]:
  return {p.example_id: int(np.argmax(p.logits)) for p in predictions}


def write_tvqa_submission(val: Sequence[ft.Prediction], test: Sequence[ft.Prediction],
                          directory: str | os.PathLike, model_name: str) -> epath.Path:
  """The three leaderboard files in `directory` and their zip (returned)."""
  directory = epath.Path(directory)
  meta = {'model_name': model_name, 'is_ensemble': False, 'with_ts': True, 'show_on_leaderboard': False,
          'author': '', 'institution': '', 'description': 'merlot_jax finetuned MERLOT', 'paper_link': '',
          'code_link': ''}
  contents = {'prediction_val.json': tvqa_answers(val), 'prediction_test_public.json': tvqa_answers(test),
              'meta.json': meta}
  zipped = io.BytesIO()
  with zipfile.ZipFile(zipped, 'w') as z:
    for name, value in contents.items():
      text = json.dumps(value)
      (directory / name).write_text(text)
      z.writestr(name, text)
  archive = directory / 'tvqa_submission.zip'
  archive.write_bytes(zipped.getvalue())
  return archive


def read_tvqa_answers(path: str | os.PathLike) -> dict[str, int]:
  return {str(k): int(v) for k, v in json.loads(epath.Path(path).read_text()).items()}


# --- per question and summary ------------------------------------------------------------------------


def write_predictions(predictions: Sequence[ft.Prediction], heads: Sequence[str],
                      path: str | os.PathLike) -> epath.Path:
  """One JSON line per example id: {id, <head>: {probs, prediction, label, correct}} (+ q_ar for VCR)."""
  by_id: dict[str, dict] = {}
  for p in predictions:
    probs = softmax(p.logits)
    by_id.setdefault(p.example_id, {'id': p.example_id})[heads[p.head]] = {
        'probs': [float(x) for x in probs], 'prediction': int(np.argmax(probs)), 'label': p.label,
        'correct': p.label >= 0 and p.correct}
  path = epath.Path(path)
  with path.open('w') as f:
    for entry in by_id.values():
      if tuple(heads) == ft.VCR_HEADS and all(h in entry for h in heads):
        entry['q_ar'] = entry['answer']['correct'] and entry['rationale']['correct']
      f.write(json.dumps(entry) + '\n')
  return path


def summary(task: str, split: str, predictions: Sequence[ft.Prediction], heads: Sequence[str], num_options: int,
            skips: Mapping[str, dict]) -> dict:
  """{task, split, accuracy: {metric: {value, chance}}, skips: {split: {questions, skipped, fallbacks}}}."""
  metrics = ft.summarize(predictions, heads)
  return {'task': task, 'split': split,
          'accuracy': {k: {'value': v, 'chance': ft.uniform_chance(num_options, k)} for k, v in metrics.items()},
          'skips': {s: dict(c) for s, c in skips.items()}}


def format_summary(s: dict) -> str:
  lines = [f'{s["task"]} {s["split"]}: ' + ', '.join(f'{k} {v["value"]:.4f} (chance {v["chance"]:.4f})'
                                                    for k, v in s['accuracy'].items())]
  for split, counts in s['skips'].items():
    lines.append(f'  {split}: {counts.get("questions")} questions, skipped {counts.get("skipped") or {}}, '
                 f'fallbacks {counts.get("fallbacks") or {}}')
  return '\n'.join(lines)


# --- everything, from a finetuned model ------------------------------------------------------------


def predict_split(config: ml_collections.ConfigDict, params: state_lib.Params, tokenizer: Tokenizer,
                  data_dir: str | os.PathLike, split: str, tfds_dir: str | None = None) -> list[ft.Prediction]:
  problems = mc_data.load_problems(config.finetune.task, data_dir, split, data_dir=tfds_dir)
  return ft.predict(config, params, mc_data.mc_batches(problems, config, tokenizer, config.train.global_batch_size))


def write_outputs(config: ml_collections.ConfigDict, params: state_lib.Params, tokenizer: Tokenizer,
                  data_dir: str | os.PathLike, out: str | os.PathLike, *, tfds_dir: str | None = None,
                  val_split: str = 'val', test_split: str | None = 'test', model_name: str = 'merlot_jax') -> dict:
  """Per-question predictions and summary.json of `val_split`, and (unless test_split is None) the test
  split's per-question predictions and leaderboard file(s) in `out`; returns the summary."""
  f = config.finetune
  task, heads = f.task, tuple(f.heads)
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  val = predict_split(config, params, tokenizer, data_dir, val_split, tfds_dir)
  write_predictions(val, heads, out / f'{val_split}_predictions.jsonl')
  result = summary(task, val_split, val, heads, f.num_options, mc_data.skip_counts(task, data_dir, data_dir=tfds_dir))
  (out / 'summary.json').write_text(json.dumps(result, indent=1))
  if test_split is not None:
    test = predict_split(config, params, tokenizer, data_dir, test_split, tfds_dir)
    write_predictions(test, heads, out / f'{test_split}_predictions.jsonl')
    if task.partition('/')[0] == 'vcr':
      write_vcr_submission(test, out / 'vcr_test_submission.csv')
    else:
      write_tvqa_submission(val, test, out, model_name)
  return result
