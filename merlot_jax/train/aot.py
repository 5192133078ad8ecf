"""Ahead-of-time compilation of the full train step for a TPU topology, on any host (MaxText's
`train_compile`): libtpu builds compile-only devices for the topology, the state and the global batch
are ShapeDtypeStructs with their NamedShardings, and XLA's TPU compiler reports memory and FLOPs.

Slice names count what Cloud TPU counts: v3-N, v4-N and v5p-N are N TensorCores (N / 2 chips),
v5e-N (= v5litepod-N) is N chips. JAX sees a v3 core as one device, and a v4 / v5p chip (megacore)
or a v5e chip as one device; the HBM and peak FLOP/s below are per JAX device.
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import mesh_utils, topologies
from jax.sharding import Mesh

from merlot_jax import sharding
from merlot_jax.train import optim
from merlot_jax.train import state as state_lib
from merlot_jax.train import step as step_lib
from merlot_jax.train.metrics import model_flops_per_example

GiB = 2**30


class DoesNotFitError(RuntimeError):
  """The compiled step needs more memory per device than the chip's HBM."""


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation, per JAX device."""

  platform: str  # libtpu's topology prefix
  device_kind: str
  dims: int  # 2-D or 3-D torus
  devices_per_chip: int  # 2 on v3 (a device is a core), 1 elsewhere (v4 / v5p: megacore)
  hbm_bytes: int
  peak_flops: float  # bfloat16 FLOP/s
  name_counts_cores: bool  # 'v4-8' is 8 cores; 'v5e-8' is 8 chips


GENERATIONS = {
    'v3': Generation('v3', 'TPU v3', 2, 2, 16 * GiB, 123e12 / 2, True),  # 32 GiB, 123 TF per 2-core chip
    'v4': Generation('v4', 'TPU v4', 3, 1, 32 * GiB, 275e12, True),
    'v5e': Generation('v5e', 'TPU v5 lite', 2, 1, 16 * GiB, 197e12, False),
    'v5p': Generation('v5p', 'TPU v5', 3, 1, 95 * GiB, 459e12, True),
}
_ALIASES = {'v5litepod': 'v5e'}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # as the user wrote it
  generation: Generation
  shape: tuple[int, ...]  # chips per torus axis

  @property
  def topology_name(self) -> str:
    return f'{self.generation.platform}:{"x".join(map(str, self.shape))}'

  @property
  def num_chips(self) -> int:
    return int(np.prod(self.shape))


def _chip_grid(chips: int, dims: int) -> tuple[int, ...]:
  """Cloud TPU's slice shape for `chips` chips: double the smallest axis (the last one on ties)."""
  shape = [1] * dims if dims == 2 or chips < 4 else [2, 2, 1]
  if dims == 3 and chips < 4:
    shape = [1, 1, chips]
  while int(np.prod(shape)) < chips:
    axis = max(i for i, s in enumerate(shape) if s == min(shape))
    shape[axis] *= 2
  return tuple(shape)


def parse_topology(name: str) -> Topology:
  """'v3-1024', 'v4-256', 'v5e-256' / 'v5litepod-256', 'v5p-512', or libtpu's own 'v5e:2x2', 'v4:2x2x1'."""
  match = re.fullmatch(r'(v\d[a-z]*|v5litepod)([-:])([\dx]+)', name.strip().lower())
  gen = match and GENERATIONS.get(_ALIASES.get(match.group(1), match.group(1)))
  if not gen:
    raise ValueError(f'--topology {name!r}: expected GENERATION-SIZE (e.g. v3-1024, v4-256, v5e-256, v5p-512) '
                     f'or GENERATION:AxBxC (e.g. v5e:2x2); generations: {sorted(GENERATIONS)}')
  if match.group(2) == ':':
    shape = tuple(int(s) for s in match.group(3).split('x'))
    if len(shape) != gen.dims:
      raise ValueError(f'--topology {name!r}: a {gen.platform} slice is a {gen.dims}-D torus')
    return Topology(name, gen, shape)
  size = int(match.group(3))
  per_chip = 2 if gen.name_counts_cores else 1
  chips = size // per_chip
  if size % per_chip or chips < 1 or chips & (chips - 1):
    raise ValueError(f'--topology {name!r}: {gen.platform} slice sizes count '
                     f'{"TensorCores (2 per chip)" if per_chip == 2 else "chips"} and are powers of 2')
  return Topology(name, gen, _chip_grid(chips, gen.dims))


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


def topology_mesh(config: ml_collections.ConfigDict, devices: list[jax.Device]) -> Mesh:
  """The config's (data, fsdp, tensor) mesh, laid out on the physical torus by mesh_utils."""
  shape = sharding.make_mesh(config.mesh, devices).devices.shape  # resolves -1 and checks the count
  return Mesh(mesh_utils.create_device_mesh(shape, devices), sharding.MESH_AXES)


def abstract_batch(config: ml_collections.ConfigDict, mesh: Mesh) -> step_lib.Batch:
  """The global batch as ShapeDtypeStructs sharded like `step.global_batch` makes it."""
  m, b = config.model, config.train.global_batch_size
  batch_devices = mesh.shape['data'] * mesh.shape['fsdp']
  if b % batch_devices:
    raise ValueError(f'config.train.global_batch_size = {b} must be divisible by mesh data x fsdp = '
                     f'{batch_devices}')
  shapes = {'images': ((b, m.num_segments, *m.image_size, 3), jnp.uint8),
            'input_ids': ((b, m.num_segments, m.segment_length), jnp.int32),
            'video_src_ids': ((b, m.num_segments), jnp.int32), 'image_index': ((b, m.num_segments), jnp.int32)}
  sh = step_lib.batch_shardings(mesh, config)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sh[k]) for k, (shape, dtype) in shapes.items()}


