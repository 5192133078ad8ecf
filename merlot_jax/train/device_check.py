"""The first run on an accelerator, in one call: every number the project needs, within a time budget.

Stages, in order (stage_order; results.json / results.md in the output folder are rewritten as each starts and ends):
  environment      devices, memory, driver / CUDA / cuDNN and library versions, commit
  correctness      a small model's forward outputs and one train step on the device against the host CPU,
                   float32 (matmuls at 'highest' precision on both) and bfloat16; cuDNN attention against
                   the `xla` one on the device (GPU only)
  train_run        a short training run of the small model (the training loop, checkpoints, TensorBoard
                   events) on the task's random batches
  bench/ATTN/REMAT the big model (configs/base.py) at the largest per-device batch whose compiled step fits
                   (batch_search), then that batch run and timed: step time, TFLOP/s, MFU, memory
  profile          a trace of the fastest benchmarked setting, reduced to time per op category

Each stage is skipped, and says so, when the budget's time left (less the profile's reserve, for the
benchmarks) is below what it needs; a stage that raises is recorded as failed and the next one runs.
Nothing is estimated in place of a measurement: a value not measured is absent, with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import itertools
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from merlot_jax import hardware
from merlot_jax import workdir as workdir_lib
from merlot_jax.config import validate
from merlot_jax.data.host_batches import StepIndexed
from merlot_jax.hardware import GiB
from merlot_jax.train import batch_search, bench, device_parity, environment, loop, profiling, summary
from merlot_jax.train.check_report import Report
from merlot_jax.train.task import Task

# Relative to the reference's largest magnitude (device_parity.compare). float32: both sides at 'highest'
# matmul precision (a GPU's default for float32 is TF32), so only summation order differs. bfloat16: 8-bit
# mantissas through every layer, and XLA's CPU computes bfloat16 elementwise work in float32.
FLOAT32_TOLERANCE, BFLOAT16_TOLERANCE = 1e-4, 5e-2
# Seconds a stage needs at least before it starts; a benchmark needs two compiles of the big model (the first
# one's time guessed as FIRST_COMPILE_GUESS_S until one is measured).
MIN_SECONDS = {'correctness': 30.0, 'train_run': 20.0}
FIRST_COMPILE_GUESS_S = 60.0
TRACE_NAME, HLO_NAME = 'profile_trace.json.gz', 'train_step_hlo.txt.gz'
MEMORY_FRACTION = '0.95'  # XLA_PYTHON_CLIENT_MEM_FRACTION unless set: the benchmarks want the whole GPU


@dataclasses.dataclass(frozen=True)
class Options:
  config: ml_collections.ConfigDict  # the small model: correctness and train_run (configs/tiny.py)
  bench_config: ml_collections.ConfigDict  # the big model: benchmarks and profile (configs/base.py)
  budget_s: float = 480.0
  steps: int = 5  # timed steps per benchmark
  train_steps: int = 20
  remats: tuple[str, ...] = ('none', 'full')
  attentions: tuple[str, ...] = ('cudnn', 'xla')
  batch_hints: Mapping[str, int] = dataclasses.field(default_factory=dict)  # remat -> first batch to try
  max_batch: int = 256
  memory_gib: float | None = None  # default: the allocator's bytes_limit
  peak_tflops: float | None = None  # default: the GPU's datasheet bf16 peak (bench.device_peak)
  profile_steps: int = 3
  profile_reserve_s: float = 60.0
  max_file_mib: float = 8.0  # larger traces / module texts are not copied to the output folder
  commit: str | None = None
  stages: tuple[str, ...] | None = None  # None: all; else names or prefixes (e.g. 'bench/cudnn')


class Skipped(Exception):  # noqa: N818 - a stage outcome, not an error
  """The stage cannot run here (`status`: 'skipped' or 'not run'); `values` are what it measured before."""

  def __init__(self, reason: str, values: Mapping[str, Any] | None = None, status: str = 'skipped'):
    super().__init__(reason)
    self.values, self.status = values, status


@dataclasses.dataclass
class Context:
  options: Options
  task: Task
  forward: device_parity.Forward
  report: Report
  deadline: float
  compile_seconds: list[float] = dataclasses.field(default_factory=list)  # of the big model
  found: dict[str, int] = dataclasses.field(default_factory=dict)  # remat -> largest batch found
  rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # benchmarks measured

  def left(self) -> float:
    return self.deadline - time.perf_counter()

  def compile_estimate(self) -> float:
    return max(self.compile_seconds, default=FIRST_COMPILE_GUESS_S)

  def bench_left(self) -> float:
    """Time left for the benchmarks: the profile's reserve is kept back."""
    return self.left() - (self.options.profile_reserve_s if self.wants('profile') else 0.0)

  def wants(self, stage: str) -> bool:
    return self.options.stages is None or any(stage.startswith(s) for s in self.options.stages)


