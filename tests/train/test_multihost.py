"""Multi-host training on localhost: 2 processes x 2 CPU devices (gloo collectives), each feeding half
of the global batch, train like 1 process x 4 devices; a SIGTERM to one of them stops both at one step
with one checkpoint, from which 1 process resumes to the loss of an uninterrupted run."""

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from merlot_jax.pretraining import report

WORKER = pathlib.Path(__file__).with_name('multihost_worker.py')


@contextlib.contextmanager
def _reserved_port() -> Iterator[int]:
  """A free port for the coordinator, held bound by this process until the block ends.

  Binding port 0, closing the socket and handing the number on leaves a window in which the kernel may give
  the port to any other process. So the socket stays bound (never listening) for the whole run: while it is,
  the kernel hands the port to no bind(0) and no outgoing connection, and a plain or SO_REUSEADDR bind of it
  fails. jax.distributed's coordinator (XLA's gRPC coordination service) binds [::]:port with SO_REUSEPORT,
  which Linux lets share a port with a socket of the same user that set it too; a socket that does not listen
  gets no connections, so they all reach the coordinator. (Retrying the launch on a bind failure would not do:
  another coordinator that took the port would bind it too, by the same SO_REUSEPORT, and the run would hang.)
  """
  try:
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # both families, as the coordinator's [::]
    address = '::'
  except OSError:  # no IPv6: the coordinator falls back to 0.0.0.0
    s, address = socket.socket(socket.AF_INET), ''
  with s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((address, 0))
    yield s.getsockname()[1]


def _env(devices: int, num_processes: int) -> dict[str, str]:
  """The suite's environment (its -O0 included) with `devices` CPU devices per process.

  A multi-process run gets no persistent compilation cache: JAX writes it from process 0 only, so with a warm
  cache process 0 would skip its compiles while the others compile, and reach the first collective more than
  gloo's fixed 30 s ahead of them.
  """
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': ' '.join([f'--xla_force_host_platform_device_count={devices}', *flags])}
  if num_processes > 1:
    env.pop('JAX_COMPILATION_CACHE_DIR', None)
  return env


