"""Group-baseline policy gradients on rollouts: GRPO (with Dr. GRPO) and RLOO.

Both sample `rollout.num_samples` completions per prompt and use the other completions
of the prompt as the baseline, so no critic is trained:

- `grpo`: A_i = (r_i - mean_group r) / (std_group + eps) on every token of completion
  i, a clipped surrogate, and the KL to the reference as a loss term
  `kl_coef * KL(pi || pi_ref)` (k3 estimator). Shao et al. 2024, "DeepSeekMath"
  (arXiv 2402.03300), Sec. 4.1. Dr. GRPO (Liu et al. 2025, arXiv 2503.20783) is
  `loss.scale="none"` (no division by the std) with
  `loss.aggregation="constant_normalizer"` (no length normalisation):
  `configs/grpo.py:variant=dr_grpo`.
- `rloo`: REINFORCE with the leave-one-out baseline, the KL as a penalty on the
  sequence reward: A_i = R_i - mean_{j != i} R_j with R_i = score_i - kl_coef *
  sum_t KL_t. Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics" (arXiv
  2402.14740). With one epoch the ratio is 1 and the clipped loss is REINFORCE's.

Loss reduction, clipping and the KL controller are shared with PPO (`ppo.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.train.objectives.contract import Rollout, check_choice, loss_default, register, weighted_sum
from rlhf_jax.train.objectives.ppo import (
    _check_common,
    penalized_scores,
    policy_gradient_denominator,
    policy_gradient_terms,
)

__all__ = ["GRPOSettings", "RLOOSettings", "grpo", "prepare_grpo", "prepare_rloo", "rloo"]


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
  """Attributes:
    clip_eps, dual_clip, entropy_coef, missing_eos_penalty: as `PPOSettings`.
    aggregation: "sequence_mean" (GRPO's per-sequence token mean), "token_mean", or
      "constant_normalizer" (Dr. GRPO: token sum / (rows x max_new_tokens)).
    scale: advantage scale of `losses.grpo_advantages`: "group" (GRPO), "batch", or
      "none" (Dr. GRPO).
    advantage_eps: added to the std before the division.
    kl_coef: beta of the KL loss term (DeepSeekMath uses 0.04; 0 drops the term, the
      KL is still measured and reported); with `adaptive_kl_target` its start.
    kl_estimator: estimator of the KL term ("k3" in DeepSeekMath).
    adaptive_kl_target, adaptive_kl_horizon: as `PPOSettings`.
  """

  clip_eps: float = loss_default(losses.ppo_policy_loss, "clip_eps")
  dual_clip: float = 0.0
  entropy_coef: float = 0.0
  aggregation: str = "sequence_mean"
  scale: str = loss_default(losses.grpo_advantages, "scale")
  advantage_eps: float = loss_default(losses.grpo_advantages, "eps")
  kl_coef: float = 0.04
  kl_estimator: str = "k3"
  adaptive_kl_target: float = 0.0
  adaptive_kl_horizon: float = 10000.0
  missing_eos_penalty: float = 0.0

  def __post_init__(self):
    _check_common(self)
    check_choice(self.scale, "scale", losses.GRPO_SCALES)


def _broadcast(advantages: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.where(mask, advantages[:, None], 0.0)


def prepare_grpo(rollout: Rollout, settings: GRPOSettings) -> dict[str, jax.Array]:
  """GRPO's batch: group-relative advantages (`losses.grpo_advantages`) on every
  completion token, the old and reference log-probs, and the KL coefficient per row."""
  mask = rollout.completion_mask
  scores = penalized_scores(rollout, settings.missing_eos_penalty)
  advantages = losses.grpo_advantages(scores, group_size=rollout.group_size, scale=settings.scale,
                                      eps=settings.advantage_eps)
  return {
      "tokens": rollout.tokens, "attention_mask": rollout.attention_mask, "completion_mask": mask,
      "old_logprobs": jnp.where(mask, rollout.logprobs, 0.0), "advantages": _broadcast(advantages, mask),
      "ref_logprobs": jnp.where(mask, rollout.ref_logprobs, 0.0),
      "kl_coef": jnp.full(scores.shape, rollout.kl_coef, jnp.float32),
  }


@register("grpo", settings=GRPOSettings, data="rollouts", model="policy", reference=True,
          prepare=prepare_grpo, denominator=policy_gradient_denominator)
def grpo(params, batch, rng, *, model, settings: GRPOSettings, layout):
  """GRPO (and Dr. GRPO): clipped surrogate on group-relative advantages + KL term."""
  del rng
  per_row, outputs, _, _ = policy_gradient_terms(
      params, batch, model=model, settings=settings, layout=layout, kl_in_loss=True)
  outputs["loss"] = jax.lax.stop_gradient(per_row)
  return weighted_sum(per_row, batch), outputs


@dataclasses.dataclass(frozen=True)
class RLOOSettings:
  """Attributes:
    clip_eps, dual_clip, entropy_coef, missing_eos_penalty: as `PPOSettings`.
    aggregation: "sequence_sum" (REINFORCE on the sequence log-prob, as Ahmadian et al.
      treat a whole completion as one action), or another of `losses.AGGREGATIONS`.
    kl_coef: beta of the KL penalty on the sequence reward; with `adaptive_kl_target`
      its start.
    kl_estimator: per-token estimator summed into the sequence KL ("k1").
    adaptive_kl_target, adaptive_kl_horizon: as `PPOSettings`.
  """

  clip_eps: float = loss_default(losses.ppo_policy_loss, "clip_eps")
  dual_clip: float = 0.0
  entropy_coef: float = 0.0
  aggregation: str = "sequence_sum"
  kl_coef: float = 0.05
  kl_estimator: str = loss_default(losses.kl_penalty, "kind")
  adaptive_kl_target: float = 0.0
  adaptive_kl_horizon: float = 10000.0
  missing_eos_penalty: float = 0.0

  def __post_init__(self):
    _check_common(self)


def prepare_rloo(rollout: Rollout, settings: RLOOSettings) -> dict[str, jax.Array]:
  """RLOO's batch: leave-one-out advantages (`losses.rloo_advantages`) of the
  KL-penalised sequence rewards, on every completion token."""
  mask = rollout.completion_mask
  kl = jnp.where(mask, losses.kl_penalty(rollout.logprobs, rollout.ref_logprobs, kind=settings.kl_estimator), 0.0)
  rewards = penalized_scores(rollout, settings.missing_eos_penalty) - rollout.kl_coef * jnp.sum(kl, axis=-1)
  advantages = losses.rloo_advantages(rewards, group_size=rollout.group_size)
  return {
      "tokens": rollout.tokens, "attention_mask": rollout.attention_mask, "completion_mask": mask,
      "old_logprobs": jnp.where(mask, rollout.logprobs, 0.0), "advantages": _broadcast(advantages, mask),
  }


@register("rloo", settings=RLOOSettings, data="rollouts", model="policy", reference=True,
          prepare=prepare_rloo, denominator=policy_gradient_denominator)
def rloo(params, batch, rng, *, model, settings: RLOOSettings, layout):
  """RLOO: the clipped surrogate (REINFORCE at ratio 1) on leave-one-out advantages."""
  del rng
  per_row, outputs, _, _ = policy_gradient_terms(params, batch, model=model, settings=settings, layout=layout)
  outputs["loss"] = jax.lax.stop_gradient(per_row)
  return weighted_sum(per_row, batch), outputs