def stage_order(options: Options) -> list[str]:
  benches = [f'bench/{a}/{r}' for a in options.attentions for r in options.remats]
  return ['environment', 'correctness', 'train_run', *benches, 'profile']


def _gpu() -> bool:
  return jax.default_backend() == 'gpu'


def run_environment(ctx: Context) -> tuple[str, dict[str, Any]]:
  env = environment.describe(ctx.options.commit)
  env['compilation_cache_dir'] = jax.config.jax_compilation_cache_dir
  env['budget_s'] = ctx.options.budget_s
  memory = env['memory'] or {}
  where = f'{env["device_count"]} x {env["device_kind"]} ({env["backend"]})'
  limit = f', {memory["limit_gib"]:.1f} GiB limit' if 'limit_gib' in memory else ''
  return f'{where}{limit}; jax {env["versions"].get("jax")}; commit {env["commit"]}', env


def run_correctness(ctx: Context) -> tuple[str, dict[str, Any]]:
  device, host = jax.devices()[0], jax.devices('cpu')[0]
  values: dict[str, Any] = {
      'device': f'{device} ({device.device_kind})', 'host': f'{host} ({host.device_kind})',
      'note': ('the device is the host CPU: this checks the plumbing, not an accelerator' if device == host
               else 'parameters initialised on the host CPU and copied to the device')}
  results = {}
  for dtype, tolerance, precision in (('float32', FLOAT32_TOLERANCE, 'highest'),
                                      ('bfloat16', BFLOAT16_TOLERANCE, None)):
    config = device_parity.parity_config(ctx.options.config, dtype=dtype)
    state = device_parity.initial_state(config, ctx.task, host)
    batch = ctx.task.example_batch(config, config.train.global_batch_size, 0)
    runners = {d: device_parity.runner(d, config, ctx.task, ctx.forward, matmul_precision=precision)
               for d in dict.fromkeys((host, device))}  # one when the device is the host: run twice
    reference, results[dtype] = (runners[d](state, batch) for d in (host, device))
    values[dtype] = {'matmul_precision': precision or 'default',
                     **device_parity.compare(results[dtype], reference, tolerance)}
    ctx.report.progress('correctness', values)
  if _gpu():
    config = device_parity.parity_config(ctx.options.config, dtype='bfloat16', attention='cudnn')
    cudnn = device_parity.runner(device, config, ctx.task, ctx.forward)(state, batch)
    values['cudnn_vs_xla'] = device_parity.compare(cudnn, results['bfloat16'], BFLOAT16_TOLERANCE)
  else:
    values['cudnn_vs_xla'] = f'not run: needs cuDNN (the backend is {jax.default_backend()})'
  verdicts = {k: v['within_tolerance'] for k, v in values.items() if isinstance(v, dict)}
  diffs = ', '.join(f'{k} {values[k]["max_relative_diff"]:.2g} ({"ok" if ok else "MISMATCH"})'
                    for k, ok in verdicts.items())
  return f'max relative differences: {diffs}', values


