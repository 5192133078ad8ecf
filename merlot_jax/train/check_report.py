"""The device check's results: one record per stage, rewritten as results.json and results.md after every change.

A stage is `running` from its start (a run killed inside it leaves that mark and the partial values it
reported), then `ok`, `failed` (with the error), `skipped` (with the reason: the time budget, a missing
device feature) or `not run`. Both files are replaced atomically, so a run cut short at any point leaves
readable files that hold everything measured before.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

STATUSES = ('running', 'ok', 'failed', 'skipped', 'not run')
JSON_NAME, MARKDOWN_NAME = 'results.json', 'results.md'


def _clean(value: Any) -> Any:
  """JSON-ready: floats rounded to 6 significant digits, non-finite floats as strings, tuples as lists."""
  if isinstance(value, Mapping):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  if isinstance(value, float):
    return float(f'{value:.6g}') if math.isfinite(value) else str(value)
  if hasattr(value, 'item') and callable(value.item):  # numpy scalars
    return _clean(value.item())
  return value


def _cell(value: Any) -> str:
  """One line of markdown (no newlines; pipes escaped, so that a table keeps its columns)."""
  if isinstance(value, float):
    text = f'{value:.4g}'
  elif isinstance(value, (dict, list)):
    text = json.dumps(value, separators=(', ', ': '))
  else:
    text = '-' if value is None else str(value)
  return ' '.join(text.split()).replace('|', '\\|')


def _table(rows: list[Mapping[str, Any]]) -> list[str]:
  columns = list(dict.fromkeys(k for row in rows for k in row))
  lines = ['| ' + ' | '.join(columns) + ' |', '| ' + ' | '.join('---' for _ in columns) + ' |']
  return lines + ['| ' + ' | '.join(_cell(row.get(c)) for c in columns) + ' |' for row in rows]


def _markdown(value: Any, indent: str = '') -> list[str]:
  """Mappings as nested bullet lists, lists of mappings as tables, text of several lines as a code block,
  anything else as one line."""
  if isinstance(value, Mapping):
    lines = []
    for k, v in value.items():
      if isinstance(v, Mapping) and v:
        lines += [f'{indent}- {k}:', *_markdown(v, indent + '  ')]
      elif isinstance(v, list) and v and all(isinstance(r, Mapping) for r in v):
        lines += [f'{indent}- {k}:', '', *_table(v), '']
      elif isinstance(v, str) and '\n' in v.strip():  # a traceback
        lines += [f'{indent}- {k}:', '', '```', v.strip(), '```', '']
      else:
        lines.append(f'{indent}- {k}: {_cell(v)}')
    return lines
  return [f'{indent}{_cell(value)}']


class Report:
  """Stages in the order they started; `write()` rewrites both files (done by every method that changes one).

  `echo` prints each stage's summary line as it ends (default print, flushed)."""

  def __init__(self, out: str | os.PathLike, title: str = 'Device check',
               echo: Callable[[str], None] = lambda line: print(line, flush=True)):
    self.out = pathlib.Path(out)
    self.out.mkdir(parents=True, exist_ok=True)
    self.title, self.echo = title, echo
    self.stages: dict[str, dict[str, Any]] = {}
    self._started: dict[str, float] = {}

  def start(self, name: str) -> None:
    self._started[name] = time.perf_counter()
    self.stages[name] = {'status': 'running', 'seconds': None, 'summary': None, 'values': {}}
    self.write()  # first: a reader who sees the line finds the stage in the files
    self.echo(f'[{name}] started')

  def progress(self, name: str, values: Mapping[str, Any]) -> None:
    """Partial values of a running stage, kept if the run is cut short inside it."""
    self.stages[name]['values'] = dict(values)
    self.write()

  def finish(self, name: str, status: str, summary: str, values: Mapping[str, Any] | None = None) -> None:
    if status not in STATUSES:
      raise ValueError(f'stage {name!r}: status {status!r} is not one of {STATUSES}')
    stage = self.stages.setdefault(name, {'values': {}})
    started = self._started.pop(name, None)
    stage.update(status=status, summary=summary,
                 seconds=None if started is None else time.perf_counter() - started)
    if values is not None:
      stage['values'] = dict(values)
    self.write()
    took = '' if stage['seconds'] is None else f' in {stage["seconds"]:.1f} s'
    self.echo(f'[{name}] {status}{took}: {summary}')

  def write(self) -> None:
    data = _clean({'title': self.title, 'stages': self.stages})
    self._replace(JSON_NAME, json.dumps(data, indent=1) + '\n')
    self._replace(MARKDOWN_NAME, self.markdown(data))

  def _replace(self, name: str, text: str) -> None:
    tmp = self.out / f'.{name}.tmp'
    tmp.write_text(text)
    os.replace(tmp, self.out / name)

  @staticmethod
  def markdown(data: Mapping[str, Any]) -> str:
    stages = data['stages']
    lines = [f'# {data["title"]}', '', '| stage | status | seconds | summary |', '| --- | --- | --- | --- |']
    lines += [f'| {n} | {s["status"]} | {_cell(s["seconds"])} | {_cell(s["summary"])} |' for n, s in stages.items()]
    rows = [s['values']['row'] for s in stages.values() if isinstance(s.get('values'), Mapping)
            and isinstance(s['values'].get('row'), Mapping)]
    if rows:
      lines += ['', '## Train step benchmarks', '', *_table(rows)]
    for name, stage in stages.items():
      if stage.get('values'):
        lines += ['', f'## {name}', '', *_markdown(stage['values'])]
    return '\n'.join(lines) + '\n'
