"""Summed completion log-probs of sequences and of (chosen, rejected) pairs, and per-token
log-probs of rollout completions.

Every objective on a policy reads its log-probs here, and the reference passes
(`train.reference`, the rollouts of `rlhf_jax.rl`) too, so the policy and the reference
are always measured the same way. Every log-prob comes from `losses.sequence_logprobs`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.train import networks, padding_free, shared_prompt
from rlhf_jax.train.objectives.contract import RolloutLayout

__all__ = ["completion_forward", "completion_logps", "concat", "pair_logps", "sequence_logps", "token_entropy"]

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


def completion_forward(model: Any, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                       layout: RolloutLayout) -> tuple[jax.Array, jax.Array | None]:
  """Logits [R, N, V] at the slots that predict the completion tokens of rollout rows
  (`layout.logit_slots`), divided by the sampling temperature, and for a
  `networks.PolicyWithValue` the critic's values [R, N] of the states before each
  completion token (slots P - 1 ... P + N - 2), else None.

  Only N slots go through the output projection, not the whole row.
  """
  rows = tokens.shape[0]
  slots = jnp.broadcast_to(layout.logit_slots, (rows, layout.completion_length))
  values = None
  if isinstance(model, networks.PolicyWithValue):
    logits, all_values = model.apply({"params": params}, tokens, attention_mask, logit_slots=slots)
    start = layout.prompt_length - 1
    values = all_values[:, start:start + layout.completion_length]
  else:
    logits = model.apply({"params": params}, tokens, attention_mask, logit_slots=slots)
  logits = jnp.asarray(logits, jnp.float32)
  if layout.logit_scale != 1.0:
    logits = logits * layout.logit_scale
  return logits, values


def completion_logps(logits: jax.Array, tokens: jax.Array, completion_mask: jax.Array,
                     layout: RolloutLayout) -> jax.Array:
  """Per-token log-probs [R, N] of the completion tokens (`tokens[:, P:]`) under
  `logits` [R, N, V] from `completion_forward`; 0 after a row's end."""
  targets = tokens[:, layout.prompt_length:layout.prompt_length + layout.completion_length]
  return losses.sequence_logprobs(logits, targets, completion_mask)


def token_entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Entropy [R, N] of the next-token distributions softmax(logits), 0 where `mask` is false."""
  log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  return jnp.where(mask, entropy, 0.0)
