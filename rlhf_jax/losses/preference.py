"""Offline preference losses that need no reference model or no pairing.

* `simpo`: Simple Preference Optimization, reference-free, on average log-probs.
* `orpo`: Odds Ratio Preference Optimization, reference-free, SFT term included.
* `kto`: Kahneman-Tversky Optimization, unpaired desirable / undesirable examples.
* `kto_reference_kl`: KTO's reference point from mismatched (prompt, completion) pairs.

Every loss returns per-example values of shape [B]; the caller reduces. Reward
outputs are metrics and carry no gradient.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from rlhf_jax._checks import (
    as_bool,
    as_float,
    check_rank,
    check_same_shape,
    check_scalar_range,
)
from rlhf_jax.losses.logistic import smoothed_logistic_loss

__all__ = ["simpo", "orpo", "kto", "kto_reference_kl"]

# ORPO needs log(1 - p) for an average log-prob log p <= 0, which is -inf at log p = 0
# (and undefined above). Clamping to this value keeps log-odds finite (about +13.8) and
# gradients bounded (about 1e6); 1e-6 is well above float32 resolution near 0.
_MAX_AVG_LOGP = -1e-6


def simpo(
    chosen_avg_logps: jax.Array,
    rejected_avg_logps: jax.Array,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """SimPO loss: a Bradley-Terry loss on length-normalized log-probs with a margin.

  With `z = beta * (chosen_avg_logps - rejected_avg_logps) - gamma` and label
  smoothing `eps`:

    loss = -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z).

  Meng, Xia and Chen, 2024, "SimPO: Simple Preference Optimization with a
  Reference-Free Reward", arXiv:2405.14734, Eq. 6 (the `eps` term is the conservative
  variant of Mitchell 2023, as in TRL's `CPOTrainer`).

  Convention: `gamma` is the target reward margin of the paper, subtracted from the
  scaled difference: `beta * diff - gamma`. TRL's `CPOTrainer(loss_type="simpo")`
  computes `beta * (diff - simpo_gamma / beta)`, the same number. Any real `gamma` is
  accepted (the paper uses gamma >= 0; gamma = 0 and eps = 0 is plain
  `-log_sigmoid(beta * diff)`).

  Args:
    chosen_avg_logps: [B] average per-token log-prob of the chosen completion (sum of
      token log-probs divided by the number of completion tokens).
    rejected_avg_logps: [B] same for the rejected completion.
    beta: reward scale, > 0 (the paper uses 2.0 to 10.0).
    gamma: target reward margin (the paper uses 0.3 to 1.6).
    label_smoothing: probability that a label is flipped, in [0, 0.5).

  Returns:
    `(losses, chosen_rewards, rejected_rewards)`, each [B] float32 (float64 under x64);
    the rewards `beta * avg_logps` are metrics under `stop_gradient`.
  """
  chosen_avg_logps = as_float(chosen_avg_logps, "chosen_avg_logps")
  rejected_avg_logps = as_float(rejected_avg_logps, "rejected_avg_logps")
  check_rank(chosen_avg_logps, "chosen_avg_logps", 1)
  check_rank(rejected_avg_logps, "rejected_avg_logps", 1)
  check_same_shape(chosen_avg_logps=chosen_avg_logps, rejected_avg_logps=rejected_avg_logps)
  check_scalar_range(beta, "beta", low=0.0, low_inclusive=False)
  check_scalar_range(gamma, "gamma")
  check_scalar_range(label_smoothing, "label_smoothing", low=0.0, high=0.5)

  logits = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
  losses = smoothed_logistic_loss(logits, label_smoothing)
  chosen_rewards = jax.lax.stop_gradient(beta * chosen_avg_logps)
  rejected_rewards = jax.lax.stop_gradient(beta * rejected_avg_logps)
  return losses, chosen_rewards, rejected_rewards


def _log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, accurate over the whole range (Maechler, 2012).

  Near 0, 1 - exp(x) cancels, so use expm1; far below, exp(x) underflows harmlessly and
  log1p keeps the tiny result exact. Each branch sees a safe input of its own ("double
  where"), so the unused branch cannot leak a NaN gradient.
  """
  near_zero = x > -math.log(2.0)
  x_near = jnp.where(near_zero, x, -1.0)
  x_far = jnp.where(near_zero, -1.0, x)
  return jnp.where(near_zero, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


def orpo(
    chosen_avg_logps: jax.Array,
    rejected_avg_logps: jax.Array,
    chosen_nll: jax.Array,
    *,
    lam: float = 0.1,
) -> tuple[jax.Array, jax.Array]:
  """ORPO loss: supervised NLL on the chosen completion plus an odds-ratio penalty.

  With `odds(y|x) = p / (1 - p)` for the average per-token probability `p`:

    log_odds = avg_logp - log(1 - exp(avg_logp))
    log_odds_ratio = log_odds_chosen - log_odds_rejected
    loss = chosen_nll - lam * log_sigmoid(log_odds_ratio).

  Hong, Lee and Thorne, 2024, "ORPO: Monolithic Preference Optimization without
  Reference Model", arXiv:2403.07691, Eqs. 4-7.

  Conventions (following TRL's `ORPOTrainer.odds_ratio_loss`, whose `beta` is our
  `lam`, default 0.1):
  * The odds use average (length-normalized) log-probs, as TRL computes them with
    `average_log_prob=True`.
  * `log(1 - exp(x))` is computed with the log1mexp trick instead of TRL's
    `log1p(-exp(x))`, which loses all precision near x = 0.
  * Average log-probs are clamped to at most -1e-6 before taking odds: at exactly 0 the
    odds are infinite. Values above the clamp (including invalid positive ones) get
    zero gradient through the odds-ratio term; `chosen_nll` is untouched.
  * `chosen_nll` is per example. TRL averages the cross-entropy over all chosen tokens
    of the batch; passing `-chosen_avg_logps` here and averaging gives the
    per-sequence-mean variant instead. The caller picks the normalization.

  Args:
    chosen_avg_logps: [B] average per-token log-prob of the chosen completion, <= 0.
    rejected_avg_logps: [B] same for the rejected completion.
    chosen_nll: [B] supervised negative log-likelihood of the chosen completion.
    lam: weight of the odds-ratio term, >= 0.

  Returns:
    `(losses, log_odds_ratio)`, each [B]; `log_odds_ratio` (TRL logs its batch mean as
    `log_odds_chosen`) is a metric under `stop_gradient`.
  """
  chosen_avg_logps = as_float(chosen_avg_logps, "chosen_avg_logps")
  rejected_avg_logps = as_float(rejected_avg_logps, "rejected_avg_logps")
  chosen_nll = as_float(chosen_nll, "chosen_nll")
  check_rank(chosen_avg_logps, "chosen_avg_logps", 1)
  check_rank(rejected_avg_logps, "rejected_avg_logps", 1)
  check_rank(chosen_nll, "chosen_nll", 1)
  check_same_shape(
      chosen_avg_logps=chosen_avg_logps,
      rejected_avg_logps=rejected_avg_logps,
      chosen_nll=chosen_nll,
  )
  check_scalar_range(lam, "lam", low=0.0)

  def log_odds(avg_logps: jax.Array) -> jax.Array:
    avg_logps = jnp.minimum(avg_logps, _MAX_AVG_LOGP)
    return avg_logps - _log1mexp(avg_logps)

  log_odds_ratio = log_odds(chosen_avg_logps) - log_odds(rejected_avg_logps)
  losses = chosen_nll - lam * jax.nn.log_sigmoid(log_odds_ratio)
  return losses, jax.lax.stop_gradient(log_odds_ratio)


def _as_reference(kl_reference: Any, batch_shape: tuple[int, ...]) -> jax.Array:
  # A plain Python number (e.g. `kl_reference=0`) is a natural way to fix the point.
  if isinstance(kl_reference, numbers.Real) and not isinstance(kl_reference, bool):
    kl_reference = float(kl_reference)
  kl_reference = as_float(kl_reference, "kl_reference")
  if kl_reference.ndim != 0 and kl_reference.shape != batch_shape:
    raise ValueError(
        f"`kl_reference` must be a scalar or have shape {batch_shape}, got shape "
        f"{kl_reference.shape}."
    )
  return kl_reference


def kto(
    policy_logps: jax.Array,
    ref_logps: jax.Array,
    is_desirable: jax.Array,
    kl_reference: jax.Array | float,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """KTO loss on unpaired completions labelled desirable or undesirable.

  With the implicit reward `r = policy_logps - ref_logps` and the reference point
  `z0 = max(kl_reference, 0)` (a constant: no gradient flows into it):

    desirable:   loss = desirable_weight   * (1 - sigmoid(beta * (r - z0)))
    undesirable: loss = undesirable_weight * (1 - sigmoid(beta * (z0 - r))).

  Ethayarajh, Xu, Muennighoff, Jurafsky and Kiela, 2024, "KTO: Model Alignment as
  Prospect Theoretic Optimization", arXiv:2402.01306, Eq. 8.

  Conventions (following TRL's `KTOTrainer.kto_loss`):
  * `1 - sigmoid(.)` (the paper's value function), not `-log_sigmoid(.)`.
  * `z0` is clamped at 0 and detached; estimate it with `kto_reference_kl`. TRL uses
    summed (not averaged) completion log-probs for both rewards and `z0`.
  * Losses stay in batch order; TRL concatenates desirable then undesirable losses,
    which changes no mean.

  Args:
    policy_logps: [B] completion log-prob under the policy.
    ref_logps: [B] completion log-prob under the frozen reference model.
    is_desirable: [B] bool (or 0/1) label of each completion.
    kl_reference: scalar or [B] estimate of KL(policy || reference); negative values
      act as 0.
    beta: reward scale, > 0.
    desirable_weight: weight of desirable examples (lambda_D), >= 0.
    undesirable_weight: weight of undesirable examples (lambda_U), >= 0.

  Returns:
    `(losses, rewards)`, each [B]; `rewards = beta * r` is a metric under
    `stop_gradient`.
  """
  policy_logps = as_float(policy_logps, "policy_logps")
  ref_logps = as_float(ref_logps, "ref_logps")
  is_desirable = as_bool(is_desirable, "is_desirable")
  check_rank(policy_logps, "policy_logps", 1)
  check_rank(ref_logps, "ref_logps", 1)
  check_rank(is_desirable, "is_desirable", 1)
  check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps, is_desirable=is_desirable)
  kl_reference = _as_reference(kl_reference, policy_logps.shape)
  check_scalar_range(beta, "beta", low=0.0, low_inclusive=False)
  check_scalar_range(desirable_weight, "desirable_weight", low=0.0)
  check_scalar_range(undesirable_weight, "undesirable_weight", low=0.0)

  # The paper treats z0 as a baseline, not something to optimize: no gradient.
  z0 = jnp.maximum(jax.lax.stop_gradient(kl_reference), 0.0)
  log_ratio = policy_logps - ref_logps
  centred = beta * (log_ratio - z0)
  # 1 - sigmoid(a) == sigmoid(-a), which does not round to 0 - 0 for large a.
  losses = jnp.where(
      is_desirable,
      desirable_weight * jax.nn.sigmoid(-centred),
      undesirable_weight * jax.nn.sigmoid(centred),
  )
  return losses, jax.lax.stop_gradient(beta * log_ratio)


def kto_reference_kl(policy_kl_logps: jax.Array, ref_kl_logps: jax.Array) -> jax.Array:
  """KTO's reference point: a batch estimate of KL(policy || reference), at least 0.

    z0 = max(mean(policy_kl_logps - ref_kl_logps), 0), under stop_gradient.

  The log-probs are of mismatched pairs (prompt x_i with the completion of another
  example, TRL shifts the completions by one), so the estimate is not tied to the
  labelled completions. Ethayarajh et al., 2024, arXiv:2402.01306, Sec. 4.1; TRL's
  `KTOTrainer.kto_loss`.

  Data parallelism: the mean is over the arrays given. Under `jit` with a sharded
  global batch that is already the global mean; inside `shard_map`/`pmap` each device
  sees only its shard, so average across devices as TRL does (it gathers the unclamped
  per-device means, averages, then clamps), e.g. pass
  `jax.lax.pmean(jnp.mean(policy_kl_logps - ref_kl_logps), axis)` to `kto`, which clamps.

  Args:
    policy_kl_logps: [B] log-probs of the mismatched completions under the policy.
    ref_kl_logps: [B] same under the reference model.

  Returns:
    A scalar float32 (float64 under x64), >= 0, with no gradient.
  """
  policy_kl_logps = as_float(policy_kl_logps, "policy_kl_logps")
  ref_kl_logps = as_float(ref_kl_logps, "ref_kl_logps")
  check_rank(policy_kl_logps, "policy_kl_logps", 1)
  check_rank(ref_kl_logps, "ref_kl_logps", 1)
  check_same_shape(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
  if policy_kl_logps.shape[0] == 0:
    raise ValueError("`policy_kl_logps` must hold at least one example, got shape (0,).")
  kl = jnp.mean(policy_kl_logps - ref_kl_logps)
  return jax.lax.stop_gradient(jnp.maximum(kl, 0.0))
