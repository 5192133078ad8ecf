"""The gcloud command lines for one TPU slice and how they run: echoed, or only printed under --dry-run;
ssh/scp retried on exit code 255 with exponential backoff; slice state read from `describe`.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
import types
from collections.abc import Callable

import settings

NOT_FOUND = 'NOT_FOUND'
DRY_RUN = 'DRY_RUN'        # the "state" of a slice under --dry-run: nothing is asked
SSH_CONNECTION_ERROR = 255
MAX_RETRY_DELAY = 300.0
# Node states: cloud.google.com/tpu/docs/reference/rest/v2/projects.locations.nodes#State.
NODE_READY, NODE_LOST = {'READY'}, {'PREEMPTED', 'TERMINATED'}
# Queued-resource states: .../projects.locations.queuedResources#State. A preempted Spot slice's queued
# resource goes SUSPENDING -> SUSPENDED and is never reallocated: it has to be deleted and created again.
QUEUED_READY, QUEUED_LOST = {'ACTIVE'}, {'SUSPENDING', 'SUSPENDED', 'FAILED'}


class CommandFailed(Exception):
  def __init__(self, message: str, code: int = 1):
    super().__init__(message)
    self.code = code


def say(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


class Gcloud:
  """Builds and runs the gcloud commands for the slice the settings describe."""

  def __init__(self, st: types.SimpleNamespace, *, dry_run: bool, sleep: Callable[[float], None] = time.sleep):
    self.st, self.dry_run, self.sleep = st, dry_run, sleep
    self.queued = bool(st.queued)
    self.lost, self.ready = (QUEUED_LOST, QUEUED_READY) if self.queued else (NODE_LOST, NODE_READY)
    self.label = (f'queued resource {self.queued_id}' if self.queued else f'TPU {st.tpu_name}') + f' ({st.zone})'

  # ---- command lines ----
  @property
  def queued_id(self) -> str:
    return self.st.queued_resource_id or self.st.tpu_name

  def _where(self) -> list[str]:
    return [f'--zone={self.st.zone}'] + ([f'--project={self.st.project}'] if self.st.project else [])

  def node_cmd(self, verb: str, *args: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, self.st.tpu_name, *self._where(), *args]

  def queued_cmd(self, verb: str, *args: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', 'queued-resources', verb, self.queued_id, *self._where(), *args]

  def create_cmd(self) -> list[str]:
    st = self.st
    common = [f'--accelerator-type={st.accelerator_type}']
    tail = settings.capacity_flags(st) + ([f'--service-account={st.service_account}'] if st.service_account else [])
    tail += shlex.split(st.create_args)
    version = settings.runtime_version(st)
    if self.queued:
      return self.queued_cmd('create', f'--node-id={st.tpu_name}', *common, f'--runtime-version={version}', *tail)
    return self.node_cmd('create', *common, f'--version={version}', *tail)

  def delete_cmd(self) -> list[str]:
    # --force also deletes the queued resource's node.
    return self.queued_cmd('delete', '--force', '--quiet') if self.queued else self.node_cmd('delete', '--quiet')

  def describe_cmd(self, queued: bool) -> list[str]:
    if queued:
      return self.queued_cmd('describe', '--format=value(state.state)')
    return self.node_cmd('describe', '--format=value(state)')

  def ssh_cmd(self, worker: str, command: str) -> list[str]:
    return self.node_cmd('ssh', f'--worker={worker}', f'--command={command}', *shlex.split(self.st.ssh_args))

  def scp_cmd(self, local: str, remote: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', local, f'{self.st.tpu_name}:{remote}', '--worker=all',
            *self._where(), *shlex.split(self.st.ssh_args)]

  # ---- running ----
  def _call(self, argv: list[str], capture: bool = False) -> subprocess.CompletedProcess:
    try:
      return subprocess.run(argv, capture_output=capture, text=True, check=False)
    except FileNotFoundError:
      raise CommandFailed('gcloud is not on PATH: install the Google Cloud CLI (cloud.google.com/sdk)') from None

  def run(self, argv: list[str], *, retry_ssh: bool = False) -> None:
    """Runs (or under --dry-run prints) one command; raises CommandFailed when it fails."""
    line = shlex.join(argv)
    if self.dry_run:
      print(line, flush=True)
      return
    attempts = self.st.ssh_attempts if retry_ssh else 1
    for attempt in range(1, attempts + 1):
      print(f'+ {line}', file=sys.stderr, flush=True)
      code = self._call(argv).returncode
      if code == 0:
        return
      if code != SSH_CONNECTION_ERROR or attempt == attempts:
        break
      delay = min(self.st.retry_delay * 2 ** (attempt - 1), MAX_RETRY_DELAY)
      say(f'{argv[4]} failed with exit code 255 (connection error), attempt {attempt}/{attempts}; '
          f'retrying in {delay:g}s')
      self.sleep(delay)
    if retry_ssh and code == SSH_CONNECTION_ERROR:
      raise CommandFailed(f'{argv[4]} to {self.st.tpu_name} still failed with exit code 255 after {attempts} '
                          'attempts: check the network / firewall (port 22) or raise --ssh-attempts', code)
    short = line if len(line) < 300 else line[:300] + ' ...'
    raise CommandFailed(f'command failed with exit code {code}: {short}', code)

  def ssh(self, worker: str, command: str) -> None:
    self.run(self.ssh_cmd(worker, command), retry_ssh=True)

  def scp(self, local: str, remote: str) -> None:
    self.run(self.scp_cmd(local, remote), retry_ssh=True)

  def state(self, queued: bool | None = None) -> str:
    """The slice's state (the queued resource's when QUEUED), NOT_FOUND, or DRY_RUN. Raises CommandFailed on
    other describe errors, which are usually transient (network, API hiccups)."""
    queued = self.queued if queued is None else queued
    argv = self.describe_cmd(queued)
    if self.dry_run:
      print(shlex.join(argv), flush=True)
      return DRY_RUN
    result = self._call(argv, capture=True)
    if result.returncode == 0:
      return result.stdout.strip() or 'UNKNOWN'
    if 'NOT_FOUND' in result.stderr or 'not found' in result.stderr.lower():
      return NOT_FOUND
    raise CommandFailed(f'describe failed with exit code {result.returncode}: {result.stderr.strip()}',
                        result.returncode)

  def poll(self) -> str | None:
    """`state()`, or None (said on the console) when describe fails this time: pollers ask again."""
    try:
      return self.state()
    except CommandFailed as e:
      say(f'{self.label}: {e} (will ask again)')
      return None

  def wait_for(self, done: Callable[[str], bool], what: str, fail: frozenset[str] = frozenset()) -> str:
    """Polls the state every POLL_INTERVAL until done(state), at most READY_TIMEOUT seconds (0: no limit);
    a state in `fail` ends the wait with CommandFailed."""
    deadline = time.monotonic() + self.st.ready_timeout if self.st.ready_timeout else None
    last = None
    while True:
      state = self.poll()
      if state == DRY_RUN or (state is not None and done(state)):
        return state
      if state in fail:
        raise CommandFailed(f'{self.label} became {state} while waiting for it to be {what}')
      if deadline is not None and time.monotonic() > deadline:
        raise CommandFailed(f'{self.label} was not {what} after {self.st.ready_timeout:g}s (last state {state}); '
                            'raise --ready-timeout')
      if state != last and state is not None:
        say(f'{self.label}: {state}; waiting until {what}')
        last = state
      self.sleep(self.st.poll_interval)

  def wait_ready(self) -> str:
    return self.wait_for(lambda s: s in self.ready, 'ready (' + '/'.join(sorted(self.ready)) + ')',
                         frozenset(self.lost))

  def wait_gone(self) -> str:
    return self.wait_for(lambda s: s == NOT_FOUND, 'deleted')
