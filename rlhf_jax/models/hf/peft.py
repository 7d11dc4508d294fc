"""LoRA adapters written in the PEFT layout (Hugging Face `peft`), for a base checkpoint
that `hf.save` (or the original download) provides.

    save_adapters("out/adapter", model, params, base_model_name_or_path="HuggingFaceTB/...")

Files: `adapter_config.json` (peft_type "LORA", r, lora_alpha, lora_dropout,
target_modules as Hugging Face module names, task_type) and `adapter_model.safetensors`
whose tensors are named as `PeftModel.save_pretrained` names them (PEFT's
docs/source/developer_guides/checkpoint.md): `base_model.model.<module>.lora_A.weight`
[r, in] and `base_model.model.<module>.lora_B.weight` [out, r], where `<module>` is the
Hugging Face name of the adapted Linear (e.g. `model.layers.0.self_attn.q_proj`). PEFT
computes `x A^T B^T * lora_alpha / r`, our `x A B * alpha / r`: A and B are our adapters
flattened over their head axes and transposed. A reward or value model's score head
trains in full, so it is written as PEFT's `modules_to_save` ("score"):
`base_model.model.score.weight`.

The Llama family (Llama, Mistral, Qwen2) only: GPT-2 fuses q, k and v in one Conv1D, for
which our three adapters have no PEFT equivalent (export merged weights instead).
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
from safetensors.numpy import save_file

from rlhf_jax.models import lora
from rlhf_jax.models.heads import RewardModel, ValueModel
from rlhf_jax.models.hf.families import CheckpointError, family_for_config, head_name
from rlhf_jax.models.transformer import Transformer

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "PEFT_PREFIX", "peft_tensor_names", "save_adapters"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_NUMPY_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _kind(model: nn.Module) -> str:
  if isinstance(model, RewardModel):
    return "reward"
  if isinstance(model, ValueModel):
    return "value"
  if isinstance(model, Transformer):
    return "policy"
  raise TypeError(f"save_adapters: expected a Transformer, RewardModel or ValueModel, got {type(model).__name__}.")


def _modules(model: nn.Module, model_type: str | None = None):
  """{our kernel path (unscanned): Hugging Face module name} of every adapted projection,
  and the family."""
  kind = _kind(model)
  config = model.config
  if not lora.enabled(config):
    raise ValueError("save_adapters: the model has no LoRA adapters (lora_rank is 0).")
  family = family_for_config(lora.base_config(config), model_type)
  if family.model_type == "gpt2":
    raise CheckpointError("save_adapters: GPT-2 fuses q, k and v in one Conv1D (c_attn); our separate "
                          "adapters have no PEFT layout there. Export merged weights instead.")
  sources = family.sources(lora.base_config(config).replace(scan_layers=False), kind, getattr(model, "num_heads", 1))
  modules = {}
  for path, source in sources.items():
    if path[-1] in config.lora_targets and source.name.endswith(".weight"):
      name = (family.base_prefix if source.base else "") + source.name[:-len(".weight")]
      modules[path] = name
  return modules, family, kind


def peft_tensor_names(model: nn.Module, model_type: str | None = None) -> list[str]:
  """The tensor names `save_adapters` writes for `model` (sorted)."""
  modules, _, kind = _modules(model, model_type)
  names = [f"{PEFT_PREFIX}{module}.lora_{part}.weight" for module in modules.values() for part in "AB"]
  if kind != "policy":
    names.append(f"{PEFT_PREFIX}score.weight")
  return sorted(names)


def _leaf(params: Any, path: tuple[str, ...], config) -> np.ndarray:
  """A parameter on the host; `layer_i` of a scanned model is sliced from `layers`."""
  node, layer = params, None
  for key in path:
    if config.scan_layers and key.startswith("layer_") and key not in node:
      layer, key = int(key[len("layer_"):]), "layers"
    node = node[key]
  value = np.asarray(jax.device_get(node), np.float32)
  return value if layer is None else value[layer]


def save_adapters(directory: str | os.PathLike[str], model: nn.Module, params: Any, *,
                  base_model_name_or_path: str | None = None, model_type: str | None = None,
                  dtype: str = "float32") -> Path:
  """Writes the LoRA adapters of `model` (a LoRA `Transformer`, `RewardModel` or
  `ValueModel`) with `params` in the PEFT layout (see the module docstring).

  Args:
    directory: created if missing.
    base_model_name_or_path: recorded in adapter_config.json (PEFT loads the base from it).
    model_type: the family (default: from the config, as `hf.save`).
    dtype: "float32" or "bfloat16" for the tensors.
  Returns the directory.
  """
  if dtype not in _NUMPY_DTYPES:
    raise ValueError(f"save_adapters: dtype must be 'float32' or 'bfloat16'; got {dtype!r}.")
  modules, _, kind = _modules(model, model_type)
  config = model.config
  tensors = {}
  for path, module in modules.items():
    lora_a = _leaf(params, path[:-1] + (f"{path[-1]}_lora_a",), config)
    lora_b = _leaf(params, path[:-1] + (f"{path[-1]}_lora_b",), config)
    rank = config.lora_rank
    tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = lora_a.reshape(-1, rank).T
    tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = lora_b.reshape(rank, -1).T
  if kind != "policy":
    tensors[f"{PEFT_PREFIX}score.weight"] = _leaf(params, (head_name(kind), "kernel"), config).T
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  save_file({k: np.ascontiguousarray(v.astype(_NUMPY_DTYPES[dtype])) for k, v in tensors.items()},
            os.fspath(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
  targets = sorted({module.rsplit(".", 1)[-1] for module in modules.values()})
  adapter_config = {
      "peft_type": "LORA",
      "task_type": "CAUSAL_LM" if kind == "policy" else "SEQ_CLS",
      "base_model_name_or_path": base_model_name_or_path,
      "r": config.lora_rank,
      "lora_alpha": config.lora_alpha,
      "lora_dropout": config.lora_dropout,
      "target_modules": targets,
      "bias": "none",
      "fan_in_fan_out": False,
      "modules_to_save": None if kind == "policy" else ["score"],
      "inference_mode": True,
      "use_rslora": False,
      "use_dora": False,
      "auto_mapping": None,
      "revision": None,
  }
  (directory / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
  return directory
