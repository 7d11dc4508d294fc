"""Pair log-probs and rewards, and sequence log-probs, from padding-free rows
(`rlhf_jax.data.packing`).

The batch carries the packed keys of `data.packing.pack_pairs` (rows [R, N], documents
[R, D, W], targets [R, M], read-out slots [R, 2P]), or of `pack_sequences` (read-out
slots `sequence_ends` [R, P]); their shapes change from batch to batch within a few
buckets, so `jax.jit` compiles one step per bucket. Per-pair (per-sequence) outputs
come back in batch order, [B] = [R * P], as from the two-row layout.

Host side (`data.padding_free` of a config, read into `PackingSettings`): `resolve`
measures the document width on the data sets, `pack_batch` packs each training or
evaluation batch before it goes to the devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses
from rlhf_jax.data import packing
from rlhf_jax.train import networks
from rlhf_jax.train import shared_prompt

__all__ = ["PACKED_DATA", "PackingSettings", "batch_order", "pack_batch", "packed_keys", "packed_pair_logps",
           "packed_pair_rewards", "packed_sequence_logps", "resolve"]

# The data kinds (`objectives.Objective.data`) that padding-free rows can hold.
PACKED_DATA = ("pairs", "sequences")


@dataclasses.dataclass(frozen=True)
class PackingSettings:
  """How examples are laid out in rows: the values of a config's `data` section for
  prompt sharing (`shared_prompt`) and padding-free rows (this module). Defaults and
  comments live in `rlhf_jax/train/config.py`; a 0 size is measured on the data."""

  share_prompt: bool
  shared_length: int
  shared_targets: int
  padding_free: bool
  buckets_per_octave: int
  document_width: int

  @property
  def shared_layout(self) -> "shared_prompt.SharedPromptLayout | None":
    """The prompt-sharing layout (None when sharing is off; sizes must be resolved)."""
    return shared_prompt.layout_of(self.share_prompt, self.shared_length, self.shared_targets)


def _pairs_per_row(batch: Mapping[str, jax.Array]) -> int:
  return batch["reward_slots"].shape[1] // 2


def _examples_per_row(batch: Mapping[str, jax.Array]) -> int:
  """Pairs (`pack_pairs`) or sequences (`pack_sequences`) per packed row."""
  return batch["sequence_ends"].shape[1] if "sequence_ends" in batch else _pairs_per_row(batch)


def _owner_sums(token_logps: jax.Array, owners: jax.Array, outputs: int) -> tuple[jax.Array, jax.Array]:
  """Sums and counts [R, outputs] of the target log-probs [R, M] by owner (-1: padding);
  a one-hot contraction, as the owners are few."""
  one_hot = (owners[..., None] == jnp.arange(outputs)).astype(jnp.float32)
  return jnp.einsum("rm,rmo->ro", token_logps, one_hot), jnp.sum(one_hot, axis=1)


def _target_logps(model: Any, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
  """Log-probs [R, M] of the target tokens, from logits at the target slots only."""
  logits = model.apply({"params": params}, batch["packed_tokens"], batch["packed_attention_mask"],
                       logit_slots=batch["target_slots"], **_model_inputs(batch))
  return losses.sequence_logprobs(logits, batch["target_tokens"], batch["target_owners"] >= 0)


def _model_inputs(batch: Mapping[str, jax.Array]) -> dict[str, Any]:
  return {"segment_ids": batch.get("packed_segments"), "document_slots": batch["packed_document_slots"],
          "positions": batch["packed_positions"]}


def packed_pair_logps(model: Any, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Summed completion log-probs and lengths of chosen and rejected [B], from logits at
  the target slots only (same outputs as `objectives.pair_logps` on the two-row layout)."""
  sums, counts = _owner_sums(_target_logps(model, params, batch), batch["target_owners"],
                             2 * _pairs_per_row(batch))
  sums, counts = sums.reshape(-1, 2), counts.reshape(-1, 2)
  return {"chosen_logps": sums[:, 0], "rejected_logps": sums[:, 1],
          "chosen_lengths": counts[:, 0], "rejected_lengths": counts[:, 1]}


