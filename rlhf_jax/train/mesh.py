"""The device mesh, parameter and batch shardings, and host-to-device batch transfer.

The mesh has three named axes (big_vision / MaxText convention):

  data    pure data parallelism (parameters replicated),
  fsdp    data parallelism with parameters and optimizer state sharded (ZeRO-3),
  tensor  Megatron-style tensor parallelism (heads, MLP and vocabulary split).

Parameters get their sharding from their logical axis names through the rules of
`rlhf_jax.models.logical_axis_rules` (`flax.linen.logical_to_mesh_sharding`); the batch
axis of every input is split over ("data", "fsdp").
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# The parameters' shardings are the models' (the checkpoint loader uses them too).
from rlhf_jax.models.sharding import param_shardings, unbox_values

__all__ = [
    "BATCH_AXES",
    "MESH_AXES",
    "batch_sharding",
    "data_parallel_size",
    "make_mesh",
    "mesh_shape",
    "param_shardings",
    "replicated",
    "shard_batch",
    "unbox_values",
]


MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension of every input is split over both data-parallel axes.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """Resolves the axis sizes {data, fsdp, tensor} (one may be -1: fill) for `num_devices`.

  Raises ValueError when the sizes are not positive or -1, more than one is -1, or their
  product does not equal (or divide, with -1) the number of devices.
  """
  values = []
  for axis in MESH_AXES:
    value = sizes.get(axis, 1)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (value < 1 and value != -1):
      raise ValueError(f"mesh.{axis} must be a positive int or -1 (fill), got {value!r}.")
    values.append(int(value))
  fill = [axis for axis, v in zip(MESH_AXES, values) if v == -1]
  if len(fill) > 1:
    raise ValueError(f"at most one mesh axis may be -1 (fill), got {', '.join(fill)}.")
  known = math.prod(v for v in values if v != -1)
  if fill:
    if num_devices % known:
      raise ValueError(
          f"mesh sizes {dict(zip(MESH_AXES, values))} do not divide the {num_devices} devices.")
    values = [num_devices // known if v == -1 else v for v in values]
  elif known != num_devices:
    raise ValueError(
        f"mesh sizes {dict(zip(MESH_AXES, values))} use {known} devices, but {num_devices} are "
        "available; set one axis to -1 to fill.")
  return tuple(values)  # type: ignore[return-value]


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh with axes ("data", "fsdp", "tensor") of the given sizes (-1 fills).

  Axis types are `Auto`: shardings are propagated by the compiler from the
  `in_shardings`/`out_shardings` of the jitted steps and the models' logical constraints.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(dict(sizes), len(devices))
  return jax.make_mesh(
      shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of a value every device holds whole (scalars, step counters)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) dimension over ("data", "fsdp"); the rest is replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  """Number of batch shards: the product of the data and fsdp axis sizes."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a host batch on the mesh, split along its batch dimension.

  Every process passes the same global batch (each `BatchIterator` in the trainer yields
  the global batch), and `jax.make_array_from_process_local_data` with the global shape
  copies to each local device just its rows. This is exact for any mesh layout and any
  number of processes, so one-process and multi-process runs see identical inputs; the
  host cost is one global batch of token ids per process.
  """
  sharding = batch_sharding(mesh)
  shards = data_parallel_size(mesh)
  arrays = {}
  for name, value in batch.items():
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] % shards:
      raise ValueError(
          f"batch array {name!r} with shape {value.shape}: the batch dimension must be "
          f"divisible by the {shards} data-parallel shards (mesh data x fsdp).")
    arrays[name] = value
  if jax.process_count() == 1:
    # One transfer call for the whole dict (the per-array path pays a fixed cost per array).
    return jax.device_put(arrays, sharding)
  return {name: jax.make_array_from_process_local_data(sharding, value, value.shape)
          for name, value in arrays.items()}
