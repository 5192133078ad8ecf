#!/usr/bin/env python3
"""MERLOT pretraining on a Cloud TPU VM slice (v3-1024, v4-256, v5litepod-256, v5p-512, ...) with gcloud.

  python3 scripts/tpu/tpu.py create  --env-file tpu.env        # TPU VM or queued resource; waits until ready
  python3 scripts/tpu/tpu.py install --env-file tpu.env        # this checkout (or git) + `make setup`, all workers
  python3 scripts/tpu/tpu.py launch  --env-file tpu.env        # scripts/pretrain.py under nohup, all workers
  python3 scripts/tpu/tpu.py logs    --env-file tpu.env        # tail -F of worker 0's log (--worker N)
  python3 scripts/tpu/tpu.py status  --env-file tpu.env        # slice state + trainer process per worker
  python3 scripts/tpu/tpu.py watch   --env-file tpu.env        # recreate + reinstall + relaunch after preemption
  python3 scripts/tpu/tpu.py stop    --env-file tpu.env        # stop the trainer on all workers
  python3 scripts/tpu/tpu.py delete  --env-file tpu.env --yes

Every setting is a flag or a KEY=VALUE line of --env-file (flags win); --dry-run prints the gcloud commands
instead of running them. Walk-through: docs/tpu.md. Standard library only: runs with any Python >= 3.9.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import gcloud
import remote
import settings
from gcloud import CommandFailed, say

REPO = Path(__file__).resolve().parents[2]


def pack_checkout(dest: Path) -> int:
  """Tars the checkout's tracked and untracked-but-not-ignored files (no .venv, no workdir/) into dest."""
  try:
    listing = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                             cwd=REPO, capture_output=True, check=True).stdout.decode()
  except (OSError, subprocess.CalledProcessError) as e:
    raise CommandFailed(f'SOURCE=copy packs the git checkout at {REPO}, but `git ls-files` failed ({e}); '
                        'use SOURCE=git with REPO_URL instead') from None
  names = sorted(n for n in listing.split('\0') if n and (REPO / n).is_file())
  with tarfile.open(dest, 'w:gz') as tar:
    for name in names:
      tar.add(REPO / name, arcname=name, recursive=False)
  return len(names)


def install(g: gcloud.Gcloud, st) -> None:
  if st.source == 'copy':
    with tempfile.TemporaryDirectory() as tmp:
      tarball = Path(tmp) / remote.SRC_TARBALL
      if g.dry_run:
        print(f'# pack {REPO} (git ls-files) into {tarball}')
      else:
        say(f'packed {pack_checkout(tarball)} files of {REPO} into {tarball}')
      g.scp(str(tarball), remote.SRC_TARBALL)
  g.ssh('all', remote.install(st))


def launch(g: gcloud.Gcloud, st) -> None:
  if not st.train_pattern and 'train_pattern' not in st.train_args:
    say('warning: TRAIN_PATTERN is not set, so the trainer uses config.data.train_pattern of '
        f'{st.config} (empty in configs/base.py)')
  g.ssh('all', remote.launch(st))


def recover(g: gcloud.Gcloud, st, state: str) -> None:
  """From any state of a lost or half-recovered slice to a relaunched trainer (which resumes from WORKDIR)."""
  if state in g.lost:
    g.run(g.delete_cmd())
    g.wait_gone()
    state = gcloud.NOT_FOUND
  if state == gcloud.NOT_FOUND:
    g.run(g.create_cmd())
  g.wait_ready()
  install(g, st)
  launch(g, st)


# ---- commands ----

def cmd_create(g, st, args) -> None:
  settings.require(st, 'create', 'TPU_NAME', 'ZONE', 'ACCELERATOR_TYPE')
  g.run(g.create_cmd())
  if not args.no_wait and g.wait_ready() != gcloud.DRY_RUN:
    say(f'{g.label} is ready')


def cmd_install(g, st, args) -> None:
  settings.require(st, 'install', 'TPU_NAME', 'ZONE', *(['REPO_URL'] if st.source == 'git' else []))
  install(g, st)


def cmd_launch(g, st, args) -> None:
  settings.require(st, 'launch', 'TPU_NAME', 'ZONE', 'WORKDIR')
  launch(g, st)


def cmd_stop(g, st, args) -> None:
  settings.require(st, 'stop', 'TPU_NAME', 'ZONE')
  g.ssh('all', remote.stop(st))


def cmd_logs(g, st, args) -> None:
  settings.require(st, 'logs', 'TPU_NAME', 'ZONE')
  g.ssh(args.worker, remote.tail(st, args.lines, follow=not args.no_follow))