def packed_sequence_logps(model: Any, params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Summed target log-probs and target counts [B] of packed sequences
  (`data.packing.pack_sequences`; the values of `objectives.sequence_logps` on the
  right-padded rows), row by row."""
  sums, counts = _owner_sums(_target_logps(model, params, batch), batch["target_owners"], _examples_per_row(batch))
  return sums.reshape(-1), counts.reshape(-1)


def packed_pair_rewards(model: Any, params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Rewards [B, K] of the chosen and the rejected completions, read at their last tokens."""
  inputs = _model_inputs(batch)
  rewards = networks.apply_reward(model, params, batch["packed_tokens"], batch["packed_attention_mask"],
                                  inputs["segment_ids"], inputs["positions"], batch["reward_slots"],
                                  inputs["document_slots"])  # [R, 2P, K]
  rewards = rewards.reshape(-1, 2, rewards.shape[-1])
  return rewards[:, 0], rewards[:, 1]


# ---------------------------------------------------------------------------------------
# Host side: the trainer's batches.


def resolve(datasets: Mapping[str, Mapping[str, np.ndarray] | None], *, data_kind: str, objective: str,
            share_prompt: bool, buckets_per_octave: int, document_width: int) -> int:
  """The document width of padding-free rows for `datasets`: `document_width` (the
  config's `data.document_width`) measured on the data when 0, else checked against it.

  Raises ValueError when `objective` trains on neither pairs nor sequences (`data_kind`),
  `buckets_per_octave` is not a power of two, or a pair or sequence is wider than a
  user-set width.
  """
  if data_kind not in PACKED_DATA:
    raise ValueError(f"data.padding_free applies to objectives on pairs (dpo, simpo, orpo, reward_model) or "
                     f"sequences (sft); objective {objective!r} trains on {data_kind}.")
  if not packing.is_power_of_two(buckets_per_octave):
    raise ValueError(f"data.buckets_per_octave must be a power of two (1, 2, 4, 8, 16, ...), "
                     f"got {buckets_per_octave!r}.")
  share = bool(share_prompt) and data_kind == "pairs"
  needed = packing.document_width(datasets, share)
  if not document_width:
    return needed
  if needed > document_width:
    longest, where = packing.widest_document(datasets, share)
    raise ValueError(f"data.padding_free: the data has {'packed pairs' if share else 'sequences'} that need "
                     f"data.document_width >= {needed}, got {document_width} (the longest, "
                     f"{longest} tokens, is {where}); raise it or set it to 0 (measured on the data).")
  return int(document_width)


def pack_batch(batch: Mapping[str, np.ndarray], settings: PackingSettings, *, data_parallel: int,
               microbatches: int = 1) -> dict[str, np.ndarray]:
  """The host batch with its pairs packed (`data.packing.pack_pairs`), or its sequences
  (`pack_sequences`, a batch of `SEQUENCE_KEYS`), the keys of `packed_keys`, in place of
  the [B, T] arrays; per-example columns stay as they are.

  Each microbatch m (examples m, m + microbatches, ..., as `step.split_microbatches`
  takes them) is packed into `data_parallel` rows, row r holding the examples of data
  shard r, and its rows become rows r * microbatches + m, so that splitting the packed
  arrays the same way gives every microbatch and every shard its own examples. All
  microbatches share the longest row length and target count. A function of the whole
  packed batch (the on-the-fly reference) returns its per-example outputs row by row:
  `batch_order` restores the batch's order.
  """
  sequences = "tokens" in batch
  share = bool(settings.share_prompt) and not sequences
  replaced = packing.SEQUENCE_KEYS if sequences else packing.PAIR_SEQUENCE_KEYS
  # Unresolved (0): this batch's widest document, the same for all its microbatches.
  width = int(settings.document_width) or packing.document_width({"batch": batch}, share)
  per_octave = int(settings.buckets_per_octave)
  if sequences:
    pack = lambda part: packing.pack_sequences(part, rows=data_parallel, width=width, per_octave=per_octave)
  else:
    pack = lambda part: packing.pack_pairs(part, rows=data_parallel, share_prompt=share, width=width,
                                           per_octave=per_octave)
  packs = [pack({k: np.asarray(batch[k])[m::microbatches] for k in replaced}) for m in range(microbatches)]
  out = {k: v for k, v in batch.items() if k not in replaced}
  for key in packs[0]:
    size = max(p[key].shape[1] for p in packs)
    fill = -1 if key in ("target_owners", "packed_document_slots") else 0
    padded = [np.pad(p[key], [(0, 0), (0, size - p[key].shape[1])] + [(0, 0)] * (p[key].ndim - 2),
                     constant_values=fill) for p in packs]
    # [microbatches, rows, ...] -> rows r * microbatches + m
    out[key] = np.stack(padded, axis=1).reshape(-1, *padded[0].shape[1:])
  return out


def batch_order(per_example: jax.Array, batch: Mapping[str, jax.Array], microbatches: int) -> jax.Array:
  """Per-example outputs [B] of a whole batch packed with `microbatches` (rows r * m + k,
  so the outputs come row by row) put back in the batch's own order."""
  rows, per_row = batch["packed_tokens"].shape[0] // microbatches, _examples_per_row(batch)
  # Output (r * microbatches + k) * P + i is batch example (r * P + i) * microbatches + k.
  return per_example.reshape(rows, microbatches, per_row).transpose(0, 2, 1).reshape(-1)


def packed_keys(share_prompt: bool, *, targets: bool = True, sequences: bool = False) -> tuple[str, ...]:
  """The arrays of `pack_batch` that go to the devices: those of packed
  pairs, or with `sequences` of packed sequences; without `targets` (a reward model)
  not the completion tokens, so that the step's shapes change with the row length only."""
  if sequences:
    return packing.PACKED_SEQUENCE_KEYS
  keys = packing.PACKED_KEYS if targets else tuple(k for k in packing.PACKED_KEYS if k not in packing.TARGET_KEYS)
  return keys + (("packed_segments",) if share_prompt else ())
