"""Reward and value models: the transformer backbone with scalar heads.

The backbone is a `Transformer` named "backbone" whose output projection is never built,
so `params["backbone"]` has the layout of a policy's params without `lm_head`: a reward
model or critic starts from an SFT policy by copying those entries.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.transformer import Transformer, check_inputs

__all__ = ["RewardModel", "ValueModel", "last_token_index"]


def last_token_index(attention_mask: jax.Array) -> jax.Array:
  """int32 [B] index of the last real token of every row (right or left padding).

  A row with no real token gives index 0.
  """
  attention_mask = jnp.asarray(attention_mask, jnp.bool_)
  length = attention_mask.shape[1]
  positions = jnp.arange(length, dtype=jnp.int32)
  return jnp.max(jnp.where(attention_mask, positions, 0), axis=1)


class _Head(nn.Module):
  """Linear map D -> num_outputs, computed in float32 with float32 parameters.

  The output axis is left unsharded (logical name None): K rewards or one value are too
  few to split across devices.
  """

  d_model: int
  num_outputs: int

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(
            nn.initializers.normal(stddev=self.d_model**-0.5), ("embed", None)
        ),
        (self.d_model, self.num_outputs),
        jnp.float32,
    )
    bias = self.param(
        "bias",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
        (self.num_outputs,),
        jnp.float32,
    )
    return hidden.astype(jnp.float32) @ kernel + bias


class RewardModel(nn.Module):
  """Scalar reward(s) of a whole sequence, read at its last real token.

    reward[b, k] = h[b, last(b)] . w_k + c_k

  with `h` the backbone's final normalised hidden states and `last(b)` the index of the
  last true entry of `attention_mask[b]` (InstructGPT-style reward model: Ouyang et
  al. 2022, arXiv 2203.02155). `num_heads > 1` gives K independently initialised heads
  on one backbone, an ensemble for uncertainty estimates (Coste et al. 2023, arXiv
  2310.02743). Head parameters stay float32 whatever the config's `param_dtype`.

  `apply({"params": p}, tokens [B, T], attention_mask [B, T]) -> rewards [B, K]` float32.

  Packed rows (several continuations of one prompt, see `Transformer`): with
  `segment_ids`, `positions` and `reward_slots` int [B, N] the rewards are read at those
  slots instead of the last real token: `rewards [B, N, K]`. Padding-free rows of several
  sequences add `document_slots` (see `Transformer`).
  """

  config: TransformerConfig
  num_heads: int = 1

  @nn.compact
  def __call__(
      self,
      tokens: jax.Array,
      attention_mask: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      positions: jax.Array | None = None,
      reward_slots: jax.Array | None = None,
      document_slots: jax.Array | None = None,
      *,
      decode: bool = False,
  ) -> jax.Array:
    if isinstance(self.num_heads, bool) or not isinstance(self.num_heads, int) or self.num_heads < 1:
      raise ValueError(f"RewardModel.num_heads must be a positive int, got {self.num_heads!r}.")
    tokens, attention_mask = check_inputs(tokens, attention_mask, self.config, "RewardModel",
                                          check_length=positions is None and document_slots is None)
    # Read at one slot per row (the last real token) or at the given slots; either way
    # the backbone's last block runs its queries and feed-forward only there.
    slots = last_token_index(attention_mask)[:, None] if reward_slots is None else reward_slots
    hidden = Transformer(self.config, name="backbone")(
        tokens, attention_mask, segment_ids=segment_ids, document_slots=document_slots,
        positions=positions, logit_slots=slots, return_hidden=True, decode=decode)
    rewards = _Head(self.config.d_model, self.num_heads, name="reward_head")(hidden)  # [B, N, K]
    return rewards if reward_slots is not None else rewards[:, 0]


class ValueModel(nn.Module):
  """Per-token state values (a PPO critic): `values[b, t] = h[b, t] . w + c`.

  `apply({"params": p}, tokens [B, T], attention_mask [B, T]) -> values [B, T]` float32,
  zero on padding tokens.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(
      self, tokens: jax.Array, attention_mask: jax.Array | None = None, *, decode: bool = False
  ) -> jax.Array:
    tokens, attention_mask = check_inputs(tokens, attention_mask, self.config, "ValueModel")
    hidden = Transformer(self.config, name="backbone")(
        tokens, attention_mask, return_hidden=True, decode=decode
    )
    values = _Head(self.config.d_model, 1, name="value_head")(hidden)[..., 0]
    return jnp.where(attention_mask, values, 0.0)
