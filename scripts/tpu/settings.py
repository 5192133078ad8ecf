"""Settings of the TPU scripts: one table, read from defaults < --env-file < command-line flags.

Every setting has an env-file KEY and a flag (--key-in-lower-case, TPU_NAME is --name). Commands call
`require()` for what they need, so a missing value fails before any gcloud call, naming both spellings.
"""

from __future__ import annotations

import argparse
import re
import shlex
import types
from dataclasses import dataclass
from pathlib import Path


class SettingsError(Exception):
  """A missing, malformed or contradictory setting; the message says what to pass instead."""


@dataclass(frozen=True)
class Setting:
  key: str
  default: object
  help: str
  kind: type = str          # str, int, float or bool

  @property
  def flag(self) -> str:
    return '--name' if self.key == 'TPU_NAME' else '--' + self.key.lower().replace('_', '-')

  @property
  def dest(self) -> str:
    return self.key.lower()


SETTINGS = (
    # Where and what.
    Setting('TPU_NAME', None, 'TPU VM (node) name, e.g. merlot-v3-1024'),
    Setting('ZONE', None, 'zone, e.g. europe-west4-a'),
    Setting('PROJECT', None, 'GCP project (default: the gcloud config project)'),
    Setting('ACCELERATOR_TYPE', None, 'e.g. v3-1024, v4-256, v5litepod-256, v5p-512, v6e-256'),
    Setting('RUNTIME_VERSION', None, 'TPU software version (default: the recommended one for the generation)'),
    Setting('SPOT', False, 'Spot capacity (cheaper, can be preempted at any time)', bool),
    Setting('PREEMPTIBLE', False, 'legacy preemptible capacity (direct create only, v2-v4)', bool),
    Setting('RESERVED', False, 'use the project\'s reservation', bool),
    Setting('QUEUED', False, 'create through a queued resource (recommended for large and Spot slices)', bool),
    Setting('QUEUED_RESOURCE_ID', None, 'queued-resource id (default: TPU_NAME)'),
    Setting('SERVICE_ACCOUNT', None, 'service account of the TPU VMs (needs read/write on the bucket)'),
    Setting('CREATE_ARGS', '', 'extra arguments for the create command, e.g. "--network=n --subnetwork=s"'),
    Setting('SSH_ARGS', '', 'extra arguments for gcloud ssh/scp, e.g. "--internal-ip"'),
    # Installing the project on every worker.
    Setting('SOURCE', 'copy', 'how the code gets to the workers: copy (this checkout) or git (REPO_URL)'),
    Setting('REPO_URL', None, 'git URL to clone on the workers (SOURCE=git)'),
    Setting('REPO_REF', 'origin/HEAD', 'commit, tag or origin/<branch> to check out (SOURCE=git)'),
    Setting('REMOTE_DIR', 'merlot_jax', 'checkout on each worker, relative to the home directory'),
    Setting('REMOTE_PYTHON', 'python3.12', 'interpreter for `make setup` on the workers (apt-installed if missing)'),
    # Training.
    Setting('CONFIG', 'configs/base.py', 'config file, relative to the checkout'),
    Setting('WORKDIR', None, 'gs:// directory for checkpoints and metrics; training resumes from it'),
    Setting('TRAIN_PATTERN', None, 'gs:// glob of the training corpus shards (config.data.train_pattern)'),
    Setting('EVAL_PATTERN', None, 'gs:// glob of the eval shards (config.data.eval_pattern)'),
    Setting('TRAIN_ARGS', '', 'extra arguments for scripts/pretrain.py, e.g. "--config.train.total_steps=1000"'),
    Setting('TRAIN_ENV', '', 'environment for the trainer, e.g. "LIBTPU_INIT_ARGS=\'--xla_foo=1 --xla_bar=2\'"'),
    Setting('LOG_FILE', 'logs/pretrain.log', 'trainer log on each worker, relative to REMOTE_DIR'),
    # Robustness.
    Setting('SSH_ATTEMPTS', 5, 'attempts of an ssh/scp that fails with exit code 255 (connection errors)', int),
    Setting('RETRY_DELAY', 15.0, 'seconds before the first ssh retry; doubles each time, at most 300', float),
    Setting('POLL_INTERVAL', 60.0, 'seconds between state checks (create, watch)', float),
    Setting('READY_TIMEOUT', 86400.0, 'seconds to wait for a slice to become ready (0: no limit)', float),
    Setting('MAX_RECOVERIES', 100, 'recreate attempts `watch` makes before giving up', int),
)
BY_KEY = {s.key: s for s in SETTINGS}
_TRUE, _FALSE = {'1', 'true', 'yes', 'on'}, {'0', 'false', 'no', 'off', ''}

