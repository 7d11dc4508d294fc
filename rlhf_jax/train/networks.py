"""The Flax model an objective trains: a language model (policy) or a reward model.

`build_model(settings, vocab_size, kind)` builds the module from `ModelSettings` (the
values of a config's `model` section) and the objective's `model` kind. A reward model
is `rlhf_jax.models.RewardModel` with `reward_heads` heads, and with
`ensemble_models > 1` that many independent models, vmapped over a leading
parameter axis named "ensemble" (replicated by the sharding rules), so the K models of
an ensemble train in one step (Coste et al. 2023, arXiv 2310.02743, train K reward
models with different seeds; here each member has its own initialisation).

`apply_reward(model, params, tokens, mask)` returns [B, K] rewards for either form.

Online objectives with a critic (`value_model`, e.g. PPO) train a `PolicyWithValue`: the
policy and a separate value network (`models.ValueModel`) side by side, parameters
{"policy": ..., "value": ...}; `policy_part` gives the policy alone (for sampling).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax import models
from rlhf_jax.train import pretrained

__all__ = [
    "ENSEMBLE_AXIS",
    "ModelSettings",
    "PolicyWithValue",
    "apply_policy",
    "apply_reward",
    "build_model",
    "model_config",
    "policy_part",
]

# Logical name of the ensemble-member axis of vmapped reward models (never sharded).
ENSEMBLE_AXIS = "ensemble"


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """The values of a config's `model` section that shape the network (defaults and
  comments live in `rlhf_jax/train/config.py`)."""

  preset: str
  vocab_size: int  # 0: the data's
  param_dtype: str
  dtype: str | None  # None: the preset's
  remat: bool | None  # None: the preset's
  # Reward models only (an online run's config has no such fields): heads on one
  # backbone and independent models trained together.
  reward_heads: int = 1
  ensemble_models: int = 1
  # A pretrained checkpoint ("hf:PATH") gives the architecture; other values (a run
  # directory, "") do not change the network.
  init_from: str = ""
  # LoRA adapters (`models.lora`; config `model.lora.*`): rank 0 is off.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  lora_targets: str = "query,value"


def model_config(settings: ModelSettings, vocab_size: int, **preset_overrides: Any) -> models.TransformerConfig:
  """The TransformerConfig of `settings` with the data's vocabulary size (and any
  `TransformerConfig` fields in `preset_overrides`, e.g. `n_layers` for planning)."""
  overrides: dict[str, Any] = {"param_dtype": settings.param_dtype, **preset_overrides}
  overrides.update(lora_rank=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                   lora_targets=settings.lora_targets)
  if settings.dtype is not None:
    overrides["dtype"] = settings.dtype
  if settings.remat is not None:
    overrides["remat"] = bool(settings.remat)
  if pretrained.is_pretrained(settings.init_from):
    # The checkpoint's architecture (and vocabulary: the data uses its tokenizer).
    cfg = pretrained.model_config(settings.init_from, **overrides)
    if cfg.vocab_size < vocab_size:
      raise ValueError(f"model.init_from={settings.init_from}: the checkpoint's vocabulary ({cfg.vocab_size} "
                       f"ids) is smaller than the data's ({vocab_size} ids); use the checkpoint's tokenizer "
                       "(data.tokenizer='').")
    return cfg
  vocab = int(settings.vocab_size) or int(vocab_size)
  if vocab < vocab_size:
    raise ValueError(
        f"model.vocab_size {vocab} is smaller than the data's vocabulary ({vocab_size} ids).")
  overrides["vocab_size"] = vocab
  if settings.preset not in models.PRESETS:
    raise ValueError(f"model.preset {settings.preset!r} is not a model shape ({', '.join(models.PRESETS)}); "
                     "a pretrained preset needs model.init_from=hf:... (its architecture comes from there).")
  return models.get_preset(settings.preset, **overrides)


class _RewardEnsemble(nn.Module):
  """K independent reward models with stacked parameters: rewards [B, K * heads]."""

  config: models.TransformerConfig
  num_models: int
  num_heads: int = 1

  @nn.compact
  def __call__(self, tokens: jax.Array, attention_mask: jax.Array, segment_ids=None, positions=None,
               reward_slots=None, document_slots=None) -> jax.Array:
    members = nn.vmap(
        models.RewardModel,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=None,
        out_axes=1,
        axis_size=self.num_models,
        metadata_params={nn.PARTITION_NAME: ENSEMBLE_AXIS},
    )(self.config, num_heads=self.num_heads, name="members")
    rewards = members(tokens, attention_mask, segment_ids, positions, reward_slots, document_slots)
    if reward_slots is not None:  # [B, models, N, heads] -> [B, N, models * heads]
      rewards = jnp.moveaxis(rewards, 1, 2)
      return rewards.reshape(*rewards.shape[:2], -1)
    return rewards.reshape(rewards.shape[0], -1)  # [B, models, heads] -> [B, models * heads]


class PolicyWithValue(nn.Module):
  """A policy and a separate critic of the same tokens (PPO): parameters {"policy":
  `Transformer` parameters, "value": `ValueModel` parameters}.

  The critic is its own network (not a head on the policy), as in Ouyang et al. 2022
  and Huang et al. 2024 (arXiv 2403.17031), so that it can start from the reward model
  (`value_config` is then the reward model's shape) and its loss does not disturb the
  policy's features.

  `apply({"params": p}, tokens, mask, logit_slots=None) -> (logits, values [B, T])`.
  """

  policy_config: models.TransformerConfig
  value_config: models.TransformerConfig

  def setup(self):
    self.policy = models.Transformer(self.policy_config)
    self.value = models.ValueModel(self.value_config)

  def __call__(self, tokens: jax.Array, attention_mask: jax.Array, logit_slots: jax.Array | None = None):
    return self.policy(tokens, attention_mask, logit_slots=logit_slots), self.value(tokens, attention_mask)

  @property
  def config(self) -> models.TransformerConfig:
    """The policy's config (what `init_cache` and length checks read)."""
    return self.policy_config


def policy_part(model: nn.Module, params: Any) -> tuple[models.Transformer, Any]:
  """(the policy `Transformer`, its parameters) of a policy or of a `PolicyWithValue`."""
  if isinstance(model, PolicyWithValue):
    return models.Transformer(model.policy_config), params["policy"]
  if not isinstance(model, models.Transformer):
    raise ValueError(f"policy_part: expected a Transformer or a PolicyWithValue, got {type(model).__name__}.")
  return model, params


def build_model(settings: ModelSettings, vocab_size: int, kind: str, *,
                value_config: models.TransformerConfig | None = None, **preset_overrides: Any) -> nn.Module:
  """The module for `kind` "policy" (a `Transformer`), "policy_value" (a
  `PolicyWithValue`, the critic shaped by `value_config`, default the policy's shape)
  or "reward" (reward model/ensemble)."""
  cfg = model_config(settings, vocab_size, **preset_overrides)
  if kind == "policy":
    return models.Transformer(cfg)
  if kind == "policy_value":
    return PolicyWithValue(cfg, cfg if value_config is None else value_config)
  if kind == "reward":
    heads = int(settings.reward_heads)
    members = int(settings.ensemble_models)
    if heads < 1 or members < 1:
      raise ValueError(
          f"model.reward_heads and model.ensemble_models must be >= 1, got {heads} and {members}.")
    if members == 1:
      return models.RewardModel(cfg, num_heads=heads)
    return _RewardEnsemble(cfg, num_models=members, num_heads=heads)
  raise ValueError(f"unknown model kind {kind!r}; expected 'policy', 'policy_value' or 'reward'.")


def apply_policy(model: nn.Module, params: Any, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Next-token logits [B, T, V] (float32)."""
  return model.apply({"params": params}, tokens, attention_mask)


def apply_reward(model: nn.Module, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                 segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
                 reward_slots: jax.Array | None = None,
                 document_slots: jax.Array | None = None) -> jax.Array:
  """Rewards [B, K] float32 (K = heads x ensemble members), or [B, N, K] read at
  `reward_slots` of packed rows (`segment_ids`, `positions`, `document_slots`: see
  `models.Transformer`)."""
  if reward_slots is None:
    rewards = model.apply({"params": params}, tokens, attention_mask)
  else:
    rewards = model.apply({"params": params}, tokens, attention_mask, segment_ids, positions, reward_slots,
                          document_slots)
  return jnp.asarray(rewards, jnp.float32)
