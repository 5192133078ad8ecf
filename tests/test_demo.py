"""`make pretrain`'s pipeline end to end at a smaller scale: synthetic videos -> tokenizer -> corpus ->
pretraining -> held-out report -> zero-shot story ordering.

At 200 steps (half the demo) the loss falls clearly and the masked-LM and both temporal-order accuracies
beat their chance levels. Retrieval is not asserted: the contrastive loss sits at ln(128) for the first
270-340 steps of the full demo, depending on the seed (see the README). The story report is checked for
form only."""

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
         '--config.train.total_steps=200', '--config.train.eval_every=100', '--config.train.eval_steps=2',
         '--config.train.checkpoint_every=100']
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=2400)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert (workdir / 'curves.png').stat().st_size > 10_000
  first, last = summary['train_loss_first'][1], summary['train_loss_last'][1]
  assert last < 0.85 * first, summary
  heldout, chance = summary['heldout'], summary['chance']
  for metric, margin in {'mlm/acc': 0.05, 'temporal/lang_viz_acc': 0.1, 'temporal/viz_viz_acc': 0.05}.items():
    assert heldout[metric] > chance[metric] + margin, (metric, summary)
  stories = summary['stories']
  assert stories['stories'] == 100
  assert stories['random'] == pytest.approx({'spearman': 0.0, 'pairwise_accuracy': 0.5, 'mean_abs_distance': 1.6})
  assert -1 <= stories['model']['spearman'] <= 1 and 0 <= stories['model']['pairwise_accuracy'] <= 1
