"""Supervised fine-tuning: negative log-likelihood of the completion tokens."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from rlhf_jax.train import evaluate, padding_free
from rlhf_jax.train.objectives.contract import check_choice, register, weighted_sum
from rlhf_jax.train.objectives.logps import sequence_logps

__all__ = ["SFTSettings", "sft"]

Batch = Mapping[str, jax.Array]
AGGREGATIONS = ("token_mean", "sequence_mean")


@dataclasses.dataclass(frozen=True)
class SFTSettings:
  """Attributes:
    aggregation: "token_mean" (every completion token of the batch weighs the same, as
      TRL's SFTTrainer) or "sequence_mean" (mean NLL per sequence, then over sequences).
  """

  aggregation: str = "token_mean"

  def __post_init__(self):
    check_choice(self.aggregation, "aggregation", AGGREGATIONS)


def _check_unweighted(batch: Batch) -> None:
  # Per-sequence weights would have to follow the packed order of the whole batch for
  # the token-mean denominator; the trainer's sequence batches carry none.
  if "weight" in batch:
    raise ValueError("sft: padding-free batches of sequences take no per-sequence `weight`; "
                     "set data.padding_free=False to weight sequences.")


def _sft_denominator(batch: Batch, settings: SFTSettings) -> jax.Array:
  if "packed_tokens" in batch:  # data.padding_free: the sequences of packed rows
    _check_unweighted(batch)
    if settings.aggregation == "token_mean":
      return jnp.sum(batch["target_owners"] >= 0).astype(jnp.float32)
    return jnp.asarray(batch["sequence_ends"].size, jnp.float32)
  weight = jnp.asarray(batch["weight"], jnp.float32) if "weight" in batch else jnp.ones(
      batch["tokens"].shape[0], jnp.float32)
  if settings.aggregation == "token_mean":
    tokens = jnp.sum(jnp.asarray(batch["loss_mask"][:, 1:], jnp.float32), axis=-1)
    return jnp.sum(weight * tokens)
  return jnp.sum(weight)


def _summary(outputs: Mapping[str, Any], num_bins: int) -> dict[str, float]:
  del num_bins
  return evaluate.sft_metrics(outputs)


@register("sft", settings=SFTSettings, data="sequences", model="policy", denominator=_sft_denominator,
          summary=_summary)
def sft(params, batch, rng, *, model, settings: SFTSettings, layout):
  """Supervised fine-tuning: negative log-likelihood of the completion tokens.

  `aggregation` "token_mean": sum of token NLLs over the global batch divided by its
  number of completion tokens; "sequence_mean": the mean NLL of each sequence, averaged
  over sequences. A batch of padding-free rows (`data.packing.pack_sequences`) gives the
  same values from logits at its completion tokens only.
  """
  del rng, layout
  if "packed_tokens" in batch:  # data.padding_free
    _check_unweighted(batch)
    logps, lengths = padding_free.packed_sequence_logps(model, params, batch)
  else:
    logps, lengths = sequence_logps(model, params, batch["tokens"], batch["attention_mask"], batch["loss_mask"])
  nll = -logps
  mean_nll = nll / jnp.maximum(lengths, 1.0)
  per_example = nll if settings.aggregation == "token_mean" else mean_nll
  return weighted_sum(per_example, batch), {
      "loss": mean_nll, "nll_sum": nll, "num_tokens": lengths}
