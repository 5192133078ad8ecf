"""Hardware tables: TPU generations and slice topologies, GPU bf16 peaks (datasheet figures, no JAX).

Slice names count what Cloud TPU counts: v3-N, v4-N and v5p-N are N TensorCores (N / 2 chips),
v5e-N (= v5litepod-N) is N chips. JAX sees a v3 core as one device, and a v4 / v5p chip (megacore)
or a v5e chip as one device; the HBM, peak FLOP/s and HBM bandwidth below are per JAX device.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation, per JAX device."""

  platform: str  # libtpu's topology prefix
  device_kind: str
  dims: int  # 2-D or 3-D torus
  devices_per_chip: int  # 2 on v3 (a device is a core), 1 elsewhere (v4 / v5p: megacore)
  hbm_bytes: int
  peak_flops: float  # bfloat16 FLOP/s
  hbm_bandwidth: float  # bytes/s
  name_counts_cores: bool  # 'v4-8' is 8 cores; 'v5e-8' is 8 chips


# Per chip in the Cloud TPU system-architecture tables (GBps = 1e9 bytes/s), divided by devices per chip:
# v3 123 TFLOP/s, 32 GiB, 900 GBps (cloud.google.com/tpu/docs/v3); v4 275 TFLOP/s, 32 GiB, 1200 GBps
# (cloud.google.com/tpu/docs/v4); v5e 197 TFLOP/s, 16 GB, 819 GBps (cloud.google.com/tpu/docs/v5e); v5p
# 459 TFLOP/s, 95 GB, 2765 GBps (cloud.google.com/tpu/docs/v5p-training).
GENERATIONS = {
    'v3': Generation('v3', 'TPU v3', 2, 2, 16 * GiB, 123e12 / 2, 900e9 / 2, True),
    'v4': Generation('v4', 'TPU v4', 3, 1, 32 * GiB, 275e12, 1200e9, True),
    'v5e': Generation('v5e', 'TPU v5 lite', 2, 1, 16 * GiB, 197e12, 819e9, False),
    'v5p': Generation('v5p', 'TPU v5', 3, 1, 95 * GiB, 459e12, 2765e9, True),
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



# bf16 dense (no sparsity) tensor-core peaks in TFLOP/s per GPU, from NVIDIA's datasheets, which quote
# "with sparsity" figures, twice these (nvidia.com: H100, H200, A100, L4 and V100 datasheets). The key is a
# word of jax's device_kind (e.g. 'NVIDIA H100 80GB HBM3', 'NVIDIA H200'); the first match counts.
GPU_PEAK_TFLOPS = (
    ('H200', 989.0),  # H200 SXM: BF16 Tensor Core 1,979 TFLOPS with sparsity
    ('H100 PCIe', 756.0),  # H100 PCIe: 1,513 with sparsity
    ('H100 NVL', 835.5),  # H100 NVL: 1,671 with sparsity
    ('H100', 989.0),  # H100 SXM: 1,979 with sparsity
    ('A100', 312.0),  # A100 SXM and PCIe: BF16 Tensor Core 312 (624 with sparsity)
    ('L4', 121.0),  # L4: BF16 Tensor Core 242 with sparsity
    ('V100-PCIE', 112.0),  # V100 PCIe: FP16 Tensor Core 112 (Volta has no bf16)
    ('V100', 125.0),  # V100 SXM2: FP16 Tensor Core 125
)

def gpu_peak_tflops(device_kind: str) -> float | None:
  """The bf16 dense peak of GPU_PEAK_TFLOPS for jax's device_kind, or None if it is not listed."""
  for key, tflops in GPU_PEAK_TFLOPS:
    if re.search(rf'\b{re.escape(key)}\b', device_kind):
      return tflops
  return None
