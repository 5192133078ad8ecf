"""Train-step benchmark: step time, achieved FLOP/s, MFU and peak memory; the analytic FLOP count checked
against XLA's; compile time against depth; the largest per-device batch whose compiled step fits in memory.

MFU is against a GPU's datasheet bf16 dense peak (by `device_kind`, or a given one); on other devices (the
CPU) against this machine's own float32 matmul peak, measured in the same process.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from merlot_jax import hardware, sharding
from merlot_jax.hardware import GiB
from merlot_jax.train import compiled as compiled_lib
from merlot_jax.train import setup
from merlot_jax.train.task import Task

# Tolerance of the FLOP cross-check: |XLA / analytic - 1|, with XLA's cost analysis of the step compiled as
# `flop_check_config` makes it: unrolled (XLA counts a scanned body once, not once per layer), no remat
# (no recomputation) and the 'xla' attention. Measured ratios (jax 0.10.2, CPU): configs/tiny.py 0.963 on
# 1 device, 0.992 on 8; the tests' micro config 0.922 on 1 device, 1.121 on 8. XLA counts what the analytic
# matmul/conv count leaves out: elementwise work (LayerNorm, GELU, softmax, GroupNorm, weight standardisation,
# Adam), a few percent; and on N devices the per-device program times N, which counts replicated work (the
# replicated conv kernels' standardisation and update, the global-batch contrastive matrix) N times: +3% on
# tiny, +20% on micro at one example per device. It leaves out what the analytic count includes: the kernel
# taps of a convolution that fall on SAME padding (a 3x3 conv on a 2x2 map counts 4/9 of the dense count, on
# 8x8 0.84, on 64x64 0.98; the small-frame configs' ResNet dominates their FLOPs, hence their ratios below 1)
# and the input gradient of the first conv. A wrong component (a layer stack counted once, a missing
# backward, a factor of 2) moves the ratio by far more than 0.2; 0.2 keeps every measured ratio inside.
FLOP_TOLERANCE = 0.2


class FlopCountError(AssertionError):
  """The analytic model FLOPs and XLA's cost analysis disagree by more than FLOP_TOLERANCE."""


@dataclasses.dataclass(frozen=True)
class Peak:
  flops: float  # all devices
  source: str


def matmul_peak(size: int = 2048, repeats: int = 10, trials: int = 3) -> float:
  """Achieved FLOP/s of a large float32 matmul on all local devices at once (the machine's peak): the
  best of `trials` timings of `repeats` matmuls, since a peak is what the machine can do, not its average."""
  devices = jax.local_devices()
  spread = NamedSharding(Mesh(np.asarray(devices), ('d',)), PartitionSpec('d'))
  x = jax.device_put(jnp.ones((len(devices), size, size), jnp.float32), spread)
  mm = jax.jit(lambda a: jnp.einsum('nij,njk->nik', a, a))  # one independent matmul per device
  mm(x).block_until_ready()
  best = float('inf')
  for _ in range(trials):
    start = time.perf_counter()
    for _ in range(repeats):
      y = mm(x)
    y.block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 * repeats * len(devices) / best


def device_peak(peak_tflops: float | None = None) -> Peak:
  """The peak MFU is measured against: `peak_tflops` per device if given; a GPU's from GPU_PEAK_TFLOPS;
  elsewhere this machine's measured float32 matmul peak."""
  n, kind = jax.device_count(), jax.devices()[0].device_kind
  if peak_tflops:
    return Peak(peak_tflops * 1e12 * n, f'given: {peak_tflops:g} TFLOP/s per device')
  if jax.default_backend() == 'gpu':
    tflops = hardware.gpu_peak_tflops(kind)
    if tflops is None:
      raise ValueError(f'no bf16 peak listed for {kind!r} (merlot_jax/hardware.py GPU_PEAK_TFLOPS): pass '
                       '--peak_tflops with its datasheet bf16 dense TFLOP/s')
    return Peak(tflops * 1e12 * n, f'datasheet bf16 dense, {kind}: {tflops:g} TFLOP/s per device')
  return Peak(matmul_peak(), 'measured float32 matmul peak of this machine')


def compile_step(config: ml_collections.ConfigDict, task: Task) -> tuple[jax.stages.Compiled, setup.Setup, float]:
  """The task's train step for `config` compiled for its abstract state and global batch:
  (compiled, setup, compile seconds)."""
  run = setup.build(config, task)
  start = time.perf_counter()
  compiled = run.train_step
  return compiled, run, time.perf_counter() - start


def compile_seconds(config: ml_collections.ConfigDict, task: Task) -> float:
  """Wall time to compile the train step (scan over layers keeps it nearly flat in depth)."""
  return compile_step(config, task)[-1]


def compiled_bytes(compiled: jax.stages.Compiled) -> int:
  """Per-device memory of a compiled step (compiled.Memory.total_bytes)."""
  return compiled_lib.memory(compiled).total_bytes


def _xla_flops(compiled: jax.stages.Compiled) -> float:
  """XLA's cost-analysis FLOPs of a compiled SPMD step, all devices (its analysis is of one device)."""
  cost = compiled_lib.cost(compiled)
  if cost is None:
    raise FlopCountError(f'XLA reports no cost analysis for {jax.devices()[0].device_kind}: run with '
                         '--skip_flop_check')
  return cost.flops * jax.device_count()


