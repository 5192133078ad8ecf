"""Where a compiled step's time goes: a jax.profiler trace of a few steps, reduced to time per op category.

Each traced op (a GPU kernel, or a CPU thunk) names the HLO instruction it runs (the `hlo_op` stat); the
compiled module's text says what that instruction is: a dot or a fusion around one is `matmul`, cuDNN's
fused attention is `attention (cuDNN)`, and so on (CATEGORIES). Times are self times (a CPU `while`
thunk's time excludes the ops inside it), per step, summed over the device's streams or threads.
"""

from __future__ import annotations

import collections
import pathlib
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from merlot_jax.train import bench
from merlot_jax.train.task import Task

CATEGORIES = ('matmul', 'convolution', 'attention (cuDNN)', 'elementwise fusion', 'reduction', 'copy / layout',
              'data movement', 'gather / scatter', 'collective', 'memcpy', 'other custom call', 'control', 'other')
_COLLECTIVE = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute', 'all-to-all',
               'collective-broadcast')
_LAYOUT = {'copy', 'copy-start', 'copy-done', 'transpose', 'bitcast', 'reshape', 'broadcast', 'parameter', 'tuple',
           'get-tuple-element', 'constant', 'iota', 'bitcast-convert'}
_MOVEMENT = {'slice', 'dynamic-slice', 'dynamic-update-slice', 'concatenate', 'pad', 'reverse'}
_CONTROL = {'while', 'conditional', 'call', 'async-start', 'async-done', 'async-update'}
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$')


def _opcode_and_rest(rhs: str) -> tuple[str, str]:
  """'f32[2]{0} add(%a, %b), ...' or '(f32[], s32[]) while(...)' -> ('add', '(%a, %b), ...')."""
  if rhs.startswith('('):  # a tuple type: skip to its closing parenthesis
    depth = 0
    for i, ch in enumerate(rhs):
      depth += {'(': 1, ')': -1}.get(ch, 0)
      if depth == 0:
        rhs = rhs[i + 1:].lstrip()
        break
  else:
    rhs = rhs.split(' ', 1)[1] if ' ' in rhs else ''
  match = re.match(r'([\w\-]+)(\(.*)$', rhs)
  return (match.group(1), match.group(2)) if match else ('', rhs)


def parse_hlo(hlo_text: str) -> dict[str, dict[str, tuple[str, str, str]]]:
  """computation name -> instruction name -> (opcode, the rest of the line, jax op_name metadata)."""
  computations: dict[str, dict[str, tuple[str, str, str]]] = {}
  current = None
  for line in hlo_text.splitlines():
    if (header := _COMPUTATION.match(line)) and '=' not in line.split('(', 1)[0]:
      current = computations.setdefault(header.group(1), {})
    elif current is not None and (inst := _INSTRUCTION.match(line)):
      opcode, rest = _opcode_and_rest(inst.group(2))
      op_name = re.search(r'op_name="([^"]*)"', rest)
      current[inst.group(1)] = (opcode, rest, op_name.group(1) if op_name else '')
  return computations


def _category(opcode: str, rest: str, computations: Mapping[str, Mapping[str, tuple[str, str, str]]]) -> str:
  if opcode == 'fusion':
    called = re.search(r'calls=%?([\w.\-]+)', rest)
    inner = {op for op, _, _ in computations.get(called.group(1), {}).values()} if called else set()
    if 'convolution' in inner:
      return 'convolution'
    if 'dot' in inner or 'gemm' in rest:  # incl. Triton and cuDNN GEMM fusions (kind=kCustom)
      return 'matmul'
    if inner & {'reduce', 'reduce-window', 'select-and-scatter'}:
      return 'reduction'
    if inner & {'gather', 'scatter'}:
      return 'gather / scatter'
    return 'copy / layout' if inner and inner <= _LAYOUT | _MOVEMENT else 'elementwise fusion'
  if opcode == 'custom-call':
    found = re.search(r'custom_call_target="([^"]*)"', rest)
    target = found.group(1).lower() if found else ''
    if 'fmha' in target or 'attention' in target:
      return 'attention (cuDNN)'
    if 'conv' in target:
      return 'convolution'
    return 'matmul' if 'gemm' in target or 'matmul' in target else 'other custom call'
  for name, ops in (('matmul', {'dot'}), ('convolution', {'convolution'}), ('copy / layout', _LAYOUT),
                    ('data movement', _MOVEMENT), ('gather / scatter', {'gather', 'scatter'}),
                    ('reduction', {'reduce', 'reduce-window', 'select-and-scatter', 'sort'}), ('control', _CONTROL)):
    if opcode in ops:
      return name
  if opcode.startswith(_COLLECTIVE):
    return 'collective'
  return 'other' if not opcode or opcode.startswith('rng') else 'elementwise fusion'


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Every instruction of a compiled module's text -> (category, jax op_name)."""
  computations = parse_hlo(hlo_text)
  return {name: (_category(opcode, rest, computations), op_name)
          for instructions in computations.values() for name, (opcode, rest, op_name) in instructions.items()}


def _kernel_category(name: str) -> str:
  """A category from a kernel's own name, for events that name no HLO instruction."""
  low = name.lower()
  for words, category in ((('memcpy', 'memset'), 'memcpy'), (('fmha', 'flash'), 'attention (cuDNN)'),
                          (('gemm', 'xmma', 'cutlass', 'matmul'), 'matmul'), (('conv',), 'convolution'),
                          (('nccl',), 'collective'), (('reduce',), 'reduction')):
    if any(w in low for w in words):
      return category
  return 'other'