def _start(workdir: pathlib.Path, steps: int, devices: int, num_processes: int = 1, process_id: int = 0,
           port: int = 0, checkpoint_every: int = 0, batch_seconds: float = 0) -> subprocess.Popen:
  env = _env(devices, num_processes)
  return subprocess.Popen([sys.executable, str(WORKER), str(workdir), str(steps), str(num_processes),
                           str(process_id), str(port), str(checkpoint_every), str(batch_seconds)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _finish(proc: subprocess.Popen, timeout: float = 600, what: str = 'worker') -> tuple[int, float, float]:
  """(step, parameter checksum, held-out loss) from the worker's 'final' line."""
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f'{what} timed out:\n{out[-4000:]}')
  assert proc.returncode == 0, f'{what}:\n{out[-4000:]}'
  final = [line.split() for line in out.splitlines() if line.startswith('final ')]
  assert final, f'{what}:\n{out[-4000:]}'
  _, _, step, checksum, loss = final[-1]
  return int(step), float(checksum), float(loss)


def _logged_losses(workdir: pathlib.Path) -> dict[int, float]:
  return dict(report.read_scalars(workdir / 'train')['loss'])


def _wait_until_fed(procs: list[subprocess.Popen], progress: pathlib.Path, batches: int, port: int) -> None:
  deadline = time.time() + 600
  while time.time() < deadline:
    if progress.exists() and int(progress.read_text() or 0) >= batches:
      return
    if any(p.poll() is not None for p in procs):
      pytest.fail(f'a worker (coordinator localhost:{port}) exited before the signal:\n' +
                  '\n'.join(p.stdout.read()[-2000:] for p in procs))
    time.sleep(0.05)
  pytest.fail(f'{progress} never reached {batches} batches (coordinator localhost:{port})')


@pytest.mark.slow
def test_two_processes_train_as_one_and_a_sigterm_to_one_stops_both_at_one_step(tmp_path):
  total, multi, single = 40, tmp_path / 'multi', tmp_path / 'single'
  with _reserved_port() as port:
    procs = [_start(multi, total, devices=2, num_processes=2, process_id=i, port=port, checkpoint_every=total,
                    batch_seconds=0.2) for i in range(2)]
    reference = _start(single, total, devices=4)  # uninterrupted, one process
    _wait_until_fed(procs, multi / 'fed.1', batches=3, port=port)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only: process 0 learns of it from the coordination service
    signalled = time.time()
    results = [_finish(p, timeout=120, what=f'process {i} (coordinator localhost:{port})')
               for i, p in enumerate(procs)]  # both exit 0
  assert time.time() - signalled < 120
  assert results[0] == results[1], results  # the same step, and the same global state
  stopped = results[0][0]
  assert 3 <= stopped < total, 'the run finished before the signal'
  assert sorted(int(p.name) for p in (multi / 'checkpoints').iterdir() if p.name.isdigit()) == [stopped]

  expected = _finish(reference)
  multi_losses, single_losses = _logged_losses(multi), _logged_losses(single)  # process 0 writes the logs
  assert sorted(multi_losses) == list(range(1, stopped + 1))
  np.testing.assert_allclose([multi_losses[s] for s in sorted(multi_losses)],
                             [single_losses[s] for s in sorted(multi_losses)], rtol=1e-5)
  resumed = _finish(_start(multi, total, devices=4))  # one process carries on from the preemption checkpoint
  assert resumed[0] == expected[0] == total
  np.testing.assert_allclose(resumed[1:], expected[1:], rtol=1e-5)


def _write_corpus(root: pathlib.Path, shards: int, per_shard: int, segments: int, tokens: int) -> str:
  """`shards` TFRecord files of `per_shard` records (solid-colour 32x32 frames, random token ids < 500)."""
  import tensorflow as tf

  from merlot_jax.data import record_format  # TensorFlow: only this test needs it
  rng = np.random.default_rng(0)
  for f in range(shards):
    records = []
    for e in range(per_shard):
      frames = [tf.io.encode_jpeg(np.full((32, 32, 3), 40 * s + e, np.uint8)).numpy() for s in range(segments)]
      text = [list(rng.integers(10, 500, tokens)) for _ in range(segments)]
      records.append(record_format.make_example(frames, text, text, [float(s) for s in range(segments)],
                                                [f'v{f}_{e}'] * segments, [s == segments - 1 for s in range(segments)]))
    record_format.write_tfrecord(str(root / f'train-{f}.tfrecord'), records)
  return str(root / 'train-*.tfrecord')


@pytest.mark.slow
def test_pretrain_script_runs_two_processes_on_localhost(tmp_path):
  """scripts/pretrain.py with --coordinator_address/--num_processes/--process_id: one run of 2 processes."""
  pattern = _write_corpus(tmp_path, shards=2, per_shard=4, segments=2, tokens=6)
  workdir = tmp_path / 'run'
  script = pathlib.Path(__file__).resolve().parents[2] / 'scripts' / 'pretrain.py'
  overrides = ['--config.model.num_segments=2', '--config.model.image_size=(32, 32)',
               '--config.model.num_vision_layers=1', '--config.model.num_joint_layers=1',
               '--config.model.num_langonly_layers=1', '--config.train.global_batch_size=4',
               '--config.train.total_steps=2', '--config.train.checkpoint_every=2', '--config.optim.warmup_steps=1',
               f'--config.data.train_pattern={pattern}']
  env = _env(devices=2, num_processes=2)
  with _reserved_port() as port:
    procs = [subprocess.Popen([sys.executable, str(script), '--config', str(script.parents[1] / 'configs' / 'tiny.py'),
                               '--workdir', str(workdir), f'--coordinator_address=localhost:{port}',
                               '--num_processes=2', f'--process_id={i}', *overrides], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
    assert p.returncode == 0, f'process {i} (coordinator localhost:{port}):\n{out[-4000:]}'
  assert sorted(_logged_losses(workdir)) == [1, 2]
  assert [p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()] == ['2']
  assert 'global_batch_size' in (workdir / 'config.json').read_text()
