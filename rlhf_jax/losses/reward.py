"""Reward-model losses: pairwise, tie-aware, noisy-annotator and listwise preferences.

Every function returns per-example losses; the caller reduces (usually with a mean).
Rewards are scalar outputs of a reward model, one per response.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from rlhf_jax import _checks
from rlhf_jax.losses.logistic import smoothed_logistic_loss

__all__ = [
    "bradley_terry",
    "bradley_terry_soft",
    "bradley_terry_ties",
    "crowd_bt",
    "plackett_luce",
    "reward_centering",
]


def _as_float_param(x: ArrayLike, name: str, like: jax.Array, like_name: str) -> jax.Array:
  """Casts a hyper-parameter that is a scalar or an array shaped like `like` to float.

  Python ints are accepted (a margin of 1 is natural); integer arrays are not, so that
  an accidental label tensor is caught.
  """
  if isinstance(x, numbers.Real) and not isinstance(x, bool):
    x = float(x)
  x = _checks.as_float(x, name)
  if x.ndim != 0 and x.shape != like.shape:
    raise ValueError(
        f"`{name}` must be a scalar or have the shape of `{like_name}` {like.shape}, "
        f"got shape {x.shape}."
    )
  return x


def _pair(chosen_rewards: ArrayLike, rejected_rewards: ArrayLike) -> tuple[jax.Array, jax.Array]:
  chosen_rewards = _checks.as_float(chosen_rewards, "chosen_rewards")
  rejected_rewards = _checks.as_float(rejected_rewards, "rejected_rewards")
  _checks.check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
  return chosen_rewards, rejected_rewards


def bradley_terry(
    chosen_rewards: ArrayLike,
    rejected_rewards: ArrayLike,
    *,
    margin: ArrayLike = 0.0,
    label_smoothing: float = 0.0,
) -> jax.Array:
  """Bradley-Terry negative log-likelihood that the chosen response is preferred.

  With `d = chosen_rewards - rejected_rewards - margin` and `eps = label_smoothing`:

    loss = -(1 - eps) * log_sigmoid(d) - eps * log_sigmoid(-d)

  Bradley & Terry (1952); the pairwise reward-model loss of Ouyang et al. 2022
  (arXiv 2203.02155). A positive `margin` asks the chosen reward to exceed the
  rejected one by at least that much, as in Llama 2 (Touvron et al. 2023, arXiv
  2307.09288), where the margin grows with the annotators' preference strength.
  Label smoothing treats each label as flipped with probability `eps`.

  Args:
    chosen_rewards: float [B], rewards of the preferred responses (any shape is
      accepted as long as both reward arrays share it).
    rejected_rewards: float [B], rewards of the dispreferred responses.
    margin: a scalar or a float array [B] of per-example margins.
    label_smoothing: probability `eps` in [0, 0.5) that a label is flipped.

  Returns:
    float [B] per-example losses (float32 for bfloat16 inputs).
  """
  chosen_rewards, rejected_rewards = _pair(chosen_rewards, rejected_rewards)
  margin = _as_float_param(margin, "margin", chosen_rewards, "chosen_rewards")
  _checks.check_scalar_range(label_smoothing, "label_smoothing", low=0.0, high=0.5)
  return smoothed_logistic_loss(chosen_rewards - rejected_rewards - margin, label_smoothing)


def bradley_terry_soft(
    chosen_rewards: ArrayLike,
    rejected_rewards: ArrayLike,
    target_prob: ArrayLike,
) -> jax.Array:
  """Bradley-Terry cross-entropy against a soft probability that chosen is preferred.

  With `d = chosen_rewards - rejected_rewards` and `p = target_prob`:

    loss = -p * log_sigmoid(d) - (1 - p) * log_sigmoid(-d)

  Used to train on aggregated annotations (e.g. the fraction of annotators who
  preferred the chosen response, or a rater's stated confidence). This is a
  cross-entropy, not a KL divergence: its minimum over `d`, reached at
  `sigmoid(d) = p`, is the binary entropy of `p`, not 0. `p = 1` recovers
  `bradley_terry`; `p = 0` recovers it with the two responses swapped.

  Args:
    chosen_rewards: float [B].
    rejected_rewards: float [B].
    target_prob: floating, a scalar or [B], with values in [0, 1]. Values cannot
      be checked under `jit`; values outside [0, 1] give a meaningless loss that is
      unbounded below.

  Returns:
    float [B] per-example losses.
  """
  chosen_rewards, rejected_rewards = _pair(chosen_rewards, rejected_rewards)
  if isinstance(target_prob, numbers.Real):
    _checks.check_scalar_range(
        target_prob, "target_prob", low=0.0, high=1.0, high_inclusive=True
    )
  # Integer arrays are rejected: hard 0/1 labels belong in `bradley_terry`.
  target_prob = _as_float_param(target_prob, "target_prob", chosen_rewards, "chosen_rewards")
  logits = chosen_rewards - rejected_rewards
  return (
      -target_prob * jax.nn.log_sigmoid(logits)
      - (1.0 - target_prob) * jax.nn.log_sigmoid(-logits)
  )


def bradley_terry_ties(
    chosen_rewards: ArrayLike,
    rejected_rewards: ArrayLike,
    is_tie: ArrayLike,
    *,
    tie_param: ArrayLike,
) -> jax.Array:
  """Negative log-likelihood of a win or a tie under the Davidson (1970) model.

  Davidson, "On extending the Bradley-Terry model to accommodate ties in paired
  comparison experiments", JASA 1970. With strengths `pi = exp(reward)`, tie
  parameter `nu = tie_param >= 0` and `d = chosen_rewards - rejected_rewards`:

    P(chosen beats rejected) = pi_c / (pi_c + pi_r + nu * sqrt(pi_c * pi_r))
                             = exp(d/2) / (exp(d/2) + exp(-d/2) + nu)
    P(tie)                   = nu / (exp(d/2) + exp(-d/2) + nu)

  and the loss is `-log P(chosen beats rejected)` where `is_tie` is False and
  `-log P(tie)` where it is True. We chose Davidson over Rao-Kupper (1967) because
  `nu = 0` is exactly plain Bradley-Terry. The loss is computed in log space as

    win: softplus(-d) + log1p(nu * r),   tie: softplus(c - log(nu)),
    with c = logaddexp(d/2, -d/2) and r = exp(-c),

  which stays finite for rewards of +-1e4. At `nu = 0` the win rows equal
  `bradley_terry` exactly (value and gradient); ties then have probability 0 and the
  tie rows are `+inf` with zero gradient, so pass `tie_param > 0` when the data
  contains ties. To learn `nu`, pass e.g. `exp(log_nu)`; the gradient with respect to
  `tie_param` is exact and finite for `nu > 0`.

  Args:
    chosen_rewards: float [B]; for a tie, either response may be "chosen" (the
      tie likelihood is symmetric in `d`).
    rejected_rewards: float [B].
    is_tie: bool [B] (or 0/1 numbers), True where the annotator declared a tie.
    tie_param: scalar `nu >= 0`.

  Returns:
    float [B] per-example losses.
  """
  chosen_rewards, rejected_rewards = _pair(chosen_rewards, rejected_rewards)
  is_tie = _checks.as_bool(is_tie, "is_tie")
  _checks.check_same_shape(chosen_rewards=chosen_rewards, is_tie=is_tie)
  nu = _as_float_param(tie_param, "tie_param", chosen_rewards, "chosen_rewards")
  if nu.ndim != 0:
    raise ValueError(f"`tie_param` must be a scalar, got shape {nu.shape}.")
  _checks.check_scalar_range(tie_param, "tie_param", low=0.0)

  logits = chosen_rewards - rejected_rewards
  # c = log(exp(d/2) + exp(-d/2)) >= log 2, so r = exp(-c) lies in (0, 1/2].
  log_cosh_term = jnp.logaddexp(0.5 * logits, -0.5 * logits)
  win_loss = jax.nn.softplus(-logits) + jnp.log1p(nu * jnp.exp(-log_cosh_term))
  # Double `where`: log(0) in the branch that is not taken would still send
  # 0 * inf = NaN into the gradient of the win rows.
  positive = nu > 0
  log_nu = jnp.log(jnp.where(positive, nu, 1.0))
  tie_loss = jnp.where(positive, jax.nn.softplus(log_cosh_term - log_nu), jnp.inf)
  return jnp.where(is_tie, tie_loss, win_loss)


def _crowd_bt_log_terms(logits: jax.Array, reliability: jax.Array) -> tuple[jax.Array, jax.Array]:
  """log(eta * sigmoid(d)) and log((1 - eta) * sigmoid(-d)); -inf at eta = 0 or 1."""
  log_agree = jnp.log(reliability) + jax.nn.log_sigmoid(logits)
  log_flip = jnp.log1p(-reliability) + jax.nn.log_sigmoid(-logits)
  return log_agree, log_flip


# Autodiff through log(eta) at eta = 0 (or log1p(-eta) at eta = 1) gives 0 * inf = NaN,
# and masking it with `where` would silently drop a nonzero term of d loss / d eta.
# The derivatives are written out instead, each as a ratio of probabilities in log space.
@jax.custom_jvp
def _crowd_bt_nll(logits: jax.Array, reliability: jax.Array) -> jax.Array:
  return -jnp.logaddexp(*_crowd_bt_log_terms(logits, reliability))


@_crowd_bt_nll.defjvp
def _crowd_bt_nll_jvp(primals, tangents):
  logits, reliability = primals
  logits_dot, reliability_dot = tangents
  log_agree, log_flip = _crowd_bt_log_terms(logits, reliability)
  log_prob = jnp.logaddexp(log_agree, log_flip)
  # Posterior probabilities that the label agrees with / flips the true preference.
  agree = jnp.exp(log_agree - log_prob)
  flip = jnp.exp(log_flip - log_prob)
  dlogp_dlogits = agree * jax.nn.sigmoid(-logits) - flip * jax.nn.sigmoid(logits)
  # (sigmoid(d) - sigmoid(-d)) / P. At eta = 1 and d below about -88 (float32) the true
  # value overflows; saturating it keeps 0 * derivative = 0 when `reliability` is not
  # being differentiated (custom JVPs receive instantiated zero tangents).
  max_log = jnp.log(jnp.finfo(log_prob.dtype).max) - 1.0
  dlogp_dreliability = (
      jnp.exp(jnp.minimum(jax.nn.log_sigmoid(logits) - log_prob, max_log))
      - jnp.exp(jnp.minimum(jax.nn.log_sigmoid(-logits) - log_prob, max_log))
  )
  tangent = -(dlogp_dlogits * logits_dot + dlogp_dreliability * reliability_dot)
  return -log_prob, tangent


def crowd_bt(
    chosen_rewards: ArrayLike,
    rejected_rewards: ArrayLike,
    reliability: ArrayLike,
) -> jax.Array:
  """Crowd-BT negative log-likelihood of a label from an annotator of known reliability.

  Chen, Bennett, Collins-Thompson & Horvitz, "Pairwise ranking aggregation in a
  crowdsourced setting", WSDM 2013. The annotator reports the true preference with
  probability `eta = reliability` and the reverse otherwise. With
  `d = chosen_rewards - rejected_rewards`:

    loss = -log(eta * sigmoid(d) + (1 - eta) * sigmoid(-d))
         = -logaddexp(log(eta) + log_sigmoid(d), log1p(-eta) + log_sigmoid(-d))

  `eta = 1` is `bradley_terry`, `eta = 0.5` is the constant log 2 (the label carries
  no information) and `eta = 0` is `bradley_terry` with the responses swapped.
  Gradients are written out (a custom JVP) so that they are exact and finite at
  `eta = 0` and `eta = 1` too, including with respect to `reliability` (useful when
  the reliabilities are learned jointly, as in the paper). The one exception is
  mathematical: at `eta = 1` the derivative in `eta` is `exp(-d) - 1`, which exceeds
  the float32 range for `d` below about -88; it saturates at a large finite value.

  Args:
    chosen_rewards: float [B], rewards of the response the annotator preferred.
    rejected_rewards: float [B].
    reliability: floating, a scalar or [B]: the probability that the annotator who
      gave each label reports the true preference, in [0, 1]. Array values cannot
      be checked under `jit`; values outside [0, 1] give NaN.

  Returns:
    float [B] per-example losses.
  """
  chosen_rewards, rejected_rewards = _pair(chosen_rewards, rejected_rewards)
  if isinstance(reliability, numbers.Real):
    _checks.check_scalar_range(
        reliability, "reliability", low=0.0, high=1.0, high_inclusive=True
    )
  reliability = _as_float_param(reliability, "reliability", chosen_rewards, "chosen_rewards")
  logits = chosen_rewards - rejected_rewards
  dtype = jnp.result_type(logits, reliability)
  # Broadcast before the custom JVP so that its tangents all share one shape.
  logits, reliability = jnp.broadcast_arrays(logits.astype(dtype), reliability.astype(dtype))
  return _crowd_bt_nll(logits, reliability)


def plackett_luce(scores: ArrayLike, ranking: ArrayLike, mask: ArrayLike) -> jax.Array:
  """Plackett-Luce negative log-likelihood of a full ranking of K responses.

  Luce (1959); Plackett, "The analysis of permutations", 1975. The listwise
  reward-model loss of Zhu, Jordan & Jiao, "Principled reinforcement learning with
  human feedback from pairwise or K-wise comparisons", 2023 (arXiv 2301.11270).
  With `s_k = scores[ranking[k]]` the score of the response ranked k-th:

    loss = -sum_{k valid} (s_k - logsumexp_{j >= k, j valid} s_j)

  i.e. the best response is picked from all valid ones, the second from the rest,
  and so on. With K = 2 this is `bradley_terry`. Padded ranking positions
  (`mask` False) are ignored entirely, so a prompt with K' < K responses gives the
  same loss as the unpadded [K'] problem; a fully masked row gives 0.

  Args:
    scores: float [B, K], the reward of each response, indexed by response.
    ranking: integer [B, K], response indices from best to worst. Valid positions
      must hold distinct indices in [0, K) (not checked under `jit`); padded
      positions may hold anything.
    mask: bool [B, K] (or 0/1 numbers), True at valid ranking positions.

  Returns:
    float [B] per-example losses.
  """
  scores = _checks.as_float(scores, "scores")
  ranking = jnp.asarray(ranking)
  if not jnp.issubdtype(ranking.dtype, jnp.integer):
    raise ValueError(
        f"`ranking` must have an integer dtype, got {ranking.dtype} with shape {ranking.shape}."
    )
  mask = _checks.as_bool(mask, "mask")
  _checks.check_rank(scores, "scores", 2)
  _checks.check_rank(ranking, "ranking", 2)
  _checks.check_rank(mask, "mask", 2)
  _checks.check_same_shape(scores=scores, ranking=ranking, mask=mask)

  # Padded positions may hold out-of-range indices, which would gather NaN.
  safe_ranking = jnp.where(mask, ranking, 0)
  ranked_scores = jnp.take_along_axis(scores, safe_ranking, axis=-1)
  # A finite stand-in for -inf: exp(fill - valid) is exactly 0, and unlike -inf it
  # keeps the (masked-out) gradients of fully padded suffixes free of inf - inf.
  fill = jnp.finfo(scores.dtype).min
  ranked_scores = jnp.where(mask, ranked_scores, fill)
  suffix_logsumexp = jax.lax.cumlogsumexp(ranked_scores, axis=1, reverse=True)
  neg_log_probs = jnp.where(mask, suffix_logsumexp - ranked_scores, 0.0)
  return jnp.sum(neg_log_probs, axis=-1)


def reward_centering(chosen_rewards: ArrayLike, rejected_rewards: ArrayLike) -> jax.Array:
  """Auxiliary penalty that keeps reward-model outputs centred on zero.

    penalty = (chosen_rewards + rejected_rewards) ** 2

  Eisenstein et al., "Helping or herding? Reward model ensembles mitigate but do not
  eliminate reward hacking", 2023 (arXiv 2312.09244). The Bradley-Terry loss only
  sees reward differences, so the offset is unidentified; this pins it so that
  rewards from different models (e.g. ensemble members) are comparable. The caller
  takes the mean and scales it by a small coefficient (e.g. 0.01) before adding it
  to the preference loss.

  Args:
    chosen_rewards: float [B].
    rejected_rewards: float [B].

  Returns:
    float [B] per-example penalties.
  """
  chosen_rewards, rejected_rewards = _pair(chosen_rewards, rejected_rewards)
  return jnp.square(chosen_rewards + rejected_rewards)
