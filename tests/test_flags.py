"""The installed commands (pyproject's [project.scripts]) run from any directory and take a config by name."""

import pathlib
import subprocess
import sys

COMMAND = pathlib.Path(sys.executable).parent / 'merlot-count-params'


def _run(tmp_path, *args):
  return subprocess.run([str(COMMAND), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_a_command_takes_a_config_name_and_overrides_from_another_directory(tmp_path):
  done = _run(tmp_path, '--config=base')
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip().splitlines()[-1] == 'total parameters: 235534634'  # the original's count (DESIGN.md)
  smaller = _run(tmp_path, '--config=base', '--config.model.num_joint_layers=6', '--config.model.num_langonly_layers=6')
  assert smaller.returncode == 0, smaller.stderr[-2000:]
  assert smaller.stdout.strip().splitlines()[-1] != 'total parameters: 235534634'


def test_an_unknown_config_is_one_line_that_names_it(tmp_path):
  done = _run(tmp_path, '--config=nosuch')
  assert done.returncode != 0
  assert ("FATAL Flags parsing error: flag --config=nosuch: nosuch: no such config file, and not a config name "
          "(one of ['base', 'demo', 'finetune_msrvtt_qa', 'finetune_tvqa', 'finetune_vcr', 'tiny'])") in done.stderr
  assert 'Traceback' not in done.stderr
