"""Low-rank adapters (LoRA; Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang & Chen 2021,
arXiv 2106.09685) on the transformer's projections.

A projection `y = x W` (W [in, out], heads split out as in `layers`) with an adapter is

    y = x W + (alpha / r) * dropout(x) A B,      A [in, r], B [r, out]

where W is frozen and only A and B train. A starts random (LeCun normal over its input
axes, the paper's "random Gaussian"), B at zero, so an adapted model starts exactly as
its base. The config fields `lora_rank` (r; 0 is off), `lora_alpha`, `lora_dropout` and
`lora_targets` of `TransformerConfig` switch adapters on; the layers call `adapter` next
to each targeted projection, so every path (full forward, packed rows, KV-cache
decoding, reward and value models) runs the adapted model.

Parameters: an adapter on projection `name` adds `{name}_lora_a` and `{name}_lora_b`
beside the projection's kernel (e.g. `layer_0/attention/query_lora_a`). Everything else
in this module works on such parameter trees:

    adapters = adapter_params(params)            # only A and B (what a run saves)
    base = base_params(params)                   # the pretrained weights, no adapters
    params = combine(base, adapters)
    merged = merge(params, config)               # W + (alpha / r) A B, adapters gone
    reference = base_model(model)                # the same model with adapters off:
    reference.apply({"params": params}, ...)     #   the base model, no second copy

`trainable_mask(params)` marks what a LoRA run trains: the adapters, the reward or value
head of a model that has one (a new head has no pretrained value to keep), and an
objective's own parameters (`objective_params`: the `OBJECTIVE_KEY` subtree, such as
Crowd-BT's learned annotator reliabilities).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import zlib
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import LORA_TARGETS, TransformerConfig

__all__ = ["ADAPTER_SUFFIXES", "HEAD_NAMES", "LORA_TARGETS", "OBJECTIVE_KEY", "adapter", "adapter_params", "base_config",
           "base_model", "base_params", "block_index", "combine", "dropout_key", "enabled", "is_adapter",
           "is_objective_param", "is_trainable", "merge", "network_params", "objective_params", "param_counts",
           "scale", "trainable_mask", "trainable_params"]

ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")
# Heads a LoRA run trains in full alongside the adapters (as PEFT's `modules_to_save`).
HEAD_NAMES = ("reward_head", "value_head")
# The subtree of an objective's own parameters (e.g. learned annotator reliabilities),
# beside the network's: trained in full, read from no checkpoint.
OBJECTIVE_KEY = "objective"


# The trainer's dropout key (`dropout_key`), read while its step is traced.
_DROPOUT_KEY: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar("lora_dropout_key", default=None)
# The index of the transformer block being traced (`block_index`): under `nn.scan` every
# block has the same module path, so the path alone would give every layer one mask.
_BLOCK_INDEX: contextvars.ContextVar[jax.Array | int | None] = contextvars.ContextVar("lora_block_index",
                                                                                      default=None)


@contextlib.contextmanager
def dropout_key(key: jax.Array | None) -> Iterator[None]:
  """Adapters apply dropout with `key` (folded with each adapter's module path and name)
  inside this context: how a train step switches LoRA dropout on without threading
  `rngs` through every objective's `apply`. Explicit `rngs={"dropout": ...}` win."""
  token = _DROPOUT_KEY.set(key)
  try:
    yield
  finally:
    _DROPOUT_KEY.reset(token)


@contextlib.contextmanager
def block_index(index: jax.Array | int | None) -> Iterator[None]:
  """Adapters traced inside this context are in transformer block `index` (an int, or
  the traced layer counter of a scanned stack): `dropout_key`'s masks fold it in, so
  scanned layers, which share one module path, still draw a different mask each."""
  token = _BLOCK_INDEX.set(index)
  try:
    yield
  finally:
    _BLOCK_INDEX.reset(token)


def enabled(config: TransformerConfig) -> bool:
  """True when `config` puts adapters on some projection."""
  return config.lora_rank > 0


def scale(config: TransformerConfig) -> float:
  """alpha / r, the factor of the adapters' product (Hu et al. 2021, section 4.1)."""
  return float(config.lora_alpha) / config.lora_rank


def adapter(module: nn.Module, name: str, x: jax.Array, shape: tuple[int, ...], axes: tuple[Any, ...],
            contract: int = 1) -> jax.Array:
  """The adapter's term `(alpha / r) * dropout(x) A B` of projection `name` of `module`.

  Creates `{name}_lora_a` [*in, r] and `{name}_lora_b` [r, *out] on `module` (whose
  `config` is a `TransformerConfig`), where the projection's kernel has `shape` = in +
  out (`contract` input axes) and logical axis names `axes`; the rank axis is unsharded.
  `x` [..., *in] is the projection's input. Dropout (rate `lora_dropout`, inverted
  scaling) runs only when the caller passed a "dropout" PRNG key to `apply` (split over
  scanned layers), or inside `dropout_key(key)` (the train step's; folded with the
  adapter's module path and `block_index`), so every layer and projection draws its own
  mask.
  Returns [..., *out] in the compute dtype.
  """
  from rlhf_jax.models.layers import project  # pylint: disable=g-import-not-at-top (layers imports this module)
  cfg = module.config
  rank = cfg.lora_rank
  inner, outer = tuple(shape[:contract]), tuple(shape[contract:])
  fan_in = math.prod(inner)

  def init_a(key, a_shape, dtype):
    return (jax.random.truncated_normal(key, -2.0, 2.0, a_shape, jnp.float32)
            * (fan_in ** -0.5 / 0.8796256610342398)).astype(dtype)  # unit variance after truncation

  lora_a = module.param(f"{name}_lora_a", nn.with_logical_partitioning(init_a, tuple(axes[:contract]) + (None,)),
                        inner + (rank,), cfg.params_dtype)
  lora_b = module.param(f"{name}_lora_b", nn.with_logical_partitioning(
      nn.initializers.zeros_init(), (None,) + tuple(axes[contract:])), (rank,) + outer, cfg.params_dtype)
  dtype = cfg.compute_dtype
  x = x.astype(dtype)
  key = None
  if cfg.lora_dropout > 0:
    if module.has_rng("dropout"):
      key = module.make_rng("dropout")
    elif _DROPOUT_KEY.get() is not None:
      where = "/".join(map(str, module.path)) + f"/{name}"
      key = jax.random.fold_in(_DROPOUT_KEY.get(), zlib.crc32(where.encode()) & 0x7FFFFFFF)
      if _BLOCK_INDEX.get() is not None:
        key = jax.random.fold_in(key, _BLOCK_INDEX.get())
  if key is not None:
    keep = 1.0 - cfg.lora_dropout
    mask = jax.random.bernoulli(key, keep, x.shape)
    x = jnp.where(mask, x / jnp.asarray(keep, dtype), jnp.zeros((), dtype))
  low = project(x, lora_a.astype(dtype), contract)  # [..., r]
  return project(low, lora_b.astype(dtype)) * jnp.asarray(scale(cfg), dtype)


def base_config(config: TransformerConfig) -> TransformerConfig:
  """`config` with adapters off (the frozen base's architecture)."""
  return config.replace(lora_rank=0)


def base_model(model: nn.Module) -> nn.Module:
  """The same module with adapters switched off: applied to a LoRA model's parameters it
  reads the base weights and ignores the adapters (Flax skips unused parameters), so the
  reference of DPO or of an online KL term needs no second copy of the model. Works on
  any module whose fields include `TransformerConfig`s (policy, reward, value,
  `PolicyWithValue`, reward ensembles)."""
  fields = {}
  for field in getattr(model, "__dataclass_fields__", {}):
    value = getattr(model, field, None)
    if isinstance(value, TransformerConfig):
      fields[field] = base_config(value)
  return model.clone(**fields) if fields else model


def _key_name(key: Any) -> str:
  return str(getattr(key, "key", getattr(key, "name", key)))


def is_adapter(path: tuple[Any, ...]) -> bool:
  """True for the path (tuple of keys or of `jax.tree_util` path entries) of an A or B."""
  return bool(path) and _key_name(path[-1]).endswith(ADAPTER_SUFFIXES)


def _is_head(path: tuple[Any, ...]) -> bool:
  return any(_key_name(k) in HEAD_NAMES for k in path)


def is_objective_param(path: tuple[Any, ...]) -> bool:
  """True for a leaf under `OBJECTIVE_KEY`: an objective's own parameter (`train.state`
  keeps them there, beside the network's), which no checkpoint holds and a LoRA run
  trains in full like a head."""
  return bool(path) and _key_name(path[0]) == OBJECTIVE_KEY


def is_trainable(path: tuple[Any, ...]) -> bool:
  """True for what a LoRA run trains: an adapter, a leaf of a reward / value head, or an
  objective's own parameter."""
  return is_adapter(path) or _is_head(path) or is_objective_param(path)


def _filter(tree: Mapping[str, Any], keep, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = prefix + (key,)
    if isinstance(value, Mapping):
      sub = _filter(value, keep, path)
      if sub:
        out[key] = sub
    elif keep(path):
      out[key] = value
  return out


def adapter_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Only the adapters' A and B (same nesting; empty subtrees dropped)."""
  return _filter(params, is_adapter)


def base_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Everything but the adapters."""
  return _filter(params, lambda path: not is_adapter(path))


def objective_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Only the objective's own parameters (the `OBJECTIVE_KEY` subtree, if any)."""
  return {key: value for key, value in params.items() if key == OBJECTIVE_KEY}


def network_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The network's parameters (base and adapters), without the objective's own."""
  return {key: value for key, value in params.items() if key != OBJECTIVE_KEY}


def trainable_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """What a LoRA run trains and saves: the adapters and any reward or value head."""
  return _filter(params, is_trainable)


def trainable_mask(params: Any) -> Any:
  """A tree of bools like `params`: true on adapters and on reward / value heads."""
  return jax.tree_util.tree_map_with_path(lambda path, _: is_trainable(path), params)


def combine(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
  """`base` with the leaves of `extra` added (or replacing base leaves at equal paths)."""
  out = dict(base)
  for key, value in extra.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = combine(out[key], value)
    else:
      out[key] = value
  return out


def merge(params: Mapping[str, Any], config: TransformerConfig) -> dict[str, Any]:
  """The base parameters with every adapter folded into its kernel, adapters dropped:

    W' = W + (alpha / r) A B

  (A [..., *in, r], B [..., r, *out], W [..., *in, *out]; leading axes such as scanned
  layers or ensemble members are batch axes). Computed in float32, stored in W's dtype.
  The merged tree fits `base_model(model)`, and gives its logits the adapted model's
  (without dropout).
  """
  factor = scale(config) if enabled(config) else 1.0

  def walk(tree: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
      if isinstance(value, Mapping):
        out[key] = walk(value)
      elif key.endswith(ADAPTER_SUFFIXES):
        continue
      elif f"{key}_lora_a" in tree:
        lora_a, lora_b = tree[f"{key}_lora_a"], tree[f"{key}_lora_b"]
        rank = lora_a.shape[-1]
        lead = lora_a.ndim + lora_b.ndim - 2 - value.ndim  # leading batch axes (layers, members)
        inner = math.prod(lora_a.shape[lead:-1])
        a = jnp.asarray(lora_a, jnp.float32).reshape(*lora_a.shape[:lead], inner, rank)
        b = jnp.asarray(lora_b, jnp.float32).reshape(*lora_b.shape[:lead], rank, -1)
        delta = (a @ b).reshape(value.shape) * factor
        out[key] = (jnp.asarray(value, jnp.float32) + delta).astype(value.dtype)
      else:
        out[key] = value
    return out

  return walk(params)


def param_counts(params: Any) -> dict[str, int]:
  """{"trainable": adapters + heads, "total": every parameter} (element counts)."""
  mask = jax.tree.leaves(trainable_mask(params))
  sizes = [math.prod(jnp.shape(x)) for x in jax.tree.leaves(params)]
  return {"trainable": int(sum(s for s, m in zip(sizes, mask) if m)), "total": int(sum(sizes))}