def _self_times(events: list[tuple[float, float, str]]) -> dict[str, tuple[float, int]]:
  """(start, duration, op) events of one line -> op -> (self time, count): time inside a nested event is the
  inner event's, not the outer's."""
  totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
  stack: list[list[Any]] = []  # [end, op, self time]

  def close(entry):
    totals[entry[1]][0] += entry[2]
    totals[entry[1]][1] += 1

  for start, duration, op in sorted(events, key=lambda e: (e[0], -e[1])):
    while stack and stack[-1][0] <= start:
      close(stack.pop())
    if stack:
      stack[-1][2] -= min(duration, stack[-1][0] - start)
    stack.append([start + duration, op, duration])
  for entry in stack:
    close(entry)
  return {op: (t, int(n)) for op, (t, n) in totals.items()}


def op_times(xspace_path: str, module: str = 'train_step') -> tuple[dict[str, tuple[float, int]], str]:
  """Op -> (self seconds, occurrences) over the trace, from the device planes if they hold ops (GPU, TPU), else
  the host's (CPU); only ops of HLO modules whose name contains `module`. Also which planes were read."""
  data = jax.profiler.ProfileData.from_file(xspace_path)
  planes = list(data.planes)
  device = [p for p in planes if p.name.startswith('/device:')]
  for group, source in ((device, 'device'), ([p for p in planes if p.name.startswith('/host:')], 'host')):
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for plane in group:
      lines = list(plane.lines)
      if source == 'device' and any(line.name == 'XLA Ops' for line in lines):
        lines = [line for line in lines if line.name == 'XLA Ops']  # derived per-op line: not the streams too
      for line in lines:
        events = []
        for event in line.events:
          stats = dict(event.stats)
          if 'hlo_module' in stats and module not in str(stats['hlo_module']):
            continue
          op = stats.get('hlo_op')
          if op is None and source == 'device' and 'XLA Modules' not in line.name and 'Steps' not in line.name:
            op = f'kernel:{event.name}'
          if op is not None:
            events.append((event.start_ns * 1e-9, event.duration_ns * 1e-9, str(op)))
        for op, (seconds, count) in _self_times(events).items():
          totals[op][0] += seconds
          totals[op][1] += count
    if totals:
      return {op: (t, int(n)) for op, (t, n) in totals.items()}, f'{source} planes: {[p.name for p in group]}'
  return {}, 'no op events in the trace'


def summarize(times: Mapping[str, tuple[float, int]], hlo_text: str, steps: int, *, top: int = 15
              ) -> dict[str, Any]:
  """Per-step time by category (largest first) and the `top` ops, with the share of the traced op time."""
  ops = hlo_ops(hlo_text)
  total = sum(t for t, _ in times.values()) or 1e-30
  by_category: dict[str, float] = collections.defaultdict(float)
  rows = []
  for op, (seconds, count) in times.items():
    category, jax_op = ops.get(op, (_kernel_category(op), ''))
    by_category[category] += seconds
    rows.append({'op': op, 'category': category, 'ms_per_step': 1e3 * seconds / steps, 'share': seconds / total,
                 'calls_per_step': count / steps, 'jax_op': jax_op[-100:]})
  rows.sort(key=lambda r: -r['ms_per_step'])
  attributed = sum(t for op, (t, _) in times.items() if op in ops) / total
  categories = [{'category': c, 'ms_per_step': 1e3 * t / steps, 'share': t / total}
                for c, t in sorted(by_category.items(), key=lambda kv: -kv[1])]
  return {'op_seconds_per_step': total / steps, 'share_matched_to_hlo': attributed, 'categories': categories,
          'top_ops': rows[:top]}


def profile_steps(config: ml_collections.ConfigDict, task: Task, steps: int, log_dir: str | pathlib.Path
                  ) -> dict[str, Any]:
  """Compiles the task's train step for `config`, runs a warm-up step, traces `steps` steps into `log_dir`
  (a perfetto trace too) and summarizes them; also returns the trace's and the module text's paths."""
  compiled, run, compile_seconds = bench.compile_step(config, task)
  state = run.init_state()
  batch = run.global_batch(task.example_batch(config, config.train.global_batch_size, 0))
  with jax.set_mesh(run.mesh):
    state, out = compiled(state, batch)
    jax.block_until_ready(out)
    with jax.profiler.trace(str(log_dir), create_perfetto_trace=True):
      start = time.perf_counter()
      for _ in range(steps):
        state, out = compiled(state, batch)
      jax.block_until_ready(out)
      seconds = (time.perf_counter() - start) / steps
  log_dir = pathlib.Path(log_dir)
  xspace = max(log_dir.rglob('*.xplane.pb'), key=lambda p: p.stat().st_mtime)
  hlo_text = compiled.as_text()
  times, source = op_times(str(xspace))
  summary = summarize(times, hlo_text, steps)
  perfetto = sorted(log_dir.rglob('perfetto_trace.json.gz'))
  return {'compile_seconds': compile_seconds, 'steps_traced': steps, 'step_seconds': seconds, 'read_from': source,
          'busy_share_of_step': summary['op_seconds_per_step'] / seconds, **summary,
          'trace_file': str(perfetto[-1]) if perfetto else None, 'hlo_text': hlo_text}