def flop_check_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose compiled step XLA counts as the analytic count does: every layer unrolled
  (scan_layers False), no remat (no recomputation), and the 'xla' attention (the same math; a cuDNN kernel is
  a custom call, whose FLOPs XLA's cost analysis does not see)."""
  c = copy.deepcopy(config)
  c.model.scan_layers, c.model.remat_policy, c.model.attention_impl = False, 'none', 'xla'
  return c


def unrolled_xla_flops(config: ml_collections.ConfigDict, task: Task) -> float:
  """XLA's FLOPs of one train step of `flop_check_config(config)`, summed over devices."""
  return _xla_flops(compile_step(flop_check_config(config), task)[0])


def check_flops(config: ml_collections.ConfigDict, task: Task, xla_flops: float,
                tolerance: float = FLOP_TOLERANCE) -> float:
  """Returns XLA / analytic FLOPs per step; raises FlopCountError with both numbers when they disagree by
  more than `tolerance`."""
  analytic = task.flops_per_step(config)
  ratio = xla_flops / analytic
  if abs(ratio - 1) > tolerance:
    raise FlopCountError(f'FLOPs per train step: analytic ({task.name}.flops_per_example) {analytic:.4g}, XLA '
                         f'cost analysis of the unrolled step {xla_flops:.4g}: ratio {ratio:.3f}, outside '
                         f'1 +- {tolerance} (FLOP_TOLERANCE in merlot_jax/train/bench.py); MFU would be wrong')
  return ratio


@dataclasses.dataclass(frozen=True)
class TrainBenchResult:
  device_kind: str
  num_devices: int
  global_batch_size: int
  compile_seconds: float
  step_seconds: float
  model_flops_per_step: float  # analytic count (train = 3x forward)
  xla_flops_per_step: float | None  # XLA's cost analysis of the unrolled step, all devices (None: not checked)
  peak: Peak
  compiled_bytes: int  # per device, XLA's memory analysis of the benchmarked step
  measured_peak_bytes: int | None  # the device allocator's peak_bytes_in_use (GPU); None where not reported

  @property
  def achieved_flops(self) -> float:
    return self.model_flops_per_step / self.step_seconds

  @property
  def mfu(self) -> float:
    return self.achieved_flops / self.peak.flops


def _time_steps(compiled: jax.stages.Compiled, run: setup.Setup, steps: int) -> float:
  """Seconds per step of `compiled` on a fresh state and a random batch (after one warm-up step)."""
  if run.task.example_batch is None:
    raise ValueError(f'task {run.task.name!r} gives no example_batch to time its steps on')
  state = run.init_state()
  batch = run.global_batch(run.task.example_batch(run.config, run.config.train.global_batch_size, 0))
  state, out = compiled(state, batch)  # warm-up
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    state, out = compiled(state, batch)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def run_train_benchmark(config: ml_collections.ConfigDict, task: Task, steps: int = 5, *,
                        peak_tflops: float | None = None, flop_check: bool = True) -> TrainBenchResult:
  """Compiles and times the config's train step; with `flop_check`, first checks the analytic FLOPs against
  XLA's (`check_flops`: raises FlopCountError), from the benchmarked step itself when it is already the
  `flop_check_config`, else from a second compile of that."""
  flops_per_step = task.flops_per_step(config)
  compiled, run, seconds = compile_step(config, task)
  xla_flops = None
  if flop_check:
    same = flop_check_config(config).to_dict() == config.to_dict()
    xla_flops = _xla_flops(compiled) if same else unrolled_xla_flops(config, task)
    check_flops(config, task, xla_flops)
  step_seconds = _time_steps(compiled, run, steps)
  stats = jax.local_devices()[0].memory_stats() or {}
  return TrainBenchResult(jax.devices()[0].device_kind, jax.device_count(), config.train.global_batch_size,
                          seconds, step_seconds, flops_per_step, xla_flops, device_peak(peak_tflops),
                          compiled_bytes(compiled), stats.get('peak_bytes_in_use'))


def format_report(r: TrainBenchResult) -> str:
  """The benchmark's lines; the last is `MFU: X`."""
  xla = 'not checked' if r.xla_flops_per_step is None else (
      f'{r.xla_flops_per_step:.4g} (unrolled; ratio {r.xla_flops_per_step / r.model_flops_per_step:.3f}, '
      f'tolerance {FLOP_TOLERANCE})')
  measured = 'not reported by this device' if r.measured_peak_bytes is None else (
      f'{r.measured_peak_bytes / GiB:.2f} GiB (peak_bytes_in_use)')
  return '\n'.join([
      f'{r.num_devices} x {r.device_kind}, global batch {r.global_batch_size}',
      f'compile: {r.compile_seconds:.1f} s   step: {r.step_seconds * 1e3:.1f} ms',
      f'model FLOPs/step: {r.model_flops_per_step:.4g} (analytic)   XLA cost analysis: {xla}',
      f'achieved: {r.achieved_flops / 1e12:.4g} TFLOP/s   peak: {r.peak.flops / 1e12:.4g} TFLOP/s ({r.peak.source})',
      f'memory per device: {r.compiled_bytes / GiB:.2f} GiB compiled (XLA memory analysis); measured: {measured}',
      f'MFU: {r.mfu:.4f}'])


def with_batch(config: ml_collections.ConfigDict, per_device_batch: int) -> ml_collections.ConfigDict:
  """A copy of `config` whose global batch is `per_device_batch` on each device of the data x fsdp axes."""
  c = copy.deepcopy(config)
  mesh = sharding.make_mesh(config.mesh)
  c.train.global_batch_size = per_device_batch * mesh.shape['data'] * mesh.shape['fsdp']
  return c


def device_memory_bytes(memory_gib: float | None = None) -> int:
  """`memory_gib`, else the device allocator's bytes_limit (GPU); raises where neither is known."""
  if memory_gib:
    return int(memory_gib * GiB)
  limit = (jax.local_devices()[0].memory_stats() or {}).get('bytes_limit')
  if limit is None:
    raise ValueError(f'{jax.devices()[0].device_kind} reports no memory limit: pass --memory_gib')
  return int(limit)
