"""Summed completion log-probs of sequences and of (chosen, rejected) pairs.

Every objective on a policy reads its log-probs here, and the reference pass
(`train.reference`) too, so the policy and the reference are always measured the same
way. Every log-prob comes from `losses.sequence_logprobs`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.train import networks, padding_free, shared_prompt

__all__ = ["concat", "pair_logps", "sequence_logps"]

Batch = Mapping[str, jax.Array]


def sequence_logps(
    model: Any, params: Any, tokens: jax.Array, attention_mask: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Summed completion log-probs [B] and completion lengths [B] of right-padded sequences.

  The log-prob of token t comes from the logits at t - 1 (data token convention), so
  `sequence_logprobs(logits[:, :-1], tokens[:, 1:], loss_mask[:, 1:])`.
  """
  logits = networks.apply_policy(model, params, tokens, attention_mask)
  mask = jnp.asarray(loss_mask[:, 1:], jnp.bool_)
  token_logps = losses.sequence_logprobs(logits[:, :-1], tokens[:, 1:], mask)
  return jnp.sum(token_logps, axis=-1), jnp.sum(mask, axis=-1).astype(jnp.float32)


def concat(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.concatenate([a, b], axis=0)


def pair_logps(model: Any, params: Any, batch: Batch,
               layout: shared_prompt.SharedPromptLayout | None = None) -> dict[str, jax.Array]:
  """Policy log-probs and lengths of the chosen and rejected completions.

  One forward pass over the concatenated [2B, T] batch, or with a `layout` (from
  `config.data.share_prompt`) over [B, layout.length] rows that hold the prompt once
  (`shared_prompt.shared_pair_logps`; same values up to float rounding). A batch packed
  by `data.packing.pack_pairs` (`config.data.padding_free`: it carries `packed_tokens`)
  goes through its padding-free rows (`padding_free.packed_pair_logps`).
  """
  if "packed_tokens" in batch:
    return padding_free.packed_pair_logps(model, params, batch)
  if layout is not None:
    return shared_prompt.shared_pair_logps(model, params, batch, layout)
  logps, lengths = sequence_logps(
      model, params,
      concat(batch["chosen_tokens"], batch["rejected_tokens"]),
      concat(batch["chosen_attention_mask"], batch["rejected_attention_mask"]),
      concat(batch["chosen_loss_mask"], batch["rejected_loss_mask"]))
  size = batch["chosen_tokens"].shape[0]
  return {"chosen_logps": logps[:size], "rejected_logps": logps[size:],
          "chosen_lengths": lengths[:size], "rejected_lengths": lengths[size:]}
