"""A run's checkpoint written out as a Hugging Face checkpoint (behind `scripts/export.py`).

    summary = export.export_run("runs/dpo", "out/dpo-hf")                 # policy
    export.export_run("runs/rm", "out/rm-hf", drop_head_bias=True)        # reward model
    export.export_run("runs/ppo", "out/critic", part="value")             # PPO's critic
    export.export_run("runs/lora_dpo", "out/adapter", lora_format="peft") # adapters alone

What is written (`rlhf_jax.hf.save`): config.json, model.safetensors (or shards) and the
run's tokenizer files (the pretrained checkpoint's, or the sentencepiece model the run
trained, as tokenizer.model), so that `transformers` (and `hf.load`) read it back with
the same logits. A policy becomes `*ForCausalLM`; a reward model or critic
`*ForSequenceClassification`. A LoRA run exports its adapters merged into the base
weights (W + (alpha / r) A B, `lora_format="merged"`), or the adapters alone in PEFT's
layout (`lora_format="peft"`: adapter_config.json + adapter_model.safetensors, the base
being the run's `model.init_from`).

A run on the toy data has no tokenizer: its export has none either, and a reward model
or critic then needs `pad_token_id` (transformers' classifiers find the last token
through it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import flax.linen as nn

from rlhf_jax import data as data_lib
from rlhf_jax import hf, models
from rlhf_jax.models import lora
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import networks, pretrained
from rlhf_jax.train import objectives as objectives_lib
from rlhf_jax.train import sampling
from rlhf_jax.train import score as score_lib

__all__ = ["LORA_FORMATS", "PARTS", "ExportError", "export_run", "load_run"]

_log = logging.getLogger(__name__)

PARTS = ("auto", "policy", "reward", "value")
LORA_FORMATS = ("merged", "peft")


class ExportError(ValueError):
  """A run that cannot be exported as asked (the message says why and what to do)."""


def _tokenizer(workdir: Path, config: dict[str, Any]) -> Any:
  """The run's tokenizer (a pretrained checkpoint's own), or None for a run on the toy data."""
  if not config["data"].get("train"):
    init_from = config["model"].get("init_from", "")
    return pretrained.tokenizer(init_from) if pretrained.is_pretrained(init_from) else None
  if "rollout" in config:
    return sampling._online_tokenizer(workdir, config)  # pylint: disable=protected-access
  return score_lib.run_tokenizer(workdir, score_lib.tokenizer_source(config))


def _vocab_size(config: dict[str, Any], tokenizer: Any) -> int:
  return tokenizer.vocab_size if tokenizer is not None else int(config["data"]["toy"]["vocab_size"])


def _value_config(config: dict[str, Any], vocab_size: int) -> models.TransformerConfig | None:
  """The critic's shape of a PPO run: the reward model's with value_init "reward_model"."""
  if config["model"].get("value_init") != "reward_model":
    return None
  reward_dir = Path(str(config["reward"]["checkpoints"]).split(",")[0].strip())
  reward_config = score_lib.read_run_config(reward_dir, ExportError)
  return networks.model_config(config_lib.model_settings(reward_config), vocab_size)


def load_run(workdir: str | os.PathLike[str], part: str = "auto") -> tuple[nn.Module, Any, Any, int]:
  """(model, params, tokenizer or None, checkpoint step) of a run's newest checkpoint:
  `part` "policy" (a language model, also of an online run), "reward" (a reward-model
  run) or "value" (the critic of a PPO run); "auto" is the run's own model (the policy
  of a run with a critic). A LoRA run's base comes from its `model.init_from`."""
  workdir = Path(workdir)
  if part not in PARTS:
    raise ExportError(f"part must be one of {', '.join(PARTS)}; got {part!r}.")
  config = score_lib.read_run_config(workdir, ExportError)
  objective = objectives_lib.get(config["objective"])
  kind = objective.model
  if part == "auto":
    part = "reward" if kind == "reward" else "policy"
  if (part == "reward") != (kind == "reward") or (part == "value" and not objective.value_model):
    has = "a reward model" if kind == "reward" else "a policy and a critic" if objective.value_model else "a policy"
    raise ExportError(f"{workdir}: the run trained {config['objective']!r} ({has}); it has no {part} model to export.")
  if part == "reward" and int(config["model"].get("ensemble_models", 1)) > 1:
    raise ExportError(f"{workdir}: an ensemble of {config['model']['ensemble_models']} reward models has no Hugging Face "
                      "layout; export a run with model.ensemble_models=1 (heads are fine: num_labels).")
  tokenizer = _tokenizer(workdir, config)
  vocab = _vocab_size(config, tokenizer)
  step, step_dir = score_lib.latest_checkpoint(workdir)
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  if part == "value":
    value_config = _value_config(config, vocab)
    full = networks.build_model(config_lib.model_settings(config), vocab, "policy_value", value_config=value_config)
    model = models.ValueModel(full.value_config)
  else:
    model = networks.build_model(config_lib.model_settings(config), vocab, "reward" if part == "reward" else "policy")
  abstract = score_lib.abstract_params(model, mesh)
  if objective.value_model:
    name = "value" if part == "value" else "policy"
    params = score_lib.restore_params(step_dir, {name: abstract})[name]
  else:
    params = score_lib.restore_params(step_dir, abstract)
  return model, params, tokenizer, step


