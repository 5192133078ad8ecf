"""Ahead-of-time compilation of the full train step for a TPU topology, on any host (MaxText's
`train_compile`): libtpu builds compile-only devices for the topology, the state and the global batch
are ShapeDtypeStructs with their NamedShardings, and XLA's TPU compiler reports memory and costs.

Every number is compiled (XLA's memory analysis of the step as configured; XLA's FLOPs and bytes accessed of
the same step compiled unrolled, `scan_layers=False`, since a scanned loop body is counted once) or a bound
derived from those and the chip's datasheet rates (the compute and roofline bounds). Nothing is measured: no
TPU runs, so there is no step time and no MFU.

Slice names count what Cloud TPU counts: v3-N, v4-N and v5p-N are N TensorCores (N / 2 chips),
v5e-N (= v5litepod-N) is N chips. JAX sees a v3 core as one device, and a v4 / v5p chip (megacore)
or a v5e chip as one device; the HBM, peak FLOP/s and HBM bandwidth below are per JAX device.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import ml_collections
from jax.experimental import topologies
from jax.sharding import Mesh

from merlot_jax.hardware import GiB, Topology, parse_topology
from merlot_jax.train import compiled as compiled_lib
from merlot_jax.train import setup
from merlot_jax.train.compiled import Cost, Memory
from merlot_jax.train.task import Task

_FIT_ADVICE = 'Try more fsdp/tensor sharding, --config.model.remat_policy=full, or a smaller batch.'


class DoesNotFitError(RuntimeError):
  """The compiled step needs more memory per device than the chip's HBM."""


def topology_devices(topology: Topology) -> list[jax.Device]:
  """Compile-only devices of the slice (libtpu, no TPU needed)."""
  # Compile-only use: no GCE metadata server to ask, and other processes (pytest workers, a second
  # compile) may hold libtpu's /tmp/libtpu_lockfile, which only matters for a real TPU.
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  gen = topology.generation
  kwargs = {'chip_config_name': 'megacore'} if gen.platform in ('v4', 'v5p') else {}
  if topology.num_chips < 4:  # smaller than libtpu's default host (2x2x1 chips)
    kwargs['chips_per_host_bounds'] = tuple(min(s, h) for s, h in zip((*topology.shape, 1, 1), (2, 2, 1), strict=False))
  try:
    desc = topologies.get_topology_desc(topology.topology_name, 'tpu', **kwargs)
  except RuntimeError as e:
    raise RuntimeError(f'libtpu could not describe {topology.topology_name} ({topology.name}): {e} '
                       '(AOT compiles need jax[tpu], i.e. libtpu, installed on this host)') from e
  devices = list(desc.devices)
  if len(devices) != topology.num_chips * gen.devices_per_chip or devices[0].device_kind != gen.device_kind:
    raise RuntimeError(f'{topology.topology_name}: libtpu made {len(devices)} {devices[0].device_kind} devices, '
                       f'expected {topology.num_chips * gen.devices_per_chip} {gen.device_kind}')
  return devices


@dataclasses.dataclass(frozen=True)
class Report:
  """One compiled train step. Memory and costs are XLA's (compiled), per device; the two step-time bounds
  are derived from them and the Generation's datasheet rates (lower bounds, not estimates of the step)."""

  topology: Topology
  num_devices: int
  mesh: dict[str, int]
  remat_policy: str
  global_batch_size: int
  memory: Memory
  model_flops_per_step: float  # analytic (3 x the forward's matmuls and convs), whole slice
  compiled_cost: Cost | None  # the step as configured; a scanned layer stack's loop body is counted once
  unrolled_cost: Cost | None  # the step with scan_layers=False, every layer counted; None: not compiled
  total_steps: int
  compile_seconds: float  # on this host
  unrolled_compile_seconds: float | None  # None: no second compile

  @property
  def total_bytes(self) -> int:
    return self.memory.total_bytes

  @property
  def hbm_bytes(self) -> int:
    return self.topology.generation.hbm_bytes

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.hbm_bytes

  @property
  def compute_bound_seconds(self) -> float:
    """The analytic FLOPs at every device's bf16 peak: no step is faster."""
    return self.model_flops_per_step / (self.num_devices * self.topology.generation.peak_flops)

  @property
  def roofline_bound_seconds(self) -> float | None:
    """max(FLOPs / peak, bytes accessed / HBM bandwidth) of one device's unrolled program, which every device
    runs at once, so it bounds the slice's step; a lower bound as far as XLA's byte count is the HBM traffic.
    ICI communication and latencies are left out. None without the unrolled compile."""
    if self.unrolled_cost is None:
      return None
    g = self.topology.generation
    return max(self.unrolled_cost.flops / g.peak_flops, self.unrolled_cost.bytes_accessed / g.hbm_bandwidth)

  def _memory_lines(self) -> list[str]:
    gib = lambda x: f'{x / GiB:7.2f} GiB'
    return [
        "memory per device (compiled: XLA's memory analysis of the step as configured):",
        f'  arguments     {gib(self.memory.argument_bytes)}',
        f'  outputs       {gib(self.memory.output_bytes)} ({gib(self.memory.alias_bytes).strip()} aliased to '
        'donated arguments)',
        f'  temporaries   {gib(self.memory.temp_bytes)}',
        f'  generated code{gib(self.memory.code_bytes)}',
        f'  total         {gib(self.total_bytes)} of {gib(self.hbm_bytes).strip()} HBM '
        f'({100 * self.total_bytes / self.hbm_bytes:.0f}%)',
    ]

  def _cost_lines(self) -> list[str]:
    g, n, u = self.topology.generation, self.num_devices, self.unrolled_cost
    unrolled = ('not compiled (--nounrolled_cost)' if u is None else
                f'{_flop(u.flops)}, {u.bytes_accessed / 1e9:.4g} GB accessed (x {n} devices = '
                f'{u.flops * n / self.model_flops_per_step:.3f} x the analytic FLOPs)')
    compiled = 'n/a' if self.compiled_cost is None else _flop(self.compiled_cost.flops)
    roofline = self.roofline_bound_seconds
    days = lambda seconds: 'n/a' if seconds is None else f'{seconds * self.total_steps / 86400:.3g} days'
    which = '' if u is None else (': the bytes term' if u.bytes_accessed / g.hbm_bandwidth > u.flops / g.peak_flops
                                  else ': the FLOPs term')
    return [
        f'FLOPs per step, whole slice: analytic {_flop(self.model_flops_per_step)} (3 x forward matmuls and convs)',
        'XLA cost analysis per device (compiled):',
        f'  unrolled (scan_layers=False)   {unrolled}',
        f"  as configured                  {compiled} (each scanned layer stack's body counted once)",
        'step-time lower bounds (bounds, not measurements: no TPU ran):',
        f'  compute bound   {self.compute_bound_seconds:.3g} s: analytic FLOPs / ({n} x '
        f'{g.peak_flops / 1e12:.4g} TFLOP/s bf16 peak)',
        f'  roofline bound  {"n/a" if roofline is None else f"{roofline:.3g} s"}: max(XLA FLOPs / '
        f'{g.peak_flops / 1e12:.4g} TFLOP/s, XLA bytes / {g.hbm_bandwidth / 1e9:.4g} GB/s) per device{which}',
        f'{self.total_steps} steps (config.train.total_steps) at the compute bound: >= '
        f'{days(self.compute_bound_seconds)}; at the roofline bound: >= {days(roofline)}',
    ]

  def format(self) -> str:
    g = self.topology.generation
    mesh = ' '.join(f'{k}={v}' for k, v in self.mesh.items())
    unrolled = '' if self.unrolled_compile_seconds is None else f' + {self.unrolled_compile_seconds:.0f} s unrolled'
    return '\n'.join([
        f'{self.topology.name} ({self.topology.topology_name}, {self.num_devices} x {g.device_kind} devices), '
        f'mesh {mesh}, remat {self.remat_policy}, global batch {self.global_batch_size}',
        *self._memory_lines(), *self._cost_lines(),
        f'compiled in {self.compile_seconds:.0f} s{unrolled} on this host',
    ])


