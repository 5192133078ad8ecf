"""Device mesh and the logical-axis rules that place parameters and activations on it.

Parameters and activations name their axes logically ('embed', 'mlp', 'batch', ...); `LOGICAL_RULES`
maps each name to mesh axes of a (data, fsdp, tensor) mesh. Parameters are FSDP-sharded over `fsdp`,
heads/mlp/vocab over `tensor`, and the batch of activations over ('data', 'fsdp').
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    'batch': ('data', 'fsdp'),
    'embed': 'fsdp',
    'mlp': 'tensor',
    'heads': 'tensor',
    'vocab': 'tensor',
    'layers': None,
    'seq': None,
    'replicated': None,  # norms, small tables, conv kernels of the ResNet stem
}


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one entry may be -1 and takes the devices that are left.

  The one mesh builder: training, evaluation and the ahead-of-time compiles for a TPU topology all lay the
  devices out with `mesh_utils.create_device_mesh` (on a TPU, along the physical torus; elsewhere in order),
  so an AOT compile sees the device layout that training uses."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh {dict(zip(MESH_AXES, sizes, strict=True))}: at most one axis may be -1')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'config.mesh {dict(zip(MESH_AXES, sizes, strict=True))}: {len(devices)} devices are not '
                       f'divisible by the fixed axes ({known})')
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f'config.mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {int(np.prod(sizes))} devices, '
                     f'but {len(devices)} are available')
  return Mesh(mesh_utils.create_device_mesh(sizes, devices), MESH_AXES)


def _mesh_axes_size(mesh: Mesh | jax.sharding.AbstractMesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | jax.sharding.AbstractMesh | None = None) -> PartitionSpec:
  """PartitionSpec for logical axis names; with shape and mesh, a dimension the mesh axes do not
  divide evenly stays replicated (e.g. the GPT-2 vocab of 50370 on a 4-way tensor axis)."""
  spec, used = [], set()
  for i, name in enumerate(logical_axes):
    if name is not None and name not in LOGICAL_RULES:
      raise KeyError(f'logical axis {name!r} has no rule in sharding.LOGICAL_RULES')
    axes = LOGICAL_RULES.get(name) if name is not None else None
    if axes is not None and shape is not None and mesh is not None:
      if shape[i] % _mesh_axes_size(mesh, axes):
        axes = None
    if axes is not None:  # a mesh axis can shard one dimension only: ('batch', 'seq', 'embed') -> embed replicated
      names = {axes} if isinstance(axes, str) else set(axes)
      if names & used:
        axes = None
      used |= names
    spec.append(axes)
  return PartitionSpec(*spec)


def param_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
  """NamedShardings for every variable of an (abstract) NNX state, from its `out_sharding` names."""

  def one(var):
    names = getattr(var, 'out_sharding', None) or (None,) * var.get_value().ndim
    return NamedSharding(mesh, logical_to_spec(names, var.get_value().shape, mesh))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Shards the leading (batch) axis over ('data', 'fsdp'); the rest is replicated."""
  return NamedSharding(mesh, PartitionSpec(LOGICAL_RULES['batch'], *([None] * (ndim - 1))))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical axes; a no-op outside a mesh context."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))