# Recommended software version per TPU generation (cloud.google.com/tpu/docs/runtimes, JAX/PyTorch table).
RUNTIME_VERSIONS = {
    'v2': 'tpu-ubuntu2204-base',
    'v3': 'tpu-ubuntu2204-base',
    'v4': 'tpu-ubuntu2204-base',
    'v5litepod': 'v2-alpha-tpuv5-lite',
    'v5p': 'v2-alpha-tpuv5',
    'v6e': 'v2-alpha-tpuv6e',
}


def add_flags(parser: argparse.ArgumentParser) -> None:
  """One flag per setting, default None so that an absent flag leaves the env file's value alone."""
  group = parser.add_argument_group('settings (flag, or KEY=VALUE in --env-file; flags win). A value that starts '
                                    'with -- needs the = form: --train-args=\'--config.train.total_steps=10\'')
  group.add_argument('--env-file', type=Path, help='file of KEY=VALUE lines, e.g. tpu.env')
  for s in SETTINGS:
    if s.kind is bool:
      group.add_argument(s.flag, dest=s.dest, action=argparse.BooleanOptionalAction, default=None,
                         help=f'{s.help} [{s.key}]')
    else:
      group.add_argument(s.flag, dest=s.dest, default=None, metavar=s.key, help=f'{s.help} [{s.key}]')


def read_env_file(path: Path) -> dict[str, str]:
  """KEY=VALUE lines; blank lines, # comments, `export ` and matching quotes around a value are allowed."""
  if not path.is_file():
    raise SettingsError(f'--env-file {path}: no such file')
  values = {}
  for lineno, raw in enumerate(path.read_text().splitlines(), 1):
    line = raw.strip()
    if not line or line.startswith('#'):
      continue
    if line.startswith('export '):
      line = line[len('export '):].lstrip()
    key, sep, value = line.partition('=')
    key, value = key.strip(), value.strip()
    if not sep or not re.fullmatch(r'[A-Z][A-Z0-9_]*', key):
      raise SettingsError(f'{path}:{lineno}: expected KEY=VALUE, got {raw.strip()!r}')
    if key not in BY_KEY:
      raise SettingsError(f'{path}:{lineno}: unknown setting {key}; known: {", ".join(BY_KEY)}')
    if len(value) >= 2 and value[0] == value[-1] and value[0] in '\'"':
      value = value[1:-1]
    elif ' #' in value:
      value = value.split(' #', 1)[0].rstrip()
    values[key] = value
  return values


def _convert(s: Setting, value: object, source: str) -> object:
  if value is None or not isinstance(value, str):
    return value
  if value == '' and s.kind is not str:
    return s.default
  try:
    if s.kind is bool:
      if value.lower() not in _TRUE | _FALSE:
        raise ValueError
      return value.lower() in _TRUE
    return s.kind(value)
  except ValueError:
    raise SettingsError(f'{s.key}={value!r} (from {source}) is not a valid {s.kind.__name__}') from None


