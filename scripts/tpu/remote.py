"""Shell commands that run on every TPU VM worker (through `gcloud ... ssh --worker=all --command=...`).

Each is idempotent, so that retrying an ssh that dropped half-way over a pod's workers is safe: install
re-extracts (the tarball stays) or re-fetches, and `make setup` does nothing when up to date; launch starts the
trainer only where it is not already running.
"""

from __future__ import annotations

import shlex
import types

PID_FILE = '.pretrain.pid'
SRC_TARBALL = 'merlot_jax-src.tar.gz'   # where `install` copies the packed checkout, in the remote home
_q = shlex.quote


def _paths(st: types.SimpleNamespace) -> tuple[str, str, str]:
  d = _q(st.remote_dir)
  return d, f'{d}/{_q(st.log_file)}', f'{d}/{PID_FILE}'


def _running(pid: str) -> str:
  """True when the pid file names a live trainer (not a recycled pid after a reboot)."""
  return f'[ -f {pid} ] && grep -qa scripts/pretrain.py "/proc/$(cat {pid})/cmdline" 2>/dev/null'


def install(st: types.SimpleNamespace) -> str:
  py = _q(st.remote_python)
  d = _q(st.remote_dir)
  apt = 'sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600'   # boot-time upgrades hold the lock
  steps = [
      'set -e',
      f'if ! {{ command -v make && command -v git && {py} -c "import ensurepip, venv"; }} >/dev/null 2>&1; '
      # Ubuntu 22.04 (the v2-v4 images) has no python3.12 of its own: then the deadsnakes PPA, the usual source.
      f'then {apt} update -qq && {{ {apt} install -y -qq make git {py} {py}-venv || '
      f'{{ sudo add-apt-repository -y ppa:deadsnakes/ppa && {apt} install -y -qq make git {py} {py}-venv; }}; }}; fi',
  ]
  if st.source == 'git':
    steps.append(f'if [ -d {d}/.git ]; then git -C {d} fetch --quiet origin; '
                 f'else git clone --quiet {_q(st.repo_url)} {d}; fi')
    steps.append(f'git -C {d} checkout --quiet --detach {_q(st.repo_ref)}')
  else:
    steps.append(f'mkdir -p {d} && tar -xzf {SRC_TARBALL} -C {d}')   # kept, so that a retry can extract again
  steps.append(f'ACCEL=tpu make -C {d} setup PYTHON={py}')   # libtpu, whatever the Makefile's default
  steps.append(f'echo "$(hostname): installed in {d}"')
  return '; '.join(steps)


def pretrain_argv(st: types.SimpleNamespace) -> list[str]:
  argv = ['.venv/bin/python', 'scripts/pretrain.py', '--distributed', '--config', st.config, '--workdir', st.workdir]
  if st.train_pattern:
    argv.append(f'--config.data.train_pattern={st.train_pattern}')
  if st.eval_pattern:
    argv.append(f'--config.data.eval_pattern={st.eval_pattern}')
  return argv + shlex.split(st.train_args)


def launch(st: types.SimpleNamespace) -> str:
  """Starts scripts/pretrain.py under nohup in the background, appending to LOG_FILE; the pid goes to PID_FILE."""
  d, log, pid = _paths(st)
  env = ['PYTHONUNBUFFERED=1', *shlex.split(st.train_env)]
  trainer = ' '.join(_q(a) for a in ['nohup', 'env', *env, *pretrain_argv(st)])
  return (f'cd {d} && mkdir -p "$(dirname {_q(st.log_file)})" && '
          f'if {_running(PID_FILE)}; then echo "$(hostname): pretraining already running (pid $(cat {PID_FILE}))"; '
          f'else echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) launch on $(hostname) ===" >> {_q(st.log_file)}; '
          f'{trainer} >> {_q(st.log_file)} 2>&1 < /dev/null & echo $! > {PID_FILE}; '
          f'echo "$(hostname): pretraining started (pid $!), log {log}"; fi')


def stop(st: types.SimpleNamespace) -> str:
  _, _, pid = _paths(st)
  return (f'if {_running(pid)}; then kill "$(cat {pid})" && echo "$(hostname): stopped pid $(cat {pid})"; '
          f'else echo "$(hostname): pretraining not running"; fi; rm -f {pid}')


def process_status(st: types.SimpleNamespace) -> str:
  _, log, pid = _paths(st)
  return (f'if {_running(pid)}; then echo "$(hostname): pretraining running (pid $(cat {pid})): '
          f'$(tail -n 1 {log} 2>/dev/null)"; else echo "$(hostname): pretraining not running"; fi')


def tail(st: types.SimpleNamespace, lines: int, follow: bool) -> str:
  _, log, _ = _paths(st)
  return f'tail -n {int(lines)}{" -F" if follow else ""} {log}'
