"""Logical axis rules, parameter shardings and parameter accounting for the models.

Parameters carry logical names ("embed", "mlp", ...); a rule list maps each name to mesh
axes. Flax applies the rules in order and never assigns one mesh axis twice in a tensor,
so an activation [batch, length, embed] gets batch -> ("data", "fsdp") and an unsharded
embed axis, while a weight [embed, mlp] gets embed -> "fsdp" (ZeRO-3 / FSDP) and
mlp -> "tensor" (Megatron tensor parallelism). `param_shardings` turns the names into
NamedShardings on a mesh (for the trainers and the checkpoint loader alike), replicating
a dimension its mesh axes do not divide.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.transformer import Transformer

__all__ = ["abstract_params", "fit_spec", "logical_axis_rules", "param_count", "param_shardings", "unbox_values"]

_log = logging.getLogger(__name__)


def logical_axis_rules(
    mesh_axes: Sequence[str] = ("data", "fsdp", "tensor"),
) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """Default rules mapping logical axis names to the mesh axes present in `mesh_axes`.

  batch -> ("data", "fsdp"); embed -> "fsdp"; mlp, heads, kv_heads, vocab -> "tensor";
  length, head_dim, layers -> None (replicated). A mesh axis missing from `mesh_axes` is
  dropped, so the rules suit a mesh with any subset of the three axes. Use with
  `nn.logical_axis_rules(rules)` and `nn.logical_to_mesh_sharding`.
  """
  mesh_axes = tuple(mesh_axes)
  unknown = [a for a in mesh_axes if a not in ("data", "fsdp", "tensor")]
  if unknown:
    raise ValueError(
        f"logical_axis_rules: unknown mesh axes {unknown}; the rules know 'data', 'fsdp', 'tensor'."
    )

  def keep(*axes: str):
    present = tuple(a for a in axes if a in mesh_axes)
    if not present:
      return None
    return present if len(present) > 1 else present[0]

  return (
      ("batch", keep("data", "fsdp")),
      ("embed", keep("fsdp")),
      ("mlp", keep("tensor")),
      ("heads", keep("tensor")),
      ("kv_heads", keep("tensor")),
      ("vocab", keep("tensor")),
      ("length", None),
      ("head_dim", None),
      ("layers", None),
  )


def abstract_params(model: nn.Module, batch_size: int = 1, length: int = 8):
  """Boxed (`nn.LogicallyPartitioned`) parameter shapes of `model` via `jax.eval_shape`:
  nothing is allocated, so this works for the 7B preset on a laptop."""
  tokens = jax.ShapeDtypeStruct((batch_size, min(length, model.config.max_len)), jnp.int32)
  mask = jax.ShapeDtypeStruct(tokens.shape, jnp.bool_)
  return jax.eval_shape(lambda t, m: model.init(jax.random.key(0), t, m), tokens, mask)["params"]


def param_count(model_or_config: nn.Module | TransformerConfig) -> int:
  """Number of parameters (from abstract shapes; a config means a language `Transformer`)."""
  if isinstance(model_or_config, TransformerConfig):
    model_or_config = Transformer(model_or_config)
  leaves = jax.tree.leaves(nn.unbox(abstract_params(model_or_config)))
  return sum(math.prod(leaf.shape) for leaf in leaves)


def fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, name: str = "") -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide (e.g. 2 kv heads, tensor=4).

  jit needs every sharded dimension to be divisible by its mesh axes; such a dimension
  is replicated instead, with a log message naming the parameter, rather than failing.
  """
  fitted = []
  for dim, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    axes_tuple = axes if isinstance(axes, tuple) else (axes,)
    size = math.prod(mesh.shape[a] for a in axes_tuple)
    if shape[dim] % size:
      _log.info("parameter %s: dimension %d (size %d) is not divisible by mesh axes %s (%d); "
                "replicating it.", name, dim, shape[dim], axes_tuple, size)
      fitted.append(None)
    else:
      fitted.append(axes)
  return PartitionSpec(*fitted)


def unbox_values(tree: Any) -> Any:
  """The values inside `nn.LogicallyPartitioned` boxes, without applying any sharding
  constraint (`nn.unbox` constrains when a mesh is active, which abstract shapes outside
  a trace cannot take)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def param_shardings(
    boxed_params: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] | None = None,
) -> Any:
  """NamedShardings for a tree of boxed (`nn.LogicallyPartitioned`) parameters.

  Args:
    boxed_params: parameters or their abstract shapes (from `jax.eval_shape(init)`), with
      the logical axis names the models attach; unboxed leaves are replicated.
    mesh: the device mesh.
    rules: logical-name -> mesh-axes rules; default `logical_axis_rules(mesh.axis_names)`.

  Returns:
    A tree with the structure of `nn.unbox(boxed_params)` whose leaves are NamedShardings
    (`fit_spec`: a dimension its mesh axes do not divide is replicated).
  """
  rules = logical_axis_rules(mesh.axis_names) if rules is None else rules
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_params), mesh, rules)
  shapes = unbox_values(boxed_params)
  flat_shapes, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  flat_shardings = treedef.flatten_up_to(shardings)
  fitted = []
  for (path, leaf), sharding in zip(flat_shapes, flat_shardings):
    name = jax.tree_util.keystr(path)
    fitted.append(NamedSharding(mesh, fit_spec(sharding.spec, tuple(leaf.shape), mesh, name)))
  return treedef.unflatten(fitted)
