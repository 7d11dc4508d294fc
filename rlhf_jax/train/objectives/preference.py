"""Offline preference optimization on pairs: the DPO family, SimPO and ORPO."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.train import evaluate
from rlhf_jax.train.objectives.contract import loss_default, register, weighted_sum
from rlhf_jax.train.objectives.logps import pair_logps

__all__ = ["DPOSettings", "ORPOSettings", "SimPOSettings", "dpo", "dpo_loss", "orpo", "pair_outputs", "simpo"]


def pair_outputs(per_example, chosen_rewards, rejected_rewards) -> dict[str, jax.Array]:
  """Per-example outputs of a pairwise objective: loss, rewards, margin, accuracy."""
  margin = chosen_rewards - rejected_rewards
  return {"loss": per_example, "chosen_reward": chosen_rewards, "rejected_reward": rejected_rewards,
          "margin": margin, "accuracy": (margin > 0).astype(jnp.float32)}


def _summary(outputs: Mapping[str, Any], num_bins: int) -> dict[str, float]:
  del num_bins
  return evaluate.implicit_reward_metrics(outputs)


@dataclasses.dataclass(frozen=True)
class DPOSettings:
  """Attributes (defaults from `losses.dpo`):
    variant: one of `losses.DPO_VARIANTS` ("sigmoid", "ipo", "hinge", "robust", ...).
    beta: inverse temperature of the implicit reward beta * log(pi / pi_ref).
    label_smoothing: assumed label-flip rate (cDPO, robust, EXO, AOT), in [0, 0.5).
    discopop_tau: DiscoPOP modulation temperature, in (0, 1].
    exo_epsilon: EXO target smoothing; 0 means "use label_smoothing, else 1e-3" (as TRL).
    bco_delta: BCO reward shift delta (TRL keeps a running mean; here a constant).
  """

  variant: str = loss_default(losses.dpo, "variant")
  beta: float = loss_default(losses.dpo, "beta")
  label_smoothing: float = loss_default(losses.dpo, "label_smoothing")
  discopop_tau: float = loss_default(losses.dpo, "discopop_tau")
  exo_epsilon: float = 0.0
  bco_delta: float = loss_default(losses.dpo, "bco_delta")

  def __post_init__(self):
    if self.variant not in losses.DPO_VARIANT_LOSSES:
      raise ValueError(f"config loss.variant: {losses.DPO_VARIANT_LOSSES.unknown_message(self.variant)}")


@register("dpo", settings=DPOSettings, data="pairs", model="policy", reference=True, summary=_summary)
def dpo(params, batch, rng, *, model, settings: DPOSettings, layout):
  """DPO and its variants (`losses.dpo`, `settings.variant`), on summed completion log-probs.

  Lengths (for the variants whose loss function takes them: "ipo", "sigmoid_norm") are
  the completion token counts of the loss masks. Reference log-probs come from the batch (`ref_chosen_logps`,
  `ref_rejected_logps`), cached or computed on the fly by the trainer.
  """
  del rng
  return dpo_loss(pair_logps(model, params, batch, layout.shared_prompt), batch, settings)


def dpo_loss(policy: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], settings: DPOSettings
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss and outputs of `dpo` from the policy's pair log-probs and lengths
  (`pair_logps`) and the batch's reference log-probs and weights (shared with
  `online_dpo`)."""
  use_lengths = "chosen_lengths" in inspect.signature(losses.DPO_VARIANT_LOSSES.get(settings.variant)).parameters
  per_example, chosen_rewards, rejected_rewards = losses.dpo(
      policy["chosen_logps"], policy["rejected_logps"],
      batch["ref_chosen_logps"], batch["ref_rejected_logps"],
      beta=settings.beta, variant=settings.variant, label_smoothing=settings.label_smoothing,
      chosen_lengths=policy["chosen_lengths"] if use_lengths else None,
      rejected_lengths=policy["rejected_lengths"] if use_lengths else None,
      discopop_tau=settings.discopop_tau, exo_epsilon=settings.exo_epsilon or None,
      bco_delta=settings.bco_delta)
  outputs = pair_outputs(per_example, jax.lax.stop_gradient(chosen_rewards),
                         jax.lax.stop_gradient(rejected_rewards))
  outputs["chosen_logps"] = jax.lax.stop_gradient(policy["chosen_logps"])
  outputs["rejected_logps"] = jax.lax.stop_gradient(policy["rejected_logps"])
  return weighted_sum(per_example, batch), outputs


def _average_logps(policy):
  return (policy["chosen_logps"] / jnp.maximum(policy["chosen_lengths"], 1.0),
          policy["rejected_logps"] / jnp.maximum(policy["rejected_lengths"], 1.0))


@dataclasses.dataclass(frozen=True)
class SimPOSettings:
  """Attributes (defaults from `losses.simpo`):
    beta: reward scale on average log-probs; the paper uses 2.0 to 10.0.
    gamma: target reward margin; the paper uses 0.3 to 1.6.
    label_smoothing: label-flip probability, in [0, 0.5).
  """

  beta: float = loss_default(losses.simpo, "beta")
  gamma: float = loss_default(losses.simpo, "gamma")
  label_smoothing: float = loss_default(losses.simpo, "label_smoothing")


@register("simpo", settings=SimPOSettings, data="pairs", model="policy", summary=_summary)
def simpo(params, batch, rng, *, model, settings: SimPOSettings, layout):
  """SimPO (`losses.simpo`): reference-free, on average completion log-probs."""
  del rng
  chosen_avg, rejected_avg = _average_logps(pair_logps(model, params, batch, layout.shared_prompt))
  per_example, chosen_rewards, rejected_rewards = losses.simpo(
      chosen_avg, rejected_avg, beta=settings.beta, gamma=settings.gamma,
      label_smoothing=settings.label_smoothing)
  return weighted_sum(per_example, batch), pair_outputs(per_example, chosen_rewards, rejected_rewards)


@dataclasses.dataclass(frozen=True)
class ORPOSettings:
  """Attributes (defaults from `losses.orpo`):
    lam: weight lambda of the odds-ratio term (TRL's ORPO beta).
  """

  lam: float = loss_default(losses.orpo, "lam")


@register("orpo", settings=ORPOSettings, data="pairs", model="policy", summary=_summary)
def orpo(params, batch, rng, *, model, settings: ORPOSettings, layout):
  """ORPO (`losses.orpo`): chosen NLL (per-sequence token mean) + lam * odds-ratio term.

  The rewards reported are the average log-probs; `margin` is the log odds ratio and
  `accuracy` the fraction of pairs where it is positive.
  """
  del rng
  chosen_avg, rejected_avg = _average_logps(pair_logps(model, params, batch, layout.shared_prompt))
  per_example, log_odds_ratio = losses.orpo(chosen_avg, rejected_avg, -chosen_avg, lam=settings.lam)
  outputs = pair_outputs(per_example, jax.lax.stop_gradient(chosen_avg), jax.lax.stop_gradient(rejected_avg))
  outputs["margin"] = log_odds_ratio
  outputs["accuracy"] = (log_odds_ratio > 0).astype(jnp.float32)
  outputs["chosen_nll"] = jax.lax.stop_gradient(-chosen_avg)
  return weighted_sum(per_example, batch), outputs
