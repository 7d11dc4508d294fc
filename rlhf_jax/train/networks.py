"""The Flax model an objective trains: a language model (policy) or a reward model.

`build_model(config, vocab_size)` reads `config.model` (preset and options) and
`config.objective` (through the objective's `model` kind). A reward model is
`rlhf_jax.models.RewardModel` with `config.model.reward_heads` heads, and with
`config.model.ensemble_models > 1` that many independent models, vmapped over a leading
parameter axis named "ensemble" (replicated by the sharding rules), so the K models of
an ensemble train in one step (Coste et al. 2023, arXiv 2310.02743, train K reward
models with different seeds; here each member has its own initialisation).

`apply_reward(model, params, tokens, mask)` returns [B, K] rewards for either form.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax import models

__all__ = ["ENSEMBLE_AXIS", "apply_policy", "apply_reward", "build_model", "model_config"]

# Logical name of the ensemble-member axis of vmapped reward models (never sharded).
ENSEMBLE_AXIS = "ensemble"


def model_config(config: Any, vocab_size: int, **preset_overrides: Any) -> models.TransformerConfig:
  """The TransformerConfig of `config.model` with the data's vocabulary size (and any
  `TransformerConfig` fields in `preset_overrides`, e.g. `n_layers` for planning)."""
  overrides: dict[str, Any] = {"param_dtype": config.model.param_dtype, **preset_overrides}
  vocab = int(config.model.vocab_size) or int(vocab_size)
  if vocab < vocab_size:
    raise ValueError(
        f"model.vocab_size {vocab} is smaller than the data's vocabulary ({vocab_size} ids).")
  overrides["vocab_size"] = vocab
  if config.model.get("dtype") is not None:
    overrides["dtype"] = config.model.dtype
  if config.model.get("remat") is not None:
    overrides["remat"] = bool(config.model.remat)
  return models.get_preset(config.model.preset, **overrides)


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


def build_model(config: Any, vocab_size: int, kind: str, **preset_overrides: Any) -> nn.Module:
  """The module for `kind` "policy" (a `Transformer`) or "reward" (reward model/ensemble)."""
  cfg = model_config(config, vocab_size, **preset_overrides)
  if kind == "policy":
    return models.Transformer(cfg)
  if kind == "reward":
    heads = int(config.model.reward_heads)
    members = int(config.model.ensemble_models)
    if heads < 1 or members < 1:
      raise ValueError(
          f"model.reward_heads and model.ensemble_models must be >= 1, got {heads} and {members}.")
    if members == 1:
      return models.RewardModel(cfg, num_heads=heads)
    return _RewardEnsemble(cfg, num_models=members, num_heads=heads)
  raise ValueError(f"unknown model kind {kind!r}; expected 'policy' or 'reward'.")


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
