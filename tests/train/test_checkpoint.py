"""Checkpoints: SIGKILL mid-run then resume equals an uninterrupted run; SIGTERM saves and exits 0; an
unreadable latest checkpoint falls back to the newest readable one."""

import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from merlot_jax import checkpoint, workdir
from merlot_jax.pretraining import report
from merlot_jax.pretraining.task import PRETRAINING
from merlot_jax.train import loop
from tests.train.batches import micro_config, synthetic_batches

RUNNER = pathlib.Path(__file__).with_name('run_training.py')
TOTAL, EVERY = 8, 2
SIGNALLED_BATCH_SECONDS = 0.5  # runs the test signals: >= 1 s between checkpoints, for a 50 ms poll


def _start(workdir: pathlib.Path, batch_seconds: float = 0.0) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, str(RUNNER), str(workdir), str(TOTAL), str(EVERY), str(batch_seconds)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


def _steps(workdir: pathlib.Path) -> list[int]:
  directory = workdir / 'checkpoints'
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _wait_for_checkpoint(proc: subprocess.Popen, workdir: pathlib.Path, after: int, timeout: float = 600) -> int:
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [s for s in _steps(workdir) if s > after]
    if steps:
      return steps[0]
    if proc.poll() is not None:
      pytest.fail(f'training exited early:\n{proc.stdout.read()}')
    time.sleep(0.05)
  proc.kill()
  pytest.fail('no checkpoint appeared')


def _finish(proc: subprocess.Popen) -> tuple[int, float]:
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  final = [line.split() for line in out.splitlines() if line.startswith('final ')]
  assert final, out
  return int(final[-1][1]), float(final[-1][2])


def _logged_losses(workdir: pathlib.Path) -> dict[int, float]:
  return dict(report.read_scalars(workdir / 'train')['loss'])


@pytest.mark.slow
def test_kill_resume_and_sigterm_match_an_uninterrupted_run(tmp_path):
  reference = _start(tmp_path / 'reference')
  interrupted = tmp_path / 'interrupted'
  proc = _start(interrupted, SIGNALLED_BATCH_SECONDS)
  first = _wait_for_checkpoint(proc, interrupted, after=0)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert _steps(interrupted) and max(_steps(interrupted)) < TOTAL, 'the run finished before the kill'

  proc = _start(interrupted, SIGNALLED_BATCH_SECONDS)  # resumes; SIGTERM after its first new checkpoint
  _wait_for_checkpoint(proc, interrupted, after=max(_steps(interrupted)))
  proc.send_signal(signal.SIGTERM)
  preempted_step, _ = _finish(proc)  # exit status 0 and the state it stopped with
  assert preempted_step < TOTAL, 'the run finished before SIGTERM'
  assert max(_steps(interrupted)) == preempted_step, 'SIGTERM did not save the current step'

  step, checksum = _finish(_start(interrupted))
  ref_step, ref_checksum = _finish(reference)
  assert step == ref_step == TOTAL
  assert checksum == ref_checksum
  losses, ref_losses = _logged_losses(interrupted), _logged_losses(tmp_path / 'reference')
  assert first in losses and TOTAL in losses
  np.testing.assert_allclose(losses[TOTAL], ref_losses[TOTAL], rtol=0, atol=1e-6)


def _truncate_largest_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = sorted((p for p in (step_dir / 'state').rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  files[-1].write_bytes(files[-1].read_bytes()[:10])
  return files[-1]


# A failed Orbax restore abandons the reads still pending for its other arrays (~1000 coroutines per attempt).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_resume_refuses_a_changed_config_and_falls_back_from_an_unreadable_checkpoint(tmp_path, caplog):
  config = micro_config(data=1, fsdp=1, tensor=1)
  config.train.update(total_steps=4, checkpoint_every=2, log_every=2)
  run = lambda: loop.train(config, PRETRAINING, tmp_path,
                           lambda start, _: synthetic_batches(config, 8, start_step=start), progress=False,
                           devices=jax.devices()[:1])
  run()
  assert _steps(tmp_path) == [2, 4]
  saved_config = (tmp_path / 'config.json').read_text()  # written by the trainer
  changed = micro_config(data=1, fsdp=1, tensor=1)
  changed.optim.learning_rate = 1e-4
  with pytest.raises(workdir.ConfigChangeError, match='optim.learning_rate: 0.003 -> 0.0001'):
    loop.train(changed, PRETRAINING, tmp_path, lambda start, _: synthetic_batches(changed, 8, start_step=start),
               progress=False, devices=jax.devices()[:1])
  assert (tmp_path / 'config.json').read_text() == saved_config and _steps(tmp_path) == [2, 4]

  _truncate_largest_file(tmp_path / 'checkpoints' / '4')
  config.train.total_steps = 6
  with caplog.at_level(logging.WARNING):
    state = run()
  assert int(state.step) == 6
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any('checkpoint of step 4' in w and 'resuming from step 2' in w for w in warnings), warnings
  assert (tmp_path / 'checkpoints' / '4.unreadable' / 'state').is_dir()  # set aside, not deleted
  assert _steps(tmp_path) == [2, 4, 6]  # step 4 saved again by the resumed run

  for step in (2, 4, 6):  # none readable: an error naming every step, and nothing moved
    _truncate_largest_file(tmp_path / 'checkpoints' / str(step))
  with pytest.raises(checkpoint.CheckpointError, match=r'(?s)step 6: .*step 4: .*step 2: '):
    run()
  assert _steps(tmp_path) == [2, 4, 6]
