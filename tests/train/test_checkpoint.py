"""Checkpoints: SIGKILL mid-run then resume equals an uninterrupted run; SIGTERM saves and exits 0."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from merlot_jax.train import report

RUNNER = pathlib.Path(__file__).with_name('run_training.py')
TOTAL, EVERY = 8, 2


def _start(workdir: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, str(RUNNER), str(workdir), str(TOTAL), str(EVERY)],
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
  proc = _start(interrupted)
  first = _wait_for_checkpoint(proc, interrupted, after=0)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert _steps(interrupted) and max(_steps(interrupted)) < TOTAL, 'the run finished before the kill'

  proc = _start(interrupted)  # resumes; SIGTERM after its first new checkpoint
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
