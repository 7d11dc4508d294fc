"""Writing our models as Hugging Face checkpoints that `transformers` loads.

    save("out/", model, params, tokenizer=tokenizer)

A policy becomes `*ForCausalLM`, a reward or value model `*ForSequenceClassification`
(`num_labels` = reward heads, or 1 for a value model, whose head transformers then
applies at the last non-pad token only). The family comes from the config (GPT-2 for
learned positions, Qwen2 for q/k/v biases alone, else Llama) or `model_type`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np

from rlhf_jax.models.heads import RewardModel, ValueModel
from rlhf_jax.models.hf.checkpoint import write_safetensors
from rlhf_jax.models.hf.families import CheckpointError, Source, family_for_config, head_name
from rlhf_jax.models.transformer import Transformer

__all__ = ["save"]

_NUMPY_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _kind(model: nn.Module) -> str:
  if isinstance(model, RewardModel):
    return "reward"
  if isinstance(model, ValueModel):
    return "value"
  if isinstance(model, Transformer):
    return "policy"
  raise TypeError(f"hf.save: expected a Transformer, RewardModel or ValueModel, got {type(model).__name__}.")


def _host(params: Any, path: tuple[str, ...], layer: int | None = None) -> np.ndarray:
  """One parameter on the host (of a stacked one, only `layer`, sliced on its devices)."""
  node = params
  for key in path:
    node = node[key]
  if isinstance(node, jax.Array) and not node.is_fully_addressable:
    raise ValueError(f"hf.save: parameter {'/'.join(path)} is not fully addressable from this process "
                     "(multi-host sharding); gather it first.")
  if layer is not None:
    node = node[layer]
  return np.asarray(jax.device_get(node))


def save(directory: str | os.PathLike[str], model: nn.Module, params: Any, *, tokenizer: Any = None,
         model_type: str | None = None, dtype: str | None = None, pad_token_id: int | None = None,
         drop_head_bias: bool = False, max_shard_bytes: int = 5 * 2**30) -> Path:
  """Writes `model` with `params` as a Hugging Face checkpoint in `directory`.

  Files: config.json, model.safetensors (or shards of at most `max_shard_bytes` with
  model.safetensors.index.json) and, with `tokenizer` (anything with a
  `save(directory)` method, e.g. `rlhf_jax.hf.load_tokenizer(...)`), its files.

  Args:
    directory: created if missing; existing checkpoint files in it are overwritten.
    model, params: a `Transformer`, `RewardModel` or `ValueModel` and its parameters
      (unboxed; sharded arrays are gathered one at a time). Scanned layers are unstacked.
    tokenizer: written alongside; its bos, eos and pad ids go into config.json.
    model_type: "llama", "mistral", "qwen2" or "gpt2" (default: from the config).
    dtype: "float32" or "bfloat16" for the tensors (default: the model's param_dtype).
    pad_token_id: the id transformers' sequence classifiers treat as padding (they read
      the last token that is not it); default the tokenizer's pad id. A reward or value
      model needs one, different from the eos id that ends every sequence our data layer
      makes (else transformers would read the token before that eos).
    drop_head_bias: Hugging Face's score head has no bias: a reward or value head whose
      bias is not zero is an error unless this is true (a Bradley-Terry reward model is
      unchanged by a constant shift).
    max_shard_bytes: largest safetensors file.

  Returns the directory.
  """
  kind = _kind(model)
  config = model.config
  if config.lora_rank:
    raise ValueError("hf.save: the model has LoRA adapters; write merged weights (models.lora.merge(params, "
                     "config) with models.lora.base_model(model)) or the adapters alone (hf.save_adapters).")
  family = family_for_config(config, model_type)
  dtype = dtype or config.param_dtype
  if dtype not in _NUMPY_DTYPES:
    raise ValueError(f"hf.save: dtype must be 'float32' or 'bfloat16'; got {dtype!r}.")
  numpy_dtype = _NUMPY_DTYPES[dtype]
  labels = getattr(model, "num_heads", 1)
  sources = family.sources(config.replace(scan_layers=False), kind, labels)
  hf_name = lambda source: (family.base_prefix if source.base else "") + source.name

  token_ids = {}
  if tokenizer is not None:
    for name in ("bos", "eos", "pad"):
      value = getattr(tokenizer, f"{name}_id", None)
      if value is not None:
        token_ids[f"{name}_token_id"] = int(value)
  if pad_token_id is not None:
    token_ids["pad_token_id"] = int(pad_token_id)
  if kind != "policy":
    pad = token_ids.get("pad_token_id")
    if pad is None:
      raise ValueError(f"hf.save: a {kind} model needs pad_token_id (or a tokenizer with a pad id): "
                       "transformers' sequence classifiers find the last token through it.")
    if pad == token_ids.get("eos_token_id"):
      raise ValueError(
          f"hf.save: pad_token_id {pad} is the eos id; transformers' sequence classifier would "
          "read the token before the final eos, where this model reads the eos itself. Pass "
          "pad_token_id=<an id that never ends a sequence>.")
    bias = _host(params, (head_name(kind), "bias"))
    if np.any(bias != 0) and not drop_head_bias:
      raise ValueError(f"hf.save: the {kind} head has a nonzero bias {bias.tolist()}; Hugging Face's "
                       "score head has none. Pass drop_head_bias=True to write it without.")

  def layer_value(path: tuple[str, ...]) -> np.ndarray:
    if config.scan_layers and any(p.startswith("layer_") for p in path):
      position = next(i for i, p in enumerate(path) if p.startswith("layer_"))
      index = int(path[position][len("layer_"):])
      stacked_path = path[:position] + ("layers",) + path[position + 1:]
      return _host(params, stacked_path, index)
    return _host(params, path)

  # Group our parameters by checkpoint tensor (GPT-2's c_attn holds three).
  tensors: dict[str, list[tuple[tuple[str, ...], Source]]] = {}
  for path, source in sources.items():
    tensors.setdefault(hf_name(source), []).append((path, source))

  def make(parts: list[tuple[tuple[str, ...], Source]]):
    def build() -> np.ndarray:
      if parts[0][1].columns is None:
        return parts[0][1].to_hf(layer_value(parts[0][0]).astype(np.float32))
      ordered = sorted(parts, key=lambda part: part[1].columns[0])
      return np.concatenate([s.to_hf(layer_value(p).astype(np.float32)) for p, s in ordered], axis=-1)
    return build

  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for stale in list(directory.glob("model*.safetensors")) + [directory / "model.safetensors.index.json"]:
    if stale.exists():
      stale.unlink()
  write_safetensors(
      directory, [(name, parts[0][1].shape, numpy_dtype, make(parts)) for name, parts in tensors.items()],
      max_shard_bytes)
  hf_config = family.hf_config(config)
  architecture = family.causal_lm if kind == "policy" else family.classifier
  hf_config.update(architectures=[architecture], torch_dtype=dtype, **token_ids)
  if kind != "policy":
    hf_config["num_labels"] = labels
    hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
    hf_config["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
  (directory / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
  if tokenizer is not None:
    if not callable(getattr(tokenizer, "save", None)):
      raise CheckpointError(f"hf.save: the tokenizer {tokenizer!r} has no save(directory) method; "
                            "load it with rlhf_jax.hf.load_tokenizer.")
    tokenizer.save(directory)
  return directory