def _flop(flops: float) -> str:
  """FLOPs in PFLOP, TFLOP or GFLOP, the largest unit that keeps the number at least 1."""
  scale, unit = next(((s, u) for s, u in ((1e15, 'PFLOP'), (1e12, 'TFLOP')) if flops >= s), (1e9, 'GFLOP'))
  return f'{flops / scale:.4g} {unit}'


def unrolled(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with every layer stack unrolled (model.scan_layers=False): the same step with one copy
  of each layer in the program, which XLA's cost analysis then counts in full."""
  c = config.copy_and_resolve_references()
  c.model.scan_layers = False
  return c


def _compile(config: ml_collections.ConfigDict, task: Task, mesh: Mesh, setting: str) -> jax.stages.Compiled:
  """The task's train step for `config` compiled on `mesh`; DoesNotFitError when XLA runs out of HBM."""
  try:
    return setup.build(config, task, mesh=mesh).train_step
  except jax.errors.JaxRuntimeError as e:
    if compiled_lib.is_out_of_memory(e):
      raise DoesNotFitError(f'the train step does not fit in HBM on {setting}: XLA says {str(e)[:600]}. '
                            f'{_FIT_ADVICE}') from e
    raise


def compile_train_step(config: ml_collections.ConfigDict, task: Task, topology_name: str, *,
                       unrolled_cost: bool = True) -> tuple[Report, jax.stages.Compiled]:
  """Compiles the full train step of `config` for the named slice and, with `unrolled_cost` (when the config
  scans its layers), the same step unrolled, for XLA's FLOPs and bytes of every layer. Raises DoesNotFitError
  (naming the topology, mesh, remat policy and sizes) when the step as configured does not fit in HBM, before
  the unrolled compile. Returns the report and the step as configured, compiled."""
  topology = parse_topology(topology_name)
  mesh = setup.make_mesh(config, topology_devices(topology))
  setting = (f'{topology.name} with mesh {dict(mesh.shape)}, remat {config.model.remat_policy!r}, global batch '
             f'{config.train.global_batch_size}')
  start = time.perf_counter()
  compiled = _compile(config, task, mesh, setting)
  seconds, cost = time.perf_counter() - start, compiled_lib.cost(compiled)
  report = Report(topology, mesh.size, dict(mesh.shape), config.model.remat_policy, config.train.global_batch_size,
                  compiled_lib.memory(compiled), task.flops_per_step(config), cost,
                  None if config.model.scan_layers else cost, config.train.total_steps, seconds, None)
  if not report.fits:
    raise DoesNotFitError(f'the train step does not fit in HBM on {setting}: it needs '
                          f'{report.total_bytes / GiB:.2f} GiB per device, the chip has '
                          f'{report.hbm_bytes / GiB:.0f} GiB. {_FIT_ADVICE}\n{report.format()}')
  if unrolled_cost and config.model.scan_layers:
    start = time.perf_counter()
    full = _compile(unrolled(config), task, mesh, f'{setting}, unrolled (scan_layers=False) for its cost analysis '
                    'only; the scanned step fits: --nounrolled_cost skips this compile')
    report = dataclasses.replace(report, unrolled_cost=compiled_lib.cost(full),
                                 unrolled_compile_seconds=time.perf_counter() - start)
  return report, compiled