def cmd_status(g, st, args) -> None:
  settings.require(st, 'status', 'TPU_NAME', 'ZONE')
  if g.queued:
    state = g.state(queued=True)
    if state != gcloud.DRY_RUN:
      print(f'queued resource {g.queued_id}: {state}')
  state = g.state(queued=False)
  if state != gcloud.DRY_RUN:
    print(f'TPU {st.tpu_name} ({st.zone}): {state}')
  if state in gcloud.NODE_READY or state == gcloud.DRY_RUN:
    g.ssh('all', remote.process_status(st))


def cmd_delete(g, st, args) -> None:
  settings.require(st, 'delete', 'TPU_NAME', 'ZONE')
  if not (args.yes or g.dry_run):
    if not sys.stdin.isatty():
      raise settings.SettingsError(f'deleting {g.label} needs confirmation: pass --yes')
    if input(f'Delete {g.label}? Type its name to confirm: ').strip() != st.tpu_name:
      raise CommandFailed('not confirmed; nothing deleted')
  g.run(g.delete_cmd())


def cmd_watch(g, st, args) -> None:
  settings.require(st, 'watch', 'TPU_NAME', 'ZONE', 'ACCELERATOR_TYPE', 'WORKDIR',
                   *(['REPO_URL'] if st.source == 'git' else []))
  settings.runtime_version(st)   # fail now, not at the first preemption
  lost = '/'.join(sorted(g.lost))
  if g.dry_run:
    g.state()
    print(f'# every {st.poll_interval:g}s; when the state is {lost}:')
    recover(g, st, sorted(g.lost)[0])
    return
  say(f'watching {g.label} every {st.poll_interval:g}s; on {lost} it is recreated and training relaunched')
  recoveries, recovering, checks, last = 0, False, 0, None
  while True:
    state = g.poll()
    if state is not None and state != last:
      say(f'{g.label}: {state}')
      last = state
    if state in g.lost or (recovering and state is not None):
      if recoveries >= st.max_recoveries:
        raise CommandFailed(f'{g.label} is {state} and MAX_RECOVERIES={st.max_recoveries} recoveries are used up')
      recoveries += 1
      say(f'recovery {recoveries}/{st.max_recoveries}: recreating {g.label} and relaunching training')
      try:
        recover(g, st, state)
        recovering, last = False, None
        say(f'recovery {recoveries} done: training relaunched, resuming from the last checkpoint in {st.workdir}')
      except CommandFailed as e:
        recovering = True
        say(f'recovery {recoveries} failed: {e}; trying again in {st.poll_interval:g}s')
    elif state == gcloud.NOT_FOUND:
      raise CommandFailed(f'{g.label} does not exist: create it first, or stop watching a deleted slice')
    checks += 1
    if args.max_checks and checks >= args.max_checks:
      return
    g.sleep(st.poll_interval)


def build_parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--dry-run', action='store_true', help='print every gcloud command instead of running it')
  settings.add_flags(common)
  parser = argparse.ArgumentParser(prog='tpu.py', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

  def command(name, func, help_):
    p = sub.add_parser(name, parents=[common], help=help_, description=help_)
    p.set_defaults(func=func)
    return p

  command('create', cmd_create, 'create the TPU VM slice (or its queued resource) and wait until it is ready') \
      .add_argument('--no-wait', action='store_true', help='return once the create request is accepted')
  command('install', cmd_install, 'put the code on every worker and run `make setup`')
  command('launch', cmd_launch, 'start scripts/pretrain.py under nohup on every worker')
  command('stop', cmd_stop, 'stop the trainer on every worker')
  p = command('logs', cmd_logs, "tail a worker's trainer log")
  p.add_argument('--worker', default='0', help='worker index (default 0)')
  p.add_argument('--lines', type=int, default=100, help='lines of history (default 100)')
  p.add_argument('--no-follow', action='store_true', help='print and exit instead of following')
  command('status', cmd_status, 'state of the slice and of the trainer on each worker')
  command('delete', cmd_delete, 'delete the slice (and its queued resource)') \
      .add_argument('--yes', action='store_true', help='do not ask for confirmation')
  command('watch', cmd_watch, 'poll the state; recreate, reinstall and relaunch after a preemption') \
      .add_argument('--max-checks', type=int, default=0, help='stop after this many state checks (0: never)')
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    st = settings.resolve(args)
    args.func(gcloud.Gcloud(st, dry_run=args.dry_run), st, args)
  except settings.SettingsError as e:
    print(f'tpu.py {args.command}: error: {e}', file=sys.stderr)
    return 2
  except CommandFailed as e:
    print(f'tpu.py {args.command}: error: {e}', file=sys.stderr)
    return e.code or 1
  except KeyboardInterrupt:
    return 130
  return 0


if __name__ == '__main__':
  sys.exit(main())
