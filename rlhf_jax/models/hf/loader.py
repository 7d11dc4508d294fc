"""Loading a Hugging Face checkpoint (or a GGUF file) into our models, each tensor placed
straight into its sharded layout.

    model, params = load("path/to/checkpoint")                    # a policy
    model, params = load(path, kind="reward")                     # RewardModel
    model, params = load(path, shardings=lambda boxed: ...)       # on a mesh

The checks run before any tensor data is read: every checkpoint tensor must map to one
of our parameters (or be a known buffer, or the other head of a checkpoint of another
kind), every parameter must have a tensor, and every shape must match. Then each
parameter is read (only the columns it needs of a fused tensor), changed to our layout
and dtype on the host, and handed to `jax.make_array_from_callback`, which copies to each
device only its shard; the host copy is dropped before the next parameter, so the host
holds one parameter at a time besides what the devices hold.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, Sharding

from rlhf_jax.models.config import DTYPES, TransformerConfig
from rlhf_jax.models.heads import RewardModel, ValueModel
from rlhf_jax.models.hf.checkpoint import SafetensorsCheckpoint
from rlhf_jax.models.hf.families import (KINDS, CheckpointError, Family, family_of_model_type,
                                         head_name)
from rlhf_jax.models.hf.gguf_file import GGUFCheckpoint
from rlhf_jax.models.sharding import abstract_params, param_shardings
from rlhf_jax.models.transformer import Transformer

__all__ = ["load", "mesh_shardings", "model_for", "open_checkpoint", "place"]

Checkpoint = SafetensorsCheckpoint | GGUFCheckpoint
ParamPath = tuple[str, ...]


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
  """A checkpoint directory or a `.gguf` file, headers read and checked."""
  path = Path(path)
  if path.is_dir():
    return SafetensorsCheckpoint(path)
  if path.suffix.lower() == ".gguf" or (path.is_file() and _starts_with_gguf_magic(path)):
    return GGUFCheckpoint(path)  # parsed once while unchanged (`read_gguf`)
  if not path.exists():
    raise CheckpointError(f"{path}: no such checkpoint directory or GGUF file.")
  raise CheckpointError(f"{path}: expected a checkpoint directory (config.json + safetensors) "
                        "or a .gguf file.")


def _starts_with_gguf_magic(path: Path) -> bool:
  with path.open("rb") as f:
    return f.read(4) == b"GGUF"


def _dtype_name(config: dict[str, Any]) -> str | None:
  return config.get("dtype") or config.get("torch_dtype")


def _checkpoint_kind(checkpoint: Checkpoint) -> tuple[str, int]:
  """("causal_lm" or "classifier", number of labels) from the tensors present."""
  if "score.weight" in checkpoint.names():
    return "classifier", checkpoint.shape("score.weight")[0]
  return "causal_lm", 0


def model_for(path: str | os.PathLike[str] | Checkpoint, kind: str = "policy", *,
              dtype: str | None = None, param_dtype: str | None = None, num_heads: int | None = None,
              **overrides: Any) -> nn.Module:
  """The model (no weights) `load` builds for this checkpoint: a `Transformer` (policy),
  `RewardModel` or `ValueModel` with the checkpoint's `TransformerConfig`.

  `param_dtype` defaults to the checkpoint's dtype (float16 -> float32, our dtypes being
  float32 and bfloat16), `dtype` (compute) to `param_dtype`; `overrides` are other
  `TransformerConfig` fields (`max_len`, `remat`, `scan_layers`).
  """
  checkpoint = path if isinstance(path, (SafetensorsCheckpoint, GGUFCheckpoint)) else open_checkpoint(path)
  if kind not in KINDS:
    raise ValueError(f"hf.load: kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}.")
  where = f"{checkpoint.location} config"
  family = family_of_model_type(checkpoint.config.get("model_type"), where)
  fields = family.config(checkpoint.config, where)
  if param_dtype is None:
    stored = _dtype_name(checkpoint.config) or "float32"
    param_dtype = "bfloat16" if stored == "bfloat16" else "float32"
  fields.update(param_dtype=param_dtype, dtype=dtype or param_dtype)
  for name in ("param_dtype", "dtype"):
    if fields[name] not in DTYPES:
      raise ValueError(f"hf.load: {name} must be one of {', '.join(map(repr, DTYPES))}; got {fields[name]!r}.")
  if "max_len" in overrides and fields.get("position_embedding") == "learned" and (
      overrides["max_len"] != fields["max_len"]):
    raise ValueError(f"hf.load: max_len {overrides['max_len']} cannot change a learned position "
                     f"table of {fields['max_len']} rows.")
  fields.update(overrides)
  try:
    config = TransformerConfig(**fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{where}: {e}") from e
  if kind == "policy":
    return Transformer(config)
  stored_kind, labels = _checkpoint_kind(checkpoint)
  if kind == "value":
    if stored_kind == "classifier" and labels != 1:
      raise CheckpointError(f"{checkpoint.location}: a value model needs a one-label score head; "
                            f"'score.weight' has {labels} rows.")
    return ValueModel(config)
  if stored_kind == "classifier":
    if num_heads is not None and num_heads != labels:
      raise CheckpointError(f"{checkpoint.location}: num_heads={num_heads}, but 'score.weight' has "
                            f"{labels} rows (num_labels).")
    num_heads = labels
  return RewardModel(config, num_heads=num_heads or 1)


def mesh_shardings(model: nn.Module, mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None) -> Any:
  """NamedShardings of `model`'s parameters on `mesh` from their logical axis names
  (default rules: `models.logical_axis_rules(mesh.axis_names)`); a dimension its mesh
  axes do not divide is replicated."""
  return param_shardings(_abstract_params(model), mesh, rules)


def place(host_value: Callable[[], np.ndarray], shape: tuple[int, ...], dtype: Any,
          sharding: Sharding) -> jax.Array:
  """One parameter on its devices: `host_value()` is made once on the host, and each
  device gets only its shard of it (`jax.make_array_from_callback`)."""
  value = np.asarray(host_value())
  if value.shape != tuple(shape):
    raise AssertionError(f"place: made shape {value.shape}, expected {shape}")
  value = value.astype(dtype, copy=False)
  return jax.make_array_from_callback(tuple(shape), sharding, lambda index: value[index])


def _abstract_params(model: nn.Module) -> Any:
  """`models.abstract_params(model)`, traced with one block and the blocks' entry copied
  n_layers times (the blocks are identical): tracing a deep model's init costs seconds."""
  config = model.config
  if config.scan_layers or config.n_layers == 1:
    return abstract_params(model)

  def expand(tree):
    out = {}
    for key, value in tree.items():
      if key == "layer_0":
        out.update({f"layer_{i}": value for i in range(config.n_layers)})
      else:
        out[key] = expand(value) if isinstance(value, Mapping) else value
    return out
  return expand(abstract_params(model.clone(config=config.replace(n_layers=1))))


