"""`make pretrain`'s pipeline end to end at a smaller scale: synthetic videos -> tokenizer -> corpus ->
pretraining -> held-out report.

At 30 steps the loss falls clearly and the transcript-frame order accuracy beats its chance level; the
masked-LM and retrieval accuracies are still at chance this early (their chance levels are strong: the
most frequent token, and 1 of 128 near-duplicate synthetic segments), so they are not asserted here."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_short_demo_run_learns(tmp_path):
  workdir = tmp_path / 'demo'
  cmd = [sys.executable, str(REPO / 'scripts' / 'run_demo.py'), f'--workdir={workdir}', '--videos=120',
         '--config.train.total_steps=30', '--config.optim.warmup_steps=3', '--config.train.log_every=5',
         '--config.train.eval_every=15', '--config.train.eval_steps=2', '--config.train.checkpoint_every=15']
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert (workdir / 'curves.png').stat().st_size > 10_000
  first, last = summary['train_loss_first'][1], summary['train_loss_last'][1]
  assert last < 0.85 * first, summary
  heldout, chance = summary['heldout'], summary['chance']
  assert heldout['temporal/lang_viz_acc'] > chance['temporal/lang_viz_acc'] + 0.05, summary