@dataclasses.dataclass(frozen=True)
class Report:
  topology: Topology
  num_devices: int
  mesh: dict[str, int]
  remat_policy: str
  global_batch_size: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs written into donated arguments
  temp_bytes: int
  code_bytes: int
  model_flops_per_step: float  # analytic, whole slice
  xla_flops_per_step: float | None  # cost_analysis, summed over devices
  xla_seconds: float | None  # cost_analysis's own estimate, if it offers one
  total_steps: int

  @property
  def total_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

  @property
  def hbm_bytes(self) -> int:
    return self.topology.generation.hbm_bytes

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.hbm_bytes

  @property
  def step_seconds(self) -> float:
    """A lower bound: the larger FLOP count at the chips' peak, or XLA's roofline estimate if longer.
    (XLA's cost analysis counts a scanned loop body once, so its FLOPs and time undercount.)"""
    flops = max(self.model_flops_per_step, self.xla_flops_per_step or 0.0)
    return max(flops / (self.num_devices * self.topology.generation.peak_flops), self.xla_seconds or 0.0)

  @property
  def mfu(self) -> float:
    return self.model_flops_per_step / (self.step_seconds * self.num_devices * self.topology.generation.peak_flops)

  def format(self) -> str:
    g, gib = self.topology.generation, lambda x: f'{x / GiB:7.2f} GiB'
    mesh = ' '.join(f'{k}={v}' for k, v in self.mesh.items())
    xla = f'{self.xla_flops_per_step / 1e15:.2f} PFLOP' if self.xla_flops_per_step else 'n/a'
    xla_time = f'{self.xla_seconds:.3f} s' if self.xla_seconds else 'n/a'
    peak = self.num_devices * g.peak_flops
    days = lambda seconds: seconds * self.total_steps / 86400
    return '\n'.join([
        f'{self.topology.name} ({self.topology.topology_name}, {self.num_devices} x {g.device_kind} devices), '
        f'mesh {mesh}, remat {self.remat_policy}, global batch {self.global_batch_size}',
        'memory per device:',
        f'  arguments     {gib(self.argument_bytes)}',
        f'  outputs       {gib(self.output_bytes)} ({gib(self.alias_bytes).strip()} aliased to donated arguments)',
        f'  temporaries   {gib(self.temp_bytes)}',
        f'  generated code{gib(self.code_bytes)}',
        f'  total         {gib(self.total_bytes)} of {gib(self.hbm_bytes).strip()} HBM '
        f'({100 * self.total_bytes / self.hbm_bytes:.0f}%)',
        f'FLOPs per step: model {self.model_flops_per_step / 1e15:.2f} PFLOP, XLA cost analysis {xla}',
        f'step time >= {self.step_seconds:.3f} s (FLOPs at peak; XLA roofline {xla_time}) -> MFU <= '
        f'{100 * self.mfu:.0f}%; {self.total_steps} steps: >= {days(self.step_seconds):.1f} days, '
        f'{days(self.model_flops_per_step / (0.4 * peak)):.1f} days at 40% MFU',
    ])


def _cost(compiled: jax.stages.Compiled) -> tuple[float | None, float | None]:
  costs = compiled.cost_analysis()
  costs = costs[0] if isinstance(costs, (list, tuple)) else costs
  if not costs:
    return None, None
  flops = costs.get('flops')
  seconds = costs.get('optimal_seconds')
  return (float(flops) if flops and flops > 0 else None), (float(seconds) if seconds and seconds > 0 else None)


def compile_train_step(config: ml_collections.ConfigDict, topology_name: str) -> tuple[Report,
                                                                                        jax.stages.Compiled]:
  """Lowers and compiles the full train step of `config` for the named slice. Raises DoesNotFitError
  (naming the topology, mesh, remat policy and sizes) when it does not fit in HBM."""
  topology = parse_topology(topology_name)
  devices = topology_devices(topology)
  mesh = topology_mesh(config, devices)
  tx = optim.make_optimizer(config.optim, config.train.total_steps)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
  batch = abstract_batch(config, mesh)
  jitted = step_lib.jit_train_step(config, graphdef, tx, mesh, shardings)
  setting = (f'{topology.name} with mesh {dict(mesh.shape)}, remat {config.model.remat_policy!r}, global batch '
             f'{config.train.global_batch_size}')
  with jax.set_mesh(mesh):
    lowered = jitted.lower(abstract, batch)
    try:
      compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
      if 'RESOURCE_EXHAUSTED' in str(e) or 'out of memory' in str(e).lower():
        raise DoesNotFitError(f'the train step does not fit in HBM on {setting}: XLA says {str(e)[:600]}. '
                              'Try more fsdp/tensor sharding, --remat full, or a smaller batch.') from e
      raise
  mem = compiled.memory_analysis()
  flops, seconds = _cost(compiled)
  n = len(devices)
  report = Report(topology, n, dict(mesh.shape), config.model.remat_policy, config.train.global_batch_size,
                  mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                  mem.temp_size_in_bytes, mem.generated_code_size_in_bytes,
                  model_flops_per_example(config) * config.train.global_batch_size,
                  None if flops is None else flops * n, seconds, config.train.total_steps)
  if not report.fits:
    raise DoesNotFitError(f'the train step does not fit in HBM on {setting}: it needs '
                          f'{report.total_bytes / GiB:.2f} GiB per device, the chip has '
                          f'{report.hbm_bytes / GiB:.0f} GiB. Try more fsdp/tensor sharding, --remat full, '
                          f'or a smaller batch.\n{report.format()}')
  return report, compiled