def resolve(args: argparse.Namespace) -> types.SimpleNamespace:
  """Defaults, overridden by the env file, overridden by flags; checks values that are always checkable."""
  from_file = read_env_file(args.env_file) if args.env_file else {}
  values = {}
  for s in SETTINGS:
    flag_value = getattr(args, s.dest)
    if flag_value is not None:
      value, source = flag_value, s.flag
    elif s.key in from_file:
      value, source = from_file[s.key], str(args.env_file)
    else:
      value, source = s.default, 'default'
    values[s.dest] = _convert(s, value, source)
  st = types.SimpleNamespace(**values)
  _check(st)
  return st


def _check(st: types.SimpleNamespace) -> None:
  if st.tpu_name and not re.fullmatch(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?', st.tpu_name):
    raise SettingsError(f'TPU_NAME={st.tpu_name!r}: use lower-case letters, digits and hyphens, starting with a letter')
  if sum([st.spot, st.preemptible, st.reserved]) > 1:
    raise SettingsError('SPOT, PREEMPTIBLE and RESERVED exclude each other: pick one (Spot is the modern preemptible)')
  if st.queued and st.preemptible:
    raise SettingsError('PREEMPTIBLE is not available for queued resources: use --spot')
  if st.remote_dir.startswith('~'):
    raise SettingsError(f'REMOTE_DIR={st.remote_dir!r}: give it relative to the home directory, without ~/')
  if st.source not in ('copy', 'git'):
    raise SettingsError(f'SOURCE={st.source!r}: use copy (this checkout) or git (clone REPO_URL)')
  for key in ('WORKDIR', 'TRAIN_PATTERN', 'EVAL_PATTERN'):
    value = getattr(st, key.lower())
    if value and not value.startswith('gs://'):
      raise SettingsError(f'{key}={value!r}: every worker must see the same files, use a gs:// path')
  if st.ssh_attempts < 1 or st.max_recoveries < 0 or min(st.retry_delay, st.poll_interval, st.ready_timeout) < 0:
    raise SettingsError('SSH_ATTEMPTS must be >= 1; MAX_RECOVERIES, RETRY_DELAY, POLL_INTERVAL, READY_TIMEOUT >= 0')
  for key in ('CREATE_ARGS', 'SSH_ARGS', 'TRAIN_ARGS', 'TRAIN_ENV'):
    try:
      shlex.split(getattr(st, key.lower()))
    except ValueError as e:
      raise SettingsError(f'{key}: {e}') from None
  for item in shlex.split(st.train_env):
    if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*=.*', item, re.S):
      raise SettingsError(f'TRAIN_ENV: {item!r} is not NAME=VALUE')


def require(st: types.SimpleNamespace, command: str, *keys: str) -> None:
  """Raises naming every missing setting with its flag and env-file spelling."""
  missing = [BY_KEY[k] for k in keys if getattr(st, k.lower()) in (None, '')]
  if missing:
    how = '; '.join(f'{s.key} (pass {s.flag} or put {s.key}=... in the --env-file)' for s in missing)
    raise SettingsError(f'`{command}` needs {how}')


def runtime_version(st: types.SimpleNamespace) -> str:
  if st.runtime_version:
    return st.runtime_version
  m = re.fullmatch(r'(v\d+[a-z]*)-(\d+)', st.accelerator_type or '')
  if not m:
    raise SettingsError(f'ACCELERATOR_TYPE={st.accelerator_type!r}: expected GENERATION-SIZE, e.g. v3-1024, '
                        'v5litepod-256, v5p-512')
  generation = m.group(1)
  if generation == 'v5e':
    raise SettingsError(f'ACCELERATOR_TYPE={st.accelerator_type!r}: v5e slices are called '
                        f'v5litepod-{m.group(2)} in gcloud')
  if generation not in RUNTIME_VERSIONS:
    raise SettingsError(f'ACCELERATOR_TYPE={st.accelerator_type!r}: no default runtime for {generation} '
                        f'(known: {", ".join(RUNTIME_VERSIONS)}); pass --runtime-version')
  return RUNTIME_VERSIONS[generation]


def capacity_flags(st: types.SimpleNamespace) -> list[str]:
  return ['--spot'] * st.spot + ['--preemptible'] * st.preemptible + ['--reserved'] * st.reserved