def export_run(workdir: str | os.PathLike[str], output: str | os.PathLike[str], *, part: str = "auto",
               lora_format: str = "merged", dtype: str | None = None, pad_token_id: int | None = None,
               drop_head_bias: bool = False) -> dict[str, Any]:
  """Writes a run's newest checkpoint to `output` as a Hugging Face checkpoint (see the
  module docstring); returns a summary (what was written, parameter counts).

  Args:
    workdir: the run directory.
    output: the checkpoint directory to write (created).
    part: "auto", "policy", "reward" or "value" (`load_run`).
    lora_format: for a LoRA run, "merged" (a full checkpoint) or "peft" (the adapters).
    dtype: "float32" or "bfloat16" for the tensors (default: the parameters' dtype).
    pad_token_id: the pad id written to config.json (default: the tokenizer's; a toy
      run's reward model or critic needs one).
    drop_head_bias: write a reward / value head whose bias is not zero without it
      (Hugging Face's score head has none; a Bradley-Terry reward is unchanged by a shift).
  """
  if lora_format not in LORA_FORMATS:
    raise ExportError(f"lora_format must be one of {', '.join(LORA_FORMATS)}; got {lora_format!r}.")
  workdir, output = Path(workdir), Path(output)
  model, params, tokenizer, step = load_run(workdir, part)
  config = model.config
  adapters = lora.enabled(config)
  counts = lora.param_counts(params)
  if adapters and lora_format == "peft":
    run_config = score_lib.read_run_config(workdir, ExportError)
    base = str(pretrained.checkpoint_path(run_config["model"]["init_from"]))
    hf.save_adapters(output, model, params, base_model_name_or_path=base, dtype=dtype or config.param_dtype)
    if tokenizer is not None and callable(getattr(tokenizer, "save", None)):
      tokenizer.save(output)
    written = "adapters (PEFT layout)"
  else:
    if adapters:
      model, params = lora.base_model(model), lora.merge(params, config)
    save_tokenizer = tokenizer if callable(getattr(tokenizer, "save", None)) else None
    if tokenizer is not None and save_tokenizer is None:
      save_tokenizer = _SentencePieceFiles(tokenizer)
    if tokenizer is None and pad_token_id is None and not isinstance(model, models.Transformer):
      pad_token_id = data_lib.TOY_PAD
    hf.save(output, model, params, tokenizer=save_tokenizer, dtype=dtype, pad_token_id=pad_token_id,
            drop_head_bias=drop_head_bias)
    written = "merged weights" if adapters else "weights"
  return {"workdir": os.fspath(workdir), "output": os.fspath(output), "checkpoint_step": step,
          "kind": type(model).__name__, "written": written, "parameters": counts["total"],
          "lora_parameters": counts["trainable"] if adapters else 0,
          "tokenizer": getattr(tokenizer, "name", None)}


class _SentencePieceFiles:
  """A run's sentencepiece tokenizer written as transformers' LlamaTokenizer reads it:
  tokenizer.model and tokenizer_config.json (bos, eos, pad, unk)."""

  def __init__(self, tokenizer: data_lib.Tokenizer):
    self.tokenizer = tokenizer
    for name in ("bos_id", "eos_id", "pad_id", "unk_id"):
      setattr(self, name, getattr(tokenizer, name))

  def save(self, directory: Path) -> None:
    directory = Path(directory)
    (directory / "tokenizer.model").write_bytes(self.tokenizer.model_proto)
    piece = self.tokenizer.id_to_piece
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": piece(self.bos_id), "eos_token": piece(self.eos_id),
              "pad_token": piece(self.pad_id), "unk_token": piece(self.unk_id), "add_bos_token": False,
              "add_eos_token": False, "legacy": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
