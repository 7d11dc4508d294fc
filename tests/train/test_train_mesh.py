"""Mesh sizes from the config, and the fallback for dimensions a mesh axis does not divide."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rlhf_jax.train import mesh as mesh_lib


@pytest.mark.parametrize("sizes, devices, expected", [
    ({"data": -1, "fsdp": 1, "tensor": 1}, 8, (8, 1, 1)),
    ({"data": 1, "fsdp": -1, "tensor": 4}, 256, (1, 64, 4)),
    ({"data": 2, "fsdp": 2, "tensor": 2}, 8, (2, 2, 2)),
    ({"tensor": -1}, 4, (1, 1, 4)),  # missing axes have size 1
])
def test_mesh_shape_fills_one_axis(sizes, devices, expected):
  assert mesh_lib.mesh_shape(sizes, devices) == expected


@pytest.mark.parametrize("sizes, devices, message", [
    ({"data": -1, "fsdp": -1}, 8, "at most one mesh axis may be -1"),
    ({"data": 3, "fsdp": -1}, 8, "do not divide the 8 devices"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, 8, "use 4 devices, but 8 are available"),
    ({"data": 0}, 8, "mesh.data must be a positive int or -1"),
])
def test_mesh_shape_errors(sizes, devices, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.mesh_shape(sizes, devices)


def test_shard_batch_checks_divisibility():
  mesh = mesh_lib.make_mesh({"data": -1})
  batch = mesh_lib.shard_batch({"tokens": np.arange(6).reshape(3, 2)}, mesh)
  np.testing.assert_array_equal(np.asarray(batch["tokens"]), np.arange(6).reshape(3, 2))
  with pytest.raises(ValueError, match="batch array 'x'"):
    mesh_lib.shard_batch({"x": np.float32(1.0)}, mesh)
