"""The machine a measurement ran on: devices, memory, driver / CUDA / cuDNN versions, library versions, commit.

Every number the device check reports carries this record, so that a figure in the docs names its device,
versions and commit. Nothing here is measured; what the runtime does not say is recorded as None.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import sys
from typing import Any

import jax

from merlot_jax.hardware import GiB

# Distributions whose versions a report names (the core install's, as pyproject.toml lists them).
DISTRIBUTIONS = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax', 'optax', 'orbax-checkpoint',
                 'chex', 'numpy', 'ml-collections', 'etils', 'tensorboard', 'merlot_jax')
# The device allocator's statistics worth keeping (GPU; the CPU reports none) -> their names in GiB.
MEMORY_STATS = {'bytes_limit': 'limit_gib', 'bytes_in_use': 'in_use_gib', 'peak_bytes_in_use': 'peak_in_use_gib',
                'bytes_reservable_limit': 'reservable_limit_gib'}
_NVIDIA_SMI_FIELDS = ('name', 'driver_version', 'memory.total', 'clocks.max.sm', 'power.limit')


def _version(distribution: str) -> str | None:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def git_commit(path: str | os.PathLike | None = None) -> str | None:
  """The checkout's HEAD (with '+dirty' when tracked files changed), or None outside a git checkout."""
  where = pathlib.Path(path or pathlib.Path(__file__).resolve().parents[2])
  if not shutil.which('git') or not (where / '.git').exists():
    return None
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=where, capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=where,
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ('+dirty' if dirty else '')


def cuda_versions() -> dict[str, int | None]:
  """CUDA runtime, driver (the CUDA version it supports) and cuDNN versions as the jax CUDA plugin reports
  them. jax has no public API for these: this reads jax._src.lib.cuda_versions (None without the plugin)."""
  try:
    from jax._src.lib import cuda_versions as versions  # noqa: PLC0415 - private: no public equivalent
  except ImportError:
    versions = None
  found = {}
  for name in ('cuda_runtime_get_version', 'cuda_driver_get_version', 'cudnn_get_version', 'cublas_get_version',
               'cudnn_build_version', 'cuda_runtime_build_version'):
    try:
      found[name.removesuffix('_get_version')] = int(getattr(versions, name)())
    except Exception:  # noqa: BLE001 - absent plugin, absent function, or a library that does not load
      found[name.removesuffix('_get_version')] = None
  return found


def nvidia_smi() -> dict[str, str] | None:
  """The first GPU's name, driver version, memory, max SM clock and power limit from nvidia-smi (None
  where it is not installed or fails)."""
  if not shutil.which('nvidia-smi'):
    return None
  try:
    out = subprocess.run(['nvidia-smi', f'--query-gpu={",".join(_NVIDIA_SMI_FIELDS)}', '--format=csv,noheader'],
                         capture_output=True, text=True, timeout=30, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  first = out.strip().splitlines()[:1]
  return dict(zip(_NVIDIA_SMI_FIELDS, (v.strip() for v in first[0].split(',')), strict=False)) if first else None


def memory(device: jax.Device) -> dict[str, float] | None:
  """The allocator's MEMORY_STATS of `device` in GiB, or None where the device reports none (the CPU)."""
  stats = device.memory_stats() or {}
  kept = {name: stats[k] / GiB for k, name in MEMORY_STATS.items() if k in stats}
  return kept or None


def describe(commit: str | None = None) -> dict[str, Any]:
  """Everything above as one JSON-ready record; `commit` overrides the checkout's (e.g. a copy without .git)."""
  device = jax.devices()[0]
  return {
      'date_utc': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ'),
      'commit': commit or git_commit() or 'unknown (not a git checkout: pass --commit)',
      'backend': jax.default_backend(),
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'local_device_count': jax.local_device_count(),
      'process_count': jax.process_count(),
      'platform_version': device.client.platform_version,
      'compute_capability': getattr(device, 'compute_capability', None),
      'memory': memory(device),
      'cuda': cuda_versions() if jax.default_backend() == 'gpu' else None,
      'nvidia_smi': nvidia_smi() if jax.default_backend() == 'gpu' else None,
      'versions': {d: v for d in DISTRIBUTIONS if (v := _version(d)) is not None},
      'python': sys.version.split()[0],
      'host': {'machine': platform.machine(), 'system': platform.system(), 'cpus': os.cpu_count()},
      'env': {k: v for k, v in sorted(os.environ.items()) if k.startswith(('JAX_', 'XLA_'))},
  }
