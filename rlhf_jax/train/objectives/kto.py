"""KTO on unpaired desirable / undesirable completions."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.train import evaluate
from rlhf_jax.train.objectives.contract import check_choice, loss_default, register, weighted_sum
from rlhf_jax.train.objectives.logps import concat, sequence_logps

__all__ = ["KTOSettings", "REFERENCE_POINTS", "kto"]

REFERENCE_POINTS = ("mismatched", "zero")


@dataclasses.dataclass(frozen=True)
class KTOSettings:
  """Attributes (loss defaults from `losses.kto`):
    beta: reward scale of the KTO value function.
    desirable_weight, undesirable_weight: lambda_D and lambda_U of the paper (balance
      them when the classes are imbalanced).
    reference_point: z0: "mismatched" (KL estimate on (prompt_i, completion_{i+1})
      pairs, as the paper and TRL) or "zero" (z0 = 0, no extra forward passes).
  """

  beta: float = loss_default(losses.kto, "beta")
  desirable_weight: float = loss_default(losses.kto, "desirable_weight")
  undesirable_weight: float = loss_default(losses.kto, "undesirable_weight")
  reference_point: str = "mismatched"

  def __post_init__(self):
    check_choice(self.reference_point, "reference_point", REFERENCE_POINTS)


def _summary(outputs: Mapping[str, Any], num_bins: int) -> dict[str, float]:
  del num_bins
  return evaluate.kto_metrics(outputs)


@register("kto", settings=KTOSettings, data="unpaired", model="policy", reference=True, summary=_summary)
def kto(params, batch, rng, *, model, settings: KTOSettings, layout):
  """KTO (`losses.kto`) on unpaired desirable / undesirable completions.

  The reference point z0 is `kto_reference_kl` of the batch's mismatched pairs
  (`kl_tokens`: the prompt of example i with the completion of example i + 1, built by
  the trainer) when `reference_point == "mismatched"`, else 0. Both the labelled and
  the mismatched sequences go through one forward pass.
  """
  del rng, layout
  size = batch["tokens"].shape[0]
  if settings.reference_point == "mismatched":
    logps, _ = sequence_logps(
        model, params,
        concat(batch["tokens"], batch["kl_tokens"]),
        concat(batch["attention_mask"], batch["kl_attention_mask"]),
        concat(batch["loss_mask"], batch["kl_loss_mask"]))
    policy_logps = logps[:size]
    kl_reference = losses.kto_reference_kl(logps[size:], batch["ref_kl_logps"])
  else:
    policy_logps, _ = sequence_logps(model, params, batch["tokens"], batch["attention_mask"], batch["loss_mask"])
    kl_reference = jnp.zeros((), jnp.float32)
  per_example, rewards = losses.kto(
      policy_logps, batch["ref_logps"], batch["is_desirable"], kl_reference, beta=settings.beta,
      desirable_weight=settings.desirable_weight, undesirable_weight=settings.undesirable_weight)
  desirable = jnp.asarray(batch["is_desirable"], jnp.bool_)
  outputs = {
      "loss": per_example, "reward": rewards,
      "label_is_desirable": desirable.astype(jnp.float32),
      # A desirable completion is "right" when its implicit reward is above the reference
      # point's, an undesirable one when below.
      "accuracy": jnp.where(desirable, rewards > 0, rewards < 0).astype(jnp.float32),
      "kl_reference": jnp.broadcast_to(kl_reference, (size,)),
  }
  return weighted_sum(per_example, batch), outputs
