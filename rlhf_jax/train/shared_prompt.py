"""Prompt-prefix sharing for pairwise objectives: one row [prompt | chosen | rejected].

The chosen and rejected completions of a pair continue the same prompt. The two-row
layout ([prompt, chosen] and [prompt, rejected], each padded to T) runs the prompt
through the model twice and computes [2B, T, V] logits of which only the completion
positions are read. Packed, a pair is one row

    slot       0 .. p-1  |  p .. p+c-1  |  p+c .. p+c+r-1  |  padding
    segment    0         |  1           |  2               |  3 (masked out)
    position   0 .. p-1  |  p .. p+c-1  |  p .. p+r-1      |  0

(p: prompt segment with its bos, c and r: chosen and rejected completions with their
eos). Under the segment mask of `rlhf_jax.models.Transformer` a chosen token sees the
prompt and the chosen tokens before it, a rejected token the prompt and the rejected
tokens before it, and the rejected positions restart at p: every completion token gets
exactly the attention inputs and rotary positions it has in its own row, so the
log-probs are those of the two-row layout (up to float rounding), for a prompt computed
once. Logits are computed only at the N slots that predict a completion token (the
first rejected token is predicted from the last prompt slot p-1), [B, N, V] instead of
[2B, T, V]. A reward model reads its two rewards at the slots of the last chosen and
the last rejected token (`shared_pair_rewards`).

This is prefix sharing for preference tuning (Wang & Hegde 2024, "Accelerating Direct
Preference Optimization with Prefix Sharing", arXiv 2410.20305), which reports a higher
training throughput on DPO data sets from a block-sparse mask of this shape (see the paper;
our own measurements are in docs/benchmarks.md).

Static sizes: `SharedPromptLayout(length, num_targets)`; `layout_for` measures them on
the data (the longest packed pair and the most completion tokens of any pair), so every
pair fits by construction; the packing itself happens inside the jitted step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses
from rlhf_jax.data.packing import row_name, pair_extents
from rlhf_jax.train import networks

__all__ = [
    "SharedPromptLayout",
    "check_layout",
    "layout_for",
    "layout_of",
    "pack_pairs",
    "pair_extents",
    "resolve",
    "shared_pair_logps",
    "shared_pair_rewards",
]

# Segment id of the padding slots: neither the prompt (0) nor a completion (1, 2).
PAD_SEGMENT = 3


@dataclasses.dataclass(frozen=True)
class SharedPromptLayout:
  """Static sizes of the packed rows.

  Attributes:
    length: slots per packed row (>= p + c + r of every pair).
    num_targets: completion tokens per row whose log-probs are computed (>= c + r).
  """

  length: int
  num_targets: int

  def __post_init__(self):
    if self.length < 2 or self.num_targets < 1 or self.num_targets >= self.length:
      raise ValueError(
          f"SharedPromptLayout: need length >= 2 and 1 <= num_targets < length, got length="
          f"{self.length}, num_targets={self.num_targets}.")


def layout_for(datasets: Mapping[str, Mapping[str, np.ndarray]], *, multiple: int = 8) -> SharedPromptLayout:
  """The smallest layout (rounded up to `multiple`) that holds every pair of `datasets`
  ({name: pair arrays}, e.g. the training and evaluation sets)."""
  length = num_targets = 1
  for name, arrays in datasets.items():
    if arrays is None or len(arrays["chosen_tokens"]) == 0:
      continue
    prompt, chosen, rejected = pair_extents(arrays, name)
    length = max(length, int(np.max(prompt + chosen + rejected)))
    num_targets = max(num_targets, int(np.max(chosen + rejected)))
  round_up = lambda n: -(-n // multiple) * multiple
  return SharedPromptLayout(length=max(round_up(length), round_up(num_targets) + 1),
                            num_targets=round_up(num_targets))


def check_layout(layout: SharedPromptLayout, datasets: Mapping[str, Mapping[str, np.ndarray]]) -> None:
  """Raises ValueError when a pair of `datasets` does not fit `layout` (user-set sizes)."""
  for name, arrays in datasets.items():
    if arrays is None or len(arrays["chosen_tokens"]) == 0:
      continue
    prompt, chosen, rejected = pair_extents(arrays, name)
    for what, needed, limit, field in (
        ("packed length p + c + r", prompt + chosen + rejected, layout.length, "data.shared_length"),
        ("completion tokens c + r", chosen + rejected, layout.num_targets, "data.shared_targets")):
      if np.max(needed) > limit:
        row = int(np.argmax(needed))
        raise ValueError(
            f"prompt sharing: {name} {row_name(arrays, row)} needs {what} = {int(needed[row])} "
            f"(prompt {int(prompt[row])}, chosen {int(chosen[row])}, rejected {int(rejected[row])}) "
            f"but {field} = {limit}; raise it or set it to 0 (measured on the data).")


def layout_of(share_prompt: bool, length: int, num_targets: int) -> SharedPromptLayout | None:
  """The layout of resolved sizes (`data.shared_length`, `data.shared_targets`), or None
  when sharing is off."""
  if not share_prompt:
    return None
  if not length or not num_targets:
    raise ValueError("data.share_prompt is on but data.shared_length / data.shared_targets are "
                     "unresolved (0); the trainer measures them on the data before building the steps.")
  return SharedPromptLayout(int(length), int(num_targets))


def resolve(datasets: Mapping[str, Mapping[str, np.ndarray] | None], *, data_kind: str, objective: str,
            length: int, num_targets: int) -> SharedPromptLayout:
  """The layout of prompt sharing for `datasets`: `length` and `num_targets` (the
  config's `data.shared_length`, `data.shared_targets`) measured on the data when 0,
  else checked against it.

  Raises ValueError when `objective` does not train on pairs (`data_kind`) or when a pair
  does not fit user-set sizes.
  """
  if data_kind != "pairs":
    raise ValueError(
        f"data.share_prompt applies to objectives on pairs (dpo, simpo, orpo, reward_model); "
        f"objective {objective!r} trains on {data_kind}.")
  measured = layout_for(datasets)
  length = int(length) or measured.length
  num_targets = int(num_targets) or min(measured.num_targets, length - 1)
  layout = SharedPromptLayout(length, num_targets)
  check_layout(layout, datasets)
  return layout


def pack_pairs(batch: Mapping[str, jax.Array], layout: SharedPromptLayout) -> dict[str, jax.Array]:
  """Packs right-padded pairs into [B, length] rows (inside jit; pure gathers).

  Returns `tokens`, `attention_mask`, `segment_ids`, `positions` [B, length] for the
  model; per completion token j < num_targets, `target_tokens`, `target_slots` (the
  slot whose logits predict it) and `target_segment` (1 chosen, 2 rejected, 0 none)
  [B, num_targets]; and `last_slots` [B, 2], the slots of the last chosen and the last
  rejected token (where a reward model reads its rewards). Pairs longer than the layout would be cut: `layout_for` /
  `check_layout` rule that out on the host.
  """
  chosen = jnp.asarray(batch["chosen_tokens"], jnp.int32)
  rejected = jnp.asarray(batch["rejected_tokens"], jnp.int32)
  width = chosen.shape[1]
  chosen_attention = jnp.asarray(batch["chosen_attention_mask"], jnp.bool_)
  chosen_loss = jnp.asarray(batch["chosen_loss_mask"], jnp.bool_)
  prompt = jnp.sum(chosen_attention & ~chosen_loss, axis=1, keepdims=True)  # [B, 1]
  c = jnp.sum(chosen_loss, axis=1, keepdims=True)
  r = jnp.sum(jnp.asarray(batch["rejected_loss_mask"], jnp.bool_), axis=1, keepdims=True)

  slots = jnp.arange(layout.length, dtype=jnp.int32)[None]
  from_chosen = slots < prompt + c
  from_rejected = ~from_chosen & (slots < prompt + c + r)
  take = lambda rows, index: jnp.take_along_axis(rows, jnp.clip(index, 0, width - 1), axis=1)
  tokens = jnp.where(from_chosen, take(chosen, slots), jnp.where(from_rejected, take(rejected, slots - c), 0))
  segment_ids = jnp.where(slots < prompt, 0, jnp.where(from_chosen, 1, jnp.where(from_rejected, 2, PAD_SEGMENT)))
  positions = jnp.where(from_chosen, slots, jnp.where(from_rejected, slots - c, 0))

  j = jnp.arange(layout.num_targets, dtype=jnp.int32)[None]
  target_segment = jnp.where(j < c, 1, jnp.where(j < c + r, 2, 0))
  target_tokens = jnp.take_along_axis(tokens, jnp.clip(prompt + j, 0, layout.length - 1), axis=1)
  # Token at slot p + j comes from slot p + j - 1, except the first rejected token
  # (j == c), which continues the prompt: slot p - 1.
  target_slots = jnp.clip(jnp.where(j == c, prompt - 1, prompt + j - 1), 0, layout.length - 1)
  last_slots = jnp.concatenate([prompt + c - 1, prompt + c + r - 1], axis=1)
  return {"tokens": tokens, "attention_mask": from_chosen | from_rejected, "segment_ids": segment_ids,
          "positions": positions, "target_tokens": target_tokens, "target_slots": target_slots,
          "target_segment": target_segment, "last_slots": last_slots}


def shared_pair_rewards(model: Any, params: Any, batch: Mapping[str, jax.Array],
                        layout: SharedPromptLayout) -> tuple[jax.Array, jax.Array]:
  """Rewards [B, K] of the chosen and the rejected completions, one packed forward per
  pair, read at each completion's last token (same values as the two-row layout)."""
  packed = pack_pairs(batch, layout)
  rewards = networks.apply_reward(model, params, packed["tokens"], packed["attention_mask"],
                                  packed["segment_ids"], packed["positions"], packed["last_slots"])
  return rewards[:, 0], rewards[:, 1]


def shared_pair_logps(model: Any, params: Any, batch: Mapping[str, jax.Array],
                      layout: SharedPromptLayout) -> dict[str, jax.Array]:
  """Summed completion log-probs and lengths of chosen and rejected [B], one packed
  forward per pair (same outputs as `objectives.pair_logps` without sharing)."""
  packed = pack_pairs(batch, layout)
  logits = model.apply({"params": params}, packed["tokens"], packed["attention_mask"],
                       segment_ids=packed["segment_ids"], positions=packed["positions"],
                       logit_slots=packed["target_slots"])
  segment = packed["target_segment"]
  token_logps = losses.sequence_logprobs(logits, packed["target_tokens"], segment > 0)
  out = {}
  for part, k in (("chosen", 1), ("rejected", 2)):
    mask = segment == k
    out[f"{part}_logps"] = jnp.sum(jnp.where(mask, token_logps, 0.0), axis=-1)
    out[f"{part}_lengths"] = jnp.sum(mask, axis=-1).astype(jnp.float32)
  return out
