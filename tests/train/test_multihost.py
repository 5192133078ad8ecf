"""Multi-host training on localhost: 2 processes x 2 CPU devices (gloo collectives), each feeding half
of the global batch, train like 1 process x 4 devices, and their checkpoint restores in 1 process."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from merlot_jax.train import report

WORKER = pathlib.Path(__file__).with_name('multihost_worker.py')
STEPS = 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(workdir: pathlib.Path, steps: int, devices: int, num_processes: int = 1, process_id: int = 0,
           port: int = 0) -> subprocess.Popen:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  return subprocess.Popen([sys.executable, str(WORKER), str(workdir), str(steps), str(num_processes),
                           str(process_id), str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env)


def _finish(proc: subprocess.Popen) -> tuple[int, float, float]:
  """(step, parameter checksum, held-out loss) from the worker's 'final' line."""
  try:
    out, _ = proc.communicate(timeout=600)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f'worker timed out:\n{out[-4000:]}')
  assert proc.returncode == 0, out[-4000:]
  final = [line.split() for line in out.splitlines() if line.startswith('final ')]
  assert final, out[-4000:]
  _, _, step, checksum, loss = final[-1]
  return int(step), float(checksum), float(loss)


def _logged_losses(workdir: pathlib.Path) -> dict[int, float]:
  return dict(report.read_scalars(workdir / 'train')['loss'])


@pytest.mark.slow
def test_two_processes_match_one_and_their_checkpoint_restores_in_one(tmp_path):
  multi, single = tmp_path / 'multi', tmp_path / 'single'
  port = _free_port()
  procs = [_start(multi, STEPS, devices=2, num_processes=2, process_id=i, port=port) for i in range(2)]
  reference = _start(single, STEPS, devices=4)
  results = [_finish(p) for p in procs]
  expected = _finish(reference)

  assert results[0] == results[1]  # both hosts see the same global parameters and loss
  step, checksum, loss = results[0]
  assert step == expected[0] == STEPS
  np.testing.assert_allclose([checksum, loss], expected[1:], rtol=1e-5)
  multi_losses, single_losses = _logged_losses(multi), _logged_losses(single)  # process 0 writes the logs
  assert sorted(multi_losses) == sorted(single_losses) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([multi_losses[s] for s in range(1, STEPS + 1)],
                             [single_losses[s] for s in range(1, STEPS + 1)], rtol=1e-5)

  restored = _finish(_start(multi, STEPS, devices=4))  # resumes at STEPS: a pure restore
  assert restored[0] == STEPS
  np.testing.assert_allclose(restored[1:], results[0][1:], rtol=1e-6)