def _flatten(tree: Mapping[str, Any], prefix: ParamPath = ()) -> dict[ParamPath, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def _unflatten(flat: Mapping[ParamPath, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _scanned(path: ParamPath, n_layers: int) -> list[ParamPath] | None:
  """The unscanned paths `layer_{i}/...` a stacked `layers/...` leaf is made of."""
  position = path.index("layers") if "layers" in path else -1
  if position < 0:
    return None
  return [path[:position] + (f"layer_{i}",) + path[position + 1:] for i in range(n_layers)]


def _resolve_names(checkpoint: Checkpoint, family: Family):
  """Full tensor names (with or without the base prefix, as the checkpoint spells them)."""
  names = set(checkpoint.names())
  prefixed = any(name.startswith(family.base_prefix) for name in names)
  full = lambda source: (family.base_prefix if source.base and prefixed else "") + source.name
  return names, prefixed, full


def load(path: str | os.PathLike[str], kind: str = "policy", *, dtype: str | None = None,
         param_dtype: str | None = None, num_heads: int | None = None, key: jax.Array | None = None,
         shardings: Any = None, mesh: Mesh | None = None, rules: Sequence[tuple[str, Any]] | None = None,
         threads: int = 2, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
  """Loads a checkpoint directory or `.gguf` file: `(model, params)`.

  `model.apply({"params": params}, tokens, attention_mask)` gives logits [B, T, V]
  (policy), rewards [B, K] (`kind="reward"`) or values [B, T] (`kind="value"`).

  Args:
    path: a directory with config.json and safetensors (sharded with
      model.safetensors.index.json or not), or a GGUF file.
    kind: "policy" (`*ForCausalLM`), "reward" (`RewardModel`: the score head of a
      `*ForSequenceClassification` checkpoint, `num_labels` heads and a zero bias, as
      Hugging Face's head has none; both read the last real token) or "value"
      (`ValueModel`: a one-label score head applied at every token). From a causal LM
      checkpoint, a reward or value head is new: drawn from `key` like `model.init`'s
      (normal, std 1/sqrt(D), zero bias), and `lm_head` is left out.
    dtype, param_dtype: compute and storage dtypes (default: the checkpoint's, see
      `model_for`).
    num_heads: reward heads of a new head (a classifier checkpoint fixes it).
    key: PRNG key of a new reward or value head (required then, unused otherwise).
    shardings: where each parameter goes: a tree of `jax.sharding.Sharding` with the
      structure of `params`, or a function of the boxed abstract parameters
      (`models.abstract_params(model)`) returning one (e.g. the trainer's rules).
    mesh, rules: instead of `shardings`, shard by the models' logical axis names on
      `mesh` (`mesh_shardings`). With neither, everything goes to the default device.
    threads: tensors read and placed at once (each holds one host copy meanwhile).
    overrides: other `TransformerConfig` fields (`max_len`, `remat`, `scan_layers`).

  Raises:
    CheckpointError naming the file, tensor or config field: unsupported model_type or
    architecture option, a truncated or unreadable file, a checkpoint tensor no
    parameter maps to, a parameter without its tensor, a shape that differs.
  """
  checkpoint = open_checkpoint(path)
  model = model_for(checkpoint, kind, dtype=dtype, param_dtype=param_dtype, num_heads=num_heads,
                    **overrides)
  config = model.config
  family = family_of_model_type(checkpoint.config.get("model_type"), checkpoint.location)
  labels = getattr(model, "num_heads", 1)
  stored_kind, _ = _checkpoint_kind(checkpoint)
  sources = family.sources(config.replace(scan_layers=False), kind, labels)
  new_head = kind != "policy" and stored_kind != "classifier"
  if new_head:
    del sources[(head_name(kind), "kernel")]

  names, prefixed, full = _resolve_names(checkpoint, family)
  wanted = {full(source) for source in sources.values()}
  # Tensors a checkpoint may hold that this model deliberately leaves out: the output
  # layer of a tied model (transformers ties it too) or of a causal LM loaded as a
  # reward/value backbone, and the score head of a classifier loaded as a policy.
  dropped = {"lm_head.weight"} if (config.tie_embeddings or kind != "policy") else set()
  if kind == "policy":
    dropped.add("score.weight")
  strip = lambda name: name[len(family.base_prefix):] if prefixed and name.startswith(family.base_prefix) else name
  unmapped = sorted(name for name in names - wanted - dropped if not family.is_ignored(strip(name)))
  if unmapped:
    raise CheckpointError(
        f"{checkpoint.location}: {len(unmapped)} tensor(s) map to no parameter of a "
        f"{family.model_type} {kind} model with this config, e.g. {unmapped[:5]} "
        f"(in {checkpoint.where(unmapped[0])}).")
  missing = sorted(wanted - names)
  if missing:
    raise CheckpointError(f"{checkpoint.location}: missing tensor(s) {missing[:5]} "
                          f"({len(missing)} in all) for a {family.model_type} {kind} model.")
  for source in sources.values():
    name = full(source)
    if checkpoint.shape(name) != source.shape:
      raise CheckpointError(f"{checkpoint.where(name)}: tensor {name!r} has shape "
                            f"{list(checkpoint.shape(name))}, expected {list(source.shape)} from config.json.")

  boxed = _abstract_params(model)
  abstract = nn.unbox(boxed)
  flat_abstract = _flatten(abstract)
  if callable(shardings):
    shardings = shardings(boxed)
  elif shardings is None and mesh is not None:
    shardings = mesh_shardings(model, mesh, rules)
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    flat_shardings = {path: device for path in flat_abstract}
  else:
    flat_shardings = _flatten(shardings)
    if set(flat_shardings) != set(flat_abstract):
      raise ValueError(f"hf.load: `shardings` must have the structure of the params; differs at "
                       f"{sorted(set(flat_shardings) ^ set(flat_abstract))[:5]}.")

  is_head = lambda path: kind != "policy" and path[0] == head_name(kind)
  for path in flat_abstract:
    if not is_head(path) and not all(p in sources for p in (_scanned(path, config.n_layers) or [path])):
      raise AssertionError(f"hf.load: no {family.model_type} tensor is mapped to parameter {path}.")

  def host_value(path: ParamPath, leaf) -> Callable[[], np.ndarray]:
    layer_paths = _scanned(path, config.n_layers)
    if layer_paths is None:
      return lambda: read(path)

    def stacked():
      out = np.empty(leaf.shape, leaf.dtype)
      for i, layer_path in enumerate(layer_paths):
        out[i] = read(layer_path)
      return out
    return stacked

  def read(path: ParamPath) -> np.ndarray:
    source = sources[path]
    return source.to_ours(checkpoint.read(full(source), source.columns))

  flat_params = {}
  tensors = []
  for path, leaf in flat_abstract.items():
    sharding = flat_shardings[path]
    if new_head and is_head(path):
      if key is None:
        raise ValueError(f"hf.load: {checkpoint.location} has no score head; a new {kind} head is "
                         "initialised, so pass key=jax.random.key(...).")
      value = (jax.random.normal(key, leaf.shape, jnp.float32) * config.d_model**-0.5
               if path[-1] == "kernel" else jnp.zeros(leaf.shape, jnp.float32))
      flat_params[path] = jax.device_put(value.astype(leaf.dtype), sharding)
    elif is_head(path) and path[-1] == "bias":
      flat_params[path] = jax.device_put(jnp.zeros(leaf.shape, leaf.dtype), sharding)
    else:
      tensors.append((path, leaf, sharding))
  # A few tensors in flight at once: reading one overlaps with changing another's layout
  # (the transposing copies are most of the time), at the cost of as many host copies.
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
    placed = pool.map(lambda t: place(host_value(t[0], t[1]), t[1].shape, t[1].dtype, t[2]), tensors)
    for (path, _, _), value in zip(tensors, placed):
      flat_params[path] = value
  return model, _unflatten(flat_params)