def run_train(ctx: Context) -> tuple[str, dict[str, Any]]:
  config = copy.deepcopy(ctx.options.config)
  steps = ctx.options.train_steps
  config.train.total_steps, config.train.log_every, config.train.checkpoint_every = steps, max(1, steps // 4), steps
  config.train.eval_every = 0
  config.optim.warmup_steps = min(config.optim.warmup_steps, steps - 1)
  validate(config)
  size = config.train.global_batch_size
  batches = lambda start, _: StepIndexed(ctx.task.example_batch(config, size, k) for k in itertools.count(start))
  peak = ctx.options.peak_tflops or hardware.gpu_peak_tflops(jax.devices()[0].device_kind)
  with tempfile.TemporaryDirectory(prefix='merlot_device_check_run_') as workdir:
    start = time.perf_counter()
    loop.train(config, ctx.task, workdir, batches, progress=False, peak_flops_per_device=peak and peak * 1e12)
    seconds = time.perf_counter() - start
    scalars = summary.read_scalars(os.path.join(workdir, 'train'))
    saved = workdir_lib.checkpoint_steps(workdir)
  last = lambda tag: scalars[tag][-1][1] if scalars.get(tag) else None
  losses = [[s, v] for s, v in scalars.get('loss', [])]
  values = {'steps': steps, 'global_batch': size, 'seconds': seconds, 'compile_seconds': last('compile_seconds'),
            'losses': losses, 'last_interval_steps_per_sec': last('steps_per_sec'),
            'last_interval_examples_per_sec': last('examples_per_sec'), 'skipped_steps': last('skipped_steps'),
            'checkpoints_saved': saved}
  change = f'loss {losses[0][1]:.4g} -> {losses[-1][1]:.4g}' if losses else 'no loss logged'
  return f'{steps} steps in {seconds:.1f} s; {change}; checkpoints {saved}', values


def _peak_in_use() -> int | None:
  return (jax.local_devices()[0].memory_stats() or {}).get('peak_bytes_in_use')


def _run_at(ctx: Context, config: ml_collections.ConfigDict, batch: int, *, retry: bool = True
            ) -> tuple[bench.TrainBenchResult, int]:
  """The benchmark at `batch`, or at batch - 1 (once) if that runs out of memory and time allows."""
  try:
    return bench.run_train_benchmark(bench.with_batch(config, batch), ctx.task, ctx.options.steps,
                                     peak_tflops=ctx.options.peak_tflops, flop_check=False), batch
  except jax.errors.JaxRuntimeError as e:
    if not retry or 'RESOURCE_EXHAUSTED' not in str(e) or batch <= 1 or ctx.bench_left() < ctx.compile_estimate():
      raise
    ctx.report.echo(f'  per-device batch {batch} fit the compiled estimate but ran out of memory; trying {batch - 1}')
    return _run_at(ctx, config, batch - 1, retry=False)


def _search(ctx: Context, name: str, config: ml_collections.ConfigDict, remat: str) -> tuple[batch_search.Search,
                                                                                            dict[str, Any]]:
  memory = bench.device_memory_bytes(ctx.options.memory_gib)
  start = ctx.found.get(remat) or ctx.options.batch_hints.get(remat) or 1  # measured here beats a hint
  log: dict[str, Any] = {'memory_gib': memory / GiB, 'start': start, 'tried': {}}

  def measure(b: int) -> int:
    size, seconds = batch_search.compiled_step_bytes(config, ctx.task, b)
    ctx.compile_seconds.append(seconds)
    gib = None if size == batch_search.TOO_BIG else size / GiB
    log['tried'][b] = {'compiled_gib': gib, 'compile_seconds': seconds}
    ctx.report.echo(f'  per-device batch {b}: {"out of memory" if gib is None else f"{gib:.2f} GiB"} compiled '
                    f'in {seconds:.1f} s: {"fits" if size <= memory else "too big"}')
    ctx.report.progress(name, {'search': log})
    return size

  found = batch_search.search_max_batch(measure, memory, start=start, limit=ctx.options.max_batch,
                                        can_continue=lambda: ctx.bench_left() >= ctx.compile_estimate())
  log.update(best=found.best, complete=found.complete, smallest_too_big=found.too_big)
  return found, log


def run_bench(ctx: Context, name: str, attention: str, remat: str) -> tuple[str, dict[str, Any]]:
  if attention == 'cudnn' and not _gpu():
    raise Skipped(f'not run: needs cuDNN (the backend is {jax.default_backend()})', status='not run')
  config = copy.deepcopy(ctx.options.bench_config)
  config.model.attention_impl, config.model.remat_policy = attention, remat
  validate(config)
  found, log = _search(ctx, name, config, remat)
  values: dict[str, Any] = {'search': log}
  if found.best == 0:
    raise Skipped('not even per-device batch 1 fits' if found.complete else 'the budget ended the search', values)
  ctx.found[remat] = found.best
  if ctx.bench_left() < 0.5 * ctx.compile_estimate():
    raise Skipped(f'time budget: the run at per-device batch {found.best} was left out', values)
  before = _peak_in_use()
  r, batch = _run_at(ctx, config, found.best)
  measured = r.measured_peak_bytes if r.measured_peak_bytes and (before is None or r.measured_peak_bytes > before) \
      else None
  row = {'attention': attention, 'remat': remat, 'per_device_batch': batch, 'global_batch': r.global_batch_size,
         'step_ms': 1e3 * r.step_seconds, 'examples_per_s': r.global_batch_size / r.step_seconds,
         'tflops_per_device': r.achieved_flops / r.num_devices / 1e12, 'mfu': r.mfu,
         'compiled_gib': r.compiled_bytes / GiB, 'measured_peak_gib': measured and measured / GiB,
         'search_complete': found.complete}
  if batch != found.best:
    values['ran_out_of_memory_at'] = found.best
  values.update(row=row, peak=r.peak.source, compile_seconds_of_run=r.compile_seconds,
                measured_peak_note=('peak_bytes_in_use after this run' if measured else
                                    'not measured: the device reports none, or this run did not exceed the '
                                    "process's earlier peak"))
  ctx.rows.append({**row, 'config': config})
  return (f'per-device batch {batch}: {row["step_ms"]:.1f} ms/step, {row["tflops_per_device"]:.3g} TFLOP/s per '
          f'device, MFU {r.mfu:.3g}'), values


def _copy_small(path: str | None, out: str, name: str, limit_mib: float) -> str:
  if path is None:
    return 'not written'
  size = os.path.getsize(path) / 2**20
  if size > limit_mib:
    return f'not kept: {size:.1f} MiB > {limit_mib:g} MiB'
  shutil.copyfile(path, os.path.join(out, name))
  return f'{name} ({size:.2f} MiB)'


def run_profile(ctx: Context) -> tuple[str, dict[str, Any]]:
  if not ctx.rows:
    raise Skipped('no benchmark ran a step to profile')
  best = max(ctx.rows, key=lambda r: r['mfu'])
  config = bench.with_batch(best['config'], best['per_device_batch'])
  with tempfile.TemporaryDirectory(prefix='merlot_device_check_trace_') as log_dir:
    result = profiling.profile_steps(config, ctx.task, ctx.options.profile_steps, log_dir)
    out = str(ctx.report.out)
    result['trace_file'] = _copy_small(result['trace_file'], out, TRACE_NAME, ctx.options.max_file_mib)
    hlo = os.path.join(log_dir, HLO_NAME)
    with gzip.open(hlo, 'wt') as f:
      f.write(result.pop('hlo_text'))
    result['hlo_file'] = _copy_small(hlo, out, HLO_NAME, ctx.options.max_file_mib)
  setting = {k: best[k] for k in ('attention', 'remat', 'per_device_batch', 'mfu')}
  top = ', '.join(f'{c["category"]} {c["share"]:.0%}' for c in result['categories'][:4]) or 'no op events traced'
  return f'{setting["attention"]} / {setting["remat"]} at batch {setting["per_device_batch"]}: {top}', \
      {'setting': setting, **result}


def _stage_fn(name: str) -> Callable[[Context], tuple[str, dict[str, Any]]]:
  if name.startswith('bench/'):
    _, attention, remat = name.split('/')
    return lambda ctx: run_bench(ctx, name, attention, remat)
  return {'environment': run_environment, 'correctness': run_correctness, 'train_run': run_train,
          'profile': run_profile}[name]


def _needs(ctx: Context, name: str) -> tuple[float, float]:
  """(seconds the stage needs, seconds left for it); the environment always runs."""
  if name == 'environment':
    return float('-inf'), ctx.left()
  if name.startswith('bench/'):
    return 2 * ctx.compile_estimate(), ctx.bench_left()
  return MIN_SECONDS.get(name, ctx.options.profile_reserve_s), ctx.left()


def run_stage(ctx: Context, name: str) -> None:
  if not ctx.wants(name):
    ctx.report.finish(name, 'not run', 'not among --stages')
    return
  needs, left = _needs(ctx, name)
  if left < needs:
    ctx.report.finish(name, 'skipped', f'time budget: needs about {needs:.0f} s, {max(left, 0):.0f} s left')
    return
  ctx.report.start(name)
  try:
    line, values = _stage_fn(name)(ctx)
    ctx.report.finish(name, 'ok', line, values)
  except Skipped as e:
    ctx.report.finish(name, e.status, str(e), e.values)
  except Exception as e:  # noqa: BLE001 - recorded; the next stage runs
    values = {**ctx.report.stages[name]['values'], 'traceback': traceback.format_exc()[-4000:]}
    ctx.report.finish(name, 'failed', f'{type(e).__name__}: {str(e)[:400]}', values)


def run_device_check(options: Options, task: Task, forward: device_parity.Forward, out: str | os.PathLike,
                     echo: Callable[[str], None] | None = None) -> Report:
  """Runs every stage into `out` (results.json, results.md, the profile's files); returns the report."""
  deadline = time.perf_counter() + options.budget_s
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', MEMORY_FRACTION)  # read when the GPU client starts
  if not jax.config.jax_compilation_cache_dir:  # a recompile of the same step (search -> run -> profile) loads it
    jax.config.update('jax_compilation_cache_dir', tempfile.mkdtemp(prefix='merlot_device_check_cache_'))
  report = Report(out, echo=echo) if echo else Report(out)
  ctx = Context(options, task, forward, report, deadline)
  for name in stage_order(options):
    run_stage(ctx, name)
  return report
