"""Logical axis rules and parameter accounting for the models.

Parameters carry logical names ("embed", "mlp", ...); a rule list maps each name to mesh
axes. Flax applies the rules in order and never assigns one mesh axis twice in a tensor,
so an activation [batch, length, embed] gets batch -> ("data", "fsdp") and an unsharded
embed axis, while a weight [embed, mlp] gets embed -> "fsdp" (ZeRO-3 / FSDP) and
mlp -> "tensor" (Megatron tensor parallelism).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.transformer import Transformer

__all__ = ["logical_axis_rules", "param_count", "abstract_params"]


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
