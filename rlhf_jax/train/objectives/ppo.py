"""PPO on rollouts: a clipped policy loss, a clipped value loss and per-token KL rewards.

The policy-gradient pieces shared by `ppo`, `grpo` and `rloo` (`grpo.py`) live here too:
per-row losses from `losses.ppo_policy_loss` / `losses.ppo_value_loss`, reduced by the
settings' `aggregation` through the train step's denominator, so that minibatches split
into microbatches give exactly the loss of the whole minibatch:

  aggregation          per row                          denominator
  token_mean           sum over the row's tokens        completion tokens of the batch
  sequence_mean        mean over the row's tokens       rows of the batch
  sequence_sum         sum over the row's tokens        rows of the batch
  constant_normalizer  sum over the row's tokens        rows x max_new_tokens (Dr. GRPO)

which is `losses.aggregate` of the whole batch (tested against it).

PPO for RLHF follows Ziegler et al. 2019 (arXiv 1909.08593), Ouyang et al. 2022 (arXiv
2203.02155) and the implementation details collected by Huang et al. 2024, "The N+
Implementation Details of RLHF with PPO" (arXiv 2403.17031). Those implemented, with
the config field that switches each and its default:

  detail                                         field (default)
  per-token KL penalty in the reward             loss.kl_coef (0.05), loss.kl_estimator ("k1"; "k3")
  adaptive KL coefficient (Ziegler et al.)       loss.adaptive_kl_target (0: fixed), loss.adaptive_kl_horizon
  score on the last (EOS) token only             always (the reward model reads the last token)
  "EOS trick": penalise missing EOS              loss.missing_eos_penalty (0: off)
  reward whitening                               loss.whiten_rewards (off)
  advantage whitening                            loss.whiten_advantages (on)
  GAE, gamma 1 and lambda 0.95                   loss.gamma (1.0), loss.lam (0.95)
  clipped value loss                             loss.value_clip_eps (0.2), loss.value_coef (0.1)
  separate critic, initialised from the RM       model.value_init ("policy"; "reward_model", "scratch")
  temperature in the training forward pass       always (logits / rollout.temperature)
  several epochs of shuffled minibatches         rollout.epochs (4), rollout.minibatches (4)
  token-mean loss over the minibatch             loss.aggregation ("token_mean")
  dropout off                                    always (the models have no dropout)
  left-padded prompts, cut from the left         always (`rlhf_jax.rl.prompts`)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.train.objectives.contract import (
    Rollout,
    check_choice,
    loss_default,
    register,
    weighted_sum,
)
from rlhf_jax.train.objectives.logps import completion_forward, completion_logps, token_entropy

__all__ = [
    "PPOSettings",
    "final_token_rewards",
    "penalized_scores",
    "policy_gradient_denominator",
    "policy_gradient_terms",
    "ppo",
    "prepare_ppo",
    "row_aggregate",
]

Batch = Mapping[str, jax.Array]


def _check_common(settings: Any) -> None:
  check_choice(settings.aggregation, "aggregation", losses.AGGREGATIONS)
  check_choice(settings.kl_estimator, "kl_estimator", losses.KL_KINDS)
  for name in ("kl_coef", "adaptive_kl_target", "missing_eos_penalty", "entropy_coef"):
    if getattr(settings, name) < 0:
      raise ValueError(f"config loss.{name} must be >= 0, got {getattr(settings, name)}.")
  if not 0 < settings.clip_eps < 1:
    raise ValueError(f"config loss.clip_eps must lie in (0, 1), got {settings.clip_eps}.")
  if settings.dual_clip and settings.dual_clip <= 1:
    raise ValueError(f"config loss.dual_clip must be 0 (off) or > 1, got {settings.dual_clip}.")
  if settings.adaptive_kl_target > 0 and settings.adaptive_kl_horizon <= 0:
    raise ValueError(f"config loss.adaptive_kl_horizon must be > 0, got {settings.adaptive_kl_horizon}.")


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  """Attributes (defaults from `rlhf_jax.losses` where a loss function has one):
    clip_eps: PPO clip range of the probability ratio.
    dual_clip: dual-clip constant c > 1 for negative advantages (Ye et al. 2020); 0 off.
    value_clip_eps: clip range of the value loss around the rollout's values (value
      clipping, Huang et al. detail); a very large value turns clipping off.
    value_coef: weight of the value loss (TRL's vf_coef 0.1).
    entropy_coef: weight of an entropy bonus; 0 off (Huang et al. use none).
    aggregation: how per-token losses become a scalar, one of `losses.AGGREGATIONS`
      (PPO: "token_mean" over the minibatch's completion tokens).
    gamma, lam: GAE discount and lambda (`losses.gae`; Huang et al. use 1.0 and 0.95).
    kl_coef: beta of the per-token KL penalty -beta * KL_t added to the rewards
      (Ziegler et al. 2019); with `adaptive_kl_target` its starting value.
    kl_estimator: per-token KL estimator of the penalty, "k1" (log-ratio, Ziegler et
      al.) or "k3" (Schulman 2020, non-negative), see `losses.kl_penalty`.
    adaptive_kl_target: > 0 adapts kl_coef towards this KL (nats per sequence, the sum
      over its tokens) with `losses.adaptive_kl_update` after every iteration; 0 keeps
      it fixed.
    adaptive_kl_horizon: horizon of the adaptive controller, in sequences.
    whiten_rewards: standardize the per-token rewards (KL + score) over the batch before
      GAE, keeping their mean (TRL's whiten_rewards; Huang et al. detail "reward
      whitening"); off by default.
    whiten_advantages: standardize the advantages over the batch's completion tokens
      (Huang et al. detail "advantage whitening"); on by default.
    missing_eos_penalty: subtracted from the score of a completion that never emitted
      the end-of-sequence token within max_new_tokens (Huang et al. detail "EOS trick":
      they replace such scores with a constant; TRL subtracts a penalty); 0 off.
  """

  clip_eps: float = loss_default(losses.ppo_policy_loss, "clip_eps")
  dual_clip: float = 0.0
  value_clip_eps: float = loss_default(losses.ppo_value_loss, "clip_eps")
  value_coef: float = 0.1
  entropy_coef: float = 0.0
  aggregation: str = loss_default(losses.ppo_policy_loss, "aggregation")
  gamma: float = loss_default(losses.gae, "gamma")
  lam: float = loss_default(losses.gae, "lam")
  kl_coef: float = 0.05
  kl_estimator: str = loss_default(losses.kl_penalty, "kind")
  adaptive_kl_target: float = 0.0
  adaptive_kl_horizon: float = 10000.0
  whiten_rewards: bool = False
  whiten_advantages: bool = True
  missing_eos_penalty: float = 0.0

  def __post_init__(self):
    _check_common(self)
    for name in ("gamma", "lam"):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f"config loss.{name} must lie in [0, 1], got {getattr(self, name)}.")
    if self.value_clip_eps < 0 or self.value_coef < 0:
      raise ValueError(f"config loss.value_clip_eps and loss.value_coef must be >= 0, got "
                       f"{self.value_clip_eps} and {self.value_coef}.")


# ----------------------------------------------------------------------------- shared


def penalized_scores(rollout: Rollout, missing_eos_penalty: float) -> jax.Array:
  """float32 [R]: the scores, minus `missing_eos_penalty` for rows that did not stop."""
  scores = jnp.asarray(rollout.scores, jnp.float32)
  if missing_eos_penalty:
    scores = scores - missing_eos_penalty * (~rollout.stopped).astype(jnp.float32)
  return scores


def final_token_rewards(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """[R, N]: each row's score on its last completion token, 0 elsewhere."""
  lengths = jnp.sum(mask, axis=-1)
  last = jnp.arange(mask.shape[1])[None, :] == (lengths - 1)[:, None]
  return jnp.where(last & mask, scores[:, None], 0.0)


def _row_aggregation(aggregation: str) -> str:
  # What one row contributes: its token mean for "sequence_mean", else its token sum.
  return "sequence_mean" if aggregation == "sequence_mean" else "sequence_sum"


def row_aggregate(per_token: jax.Array, mask: jax.Array, aggregation: str) -> jax.Array:
  """[R]: each row's contribution to `losses.aggregate(per_token, mask, aggregation)`
  before the division by `policy_gradient_denominator` (see the module docstring)."""
  row = _row_aggregation(aggregation)
  return jax.vmap(lambda x, m: losses.aggregate(x[None], m[None], aggregation=row))(per_token, mask)


def policy_gradient_denominator(batch: Batch, settings: Any) -> jax.Array:
  """The divisor of the summed per-row losses of a (global) batch, by `settings.aggregation`."""
  mask = batch["completion_mask"]
  if settings.aggregation == "token_mean":
    return jnp.maximum(jnp.sum(mask, dtype=jnp.float32), 1.0)
  if settings.aggregation == "constant_normalizer":
    return jnp.asarray(mask.shape[0] * mask.shape[1], jnp.float32)
  return jnp.asarray(mask.shape[0], jnp.float32)


def _per_row_policy_loss(logps, old_logps, advantages, mask, settings):
  """Per-row clipped surrogate and its metrics ([R] each), by `losses.ppo_policy_loss`."""
  row = _row_aggregation(settings.aggregation)

  def one(lp, old, adv, m):
    return losses.ppo_policy_loss(lp[None], old[None], adv[None], m[None], clip_eps=settings.clip_eps,
                                  dual_clip=settings.dual_clip or None, aggregation=row)

  return jax.vmap(one)(logps, old_logps, advantages, mask)


def policy_gradient_terms(
    params: Any, batch: Batch, *, model: Any, settings: Any, layout: Any,
    kl_in_loss: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array | None, jax.Array]:
  """The shared body of ppo / grpo / rloo.

  Returns (per-row loss [R] before the denominator, per-example outputs, the critic's
  values [R, N] or None, the completion mask). With `kl_in_loss` (GRPO) the per-row
  KL term `kl_coef * aggregate(kl_penalty(pi, pi_ref))` is added to the loss
  (DeepSeekMath, Shao et al. 2024, Eq. 3), `kl_coef` read from the batch.
  """
  rollout = layout.rollout
  mask = jnp.asarray(batch["completion_mask"], jnp.bool_)
  logits, values = completion_forward(model, params, batch["tokens"], batch["attention_mask"], rollout)
  logps = completion_logps(logits, batch["tokens"], mask, rollout)
  policy_rows, metrics = _per_row_policy_loss(
      logps, batch["old_logprobs"], batch["advantages"], mask, settings)
  entropy = token_entropy(jax.lax.stop_gradient(logits) if not settings.entropy_coef else logits, mask)
  per_row = policy_rows
  if settings.entropy_coef:
    per_row = per_row - settings.entropy_coef * row_aggregate(entropy, mask, settings.aggregation)
  # Scaled so that the mean over the global batch's rows is the term's share of the loss.
  scale = batch["loss_rows"] / batch["loss_denominator"]
  outputs = {
      "policy_loss": jax.lax.stop_gradient(policy_rows) * scale,
      "clip_fraction": metrics["clip_fraction"],
      "approx_kl": metrics["approx_kl"],
      "entropy": jax.lax.stop_gradient(losses.masked_mean(entropy, mask, axis=-1)),
  }
  if "dual_clip_fraction" in metrics:
    outputs["dual_clip_fraction"] = metrics["dual_clip_fraction"]
  if kl_in_loss:
    kl = losses.kl_penalty(logps, batch["ref_logprobs"], kind=settings.kl_estimator)
    kl_rows = row_aggregate(kl, mask, settings.aggregation)
    per_row = per_row + batch["kl_coef"] * kl_rows
    outputs["kl_loss"] = jax.lax.stop_gradient(kl_rows) * scale
  return per_row, outputs, values, mask


# ----------------------------------------------------------------------------- PPO


def prepare_ppo(rollout: Rollout, settings: PPOSettings) -> dict[str, jax.Array]:
  """PPO's batch from a scored rollout (Ziegler et al. 2019; Huang et al. 2024):

    r_t = -kl_coef * KL_t  (+ score on the last completion token, minus the
          missing-EOS penalty for a row that did not stop)
    (A, R) = gae(r, V_old, mask, gamma, lam),   A whitened over the batch (option)

  with KL_t = `losses.kl_penalty(old log-probs, reference log-probs, kl_estimator)`
  counted on completion tokens only.
  """
  mask = rollout.completion_mask
  kl = jnp.where(mask, losses.kl_penalty(rollout.logprobs, rollout.ref_logprobs, kind=settings.kl_estimator), 0.0)
  scores = penalized_scores(rollout, settings.missing_eos_penalty)
  rewards = -rollout.kl_coef * kl + final_token_rewards(scores, mask)
  if settings.whiten_rewards:
    rewards = losses.whiten(rewards, mask, shift_mean=False)
  values = jnp.where(mask, rollout.values, 0.0)
  advantages, returns = losses.gae(rewards, values, mask, gamma=settings.gamma, lam=settings.lam)
  if settings.whiten_advantages:
    advantages = losses.whiten(advantages, mask)
  return {
      "tokens": rollout.tokens, "attention_mask": rollout.attention_mask, "completion_mask": mask,
      "old_logprobs": jnp.where(mask, rollout.logprobs, 0.0), "old_values": values,
      "advantages": advantages, "returns": returns,
  }


@register("ppo", settings=PPOSettings, data="rollouts", model="policy", reference=True, value_model=True,
          prepare=prepare_ppo, denominator=policy_gradient_denominator)
def ppo(params, batch, rng, *, model, settings: PPOSettings, layout):
  """PPO: clipped policy loss + value_coef * clipped value loss (- entropy bonus).

  Params {"policy", "value"} (`networks.PolicyWithValue`); the batch is `prepare_ppo`'s.
  """
  del rng
  per_row, outputs, values, mask = policy_gradient_terms(
      params, batch, model=model, settings=settings, layout=layout)
  row = _row_aggregation(settings.aggregation)
  value_rows = jax.vmap(lambda v, old, ret, m: losses.ppo_value_loss(
      v[None], old[None], ret[None], m[None], clip_eps=settings.value_clip_eps, aggregation=row))(
          values, batch["old_values"], batch["returns"], mask)
  per_row = per_row + settings.value_coef * value_rows
  outputs["value_loss"] = jax.lax.stop_gradient(value_rows) * (batch["loss_rows"] / batch["loss_denominator"])
  outputs["loss"] = jax.lax.stop_gradient(per_row)
  return weighted_sum(per_row, batch), outputs
