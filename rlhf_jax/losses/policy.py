"""Online policy optimization: token log-probs, KL penalties, advantages, PPO losses.

Every per-token array is [B, T] (batch, time) with a mask [B, T] that is true on
valid (response) tokens and false on padding.

* `sequence_logprobs`: per-token log pi(y_t | y_<t) from logits, without a
  [B, T, V] log-softmax.
* `masked_sum`, `masked_mean`: reductions over valid entries only.
* `kl_penalty`: per-token KL estimators k1 / k2 / k3 (Schulman, 2020).
* `gae`: generalized advantage estimation as a reverse `lax.scan` (Schulman et al., 2016).
* `whiten`: masked standardization of advantages.
* `aggregate`, `AGGREGATIONS`: how a per-token loss becomes a scalar (token mean,
  sequence mean, sequence sum, constant normalizer).
* `ppo_policy_loss`, `ppo_value_loss`: clipped PPO objectives (Schulman et al., 2017),
  with the dual clip of Ye et al. (2020).
* `grpo_advantages`, `rloo_advantages`: group baselines for outcome rewards.
* `adaptive_kl_init`, `adaptive_kl_update`: the proportional KL-coefficient controller
  of Ziegler et al. (2019).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax._checks import (
    as_bool,
    as_float,
    check_choice,
    check_rank,
    check_same_shape,
    check_scalar_range,
)

__all__ = [
    "AGGREGATIONS",
    "GRPO_SCALES",
    "KL_KINDS",
    "AdaptiveKLState",
    "adaptive_kl_init",
    "adaptive_kl_update",
    "aggregate",
    "gae",
    "grpo_advantages",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rloo_advantages",
    "sequence_logprobs",
    "whiten",
]

AGGREGATIONS = ("token_mean", "sequence_mean", "sequence_sum", "constant_normalizer")

KL_KINDS = ("k1", "k2", "k3")

GRPO_SCALES = ("group", "batch", "none")

# exp(-log_ratio) in k3 and exp(log_ratio) in the PPO ratio overflow float32 beyond
# |log_ratio| ~ 88. Clamping the log-ratio to [-20, 20] keeps values and gradients
# finite (e^20 ~ 4.9e8) and follows verl's `kl_penalty("low_var_kl")` and
# `compute_policy_loss`, which clamp the log-ratio to the same range.
_LOG_RATIO_CLAMP = 20.0

# Added to the variance before the reciprocal square root, as TRL's `masked_whiten`.
_WHITEN_EPS = 1e-8


def _check_mask(mask: Any, name: str, like: jax.Array, like_name: str) -> jax.Array:
  mask = as_bool(mask, name)
  check_same_shape(**{like_name: like, name: mask})
  return mask


def _count(mask: jax.Array, axis: Any = None) -> jax.Array:
  """Number of valid entries, at least 1 so that empty masks divide to 0, not NaN."""
  return jnp.maximum(jnp.sum(mask, axis=axis, dtype=jnp.float32), 1.0)


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt with a zero (not infinite) gradient at 0: tied rewards have zero std."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def sequence_logprobs(
    logits: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
) -> jax.Array:
  """Per-token log-probabilities of `targets` under `logits`, zero on padding.

    logprobs[b, t] = logits[b, t, targets[b, t]] - logsumexp_v logits[b, t, v]

  The gathered logit minus the log-partition function is the log-softmax at the
  target, computed without the [B, T, V] log-softmax tensor: only a [B, T] gather and
  two [B, T] reductions (max, then sum of exp) are produced. `benchmarks/losses.py`
  compares time and memory with `log_softmax` then gather.

  Summing over T, `sequence_logprobs(...).sum(-1)`, gives log pi(y | x) of the whole
  completion, the sequence log-prob DPO-style losses take as `chosen_logps` /
  `rejected_logps`; dividing by `mask.sum(-1)` gives the length-normalized average
  SimPO uses.

  Precision: bfloat16/float16 logits are upcast to float32 inside the log-sum-exp
  (the gather reads the original values, which are exact in float32), and the max is
  subtracted from the target logit before the log-sum term, so the result is as
  accurate as log_softmax-then-gather even for logits of 1e4. Memory: on XLA:CPU
  (jax 0.10, measured in `benchmarks/losses.py`) float32 logits need no [B, T, V]
  temporary, while bfloat16 logits still get one float32 [B, T, V] copy (the backend's
  YNNPACK reduction does not fuse the upcast), as `log_softmax` does.

  Gradient: a custom VJP, d logprob / d logits = onehot(target) - softmax, computed in
  one fused pass over the saved logits and [B, T] log-partition, so autodiff keeps no
  exp(logits - max) [B, T, V] residual (measured on XLA:CPU for float32 logits: no
  [B, T, V] temporary besides the gradient itself); the gradient has the logits'
  dtype. Being a `jax.custom_vjp`, it supports reverse mode (`grad`, `vjp`) but not
  forward mode (`jvp`, `jacfwd`).

  Args:
    logits: [B, T, V] floating, already aligned with `targets` (the logit at position
      t predicts token t; shift by one before calling for causal LMs).
    targets: [B, T] integer token ids in [0, V) on valid positions; padding positions
      may hold any id (e.g. -100), they are never read.
    mask: [B, T] bool (or 0/1), true on tokens whose log-prob is wanted.

  Returns:
    [B, T] float32 (float64 for float64 logits) log-probs, exactly 0 where `mask` is
    false.
  """
  logits = jnp.asarray(logits)
  targets = jnp.asarray(targets)
  check_rank(logits, "logits", 3)
  check_rank(targets, "targets", 2)
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"`targets` must have an integer dtype, got {targets.dtype} with shape {targets.shape}.")
  if logits.shape[:2] != targets.shape:
    raise ValueError(
        f"`logits` [B, T, V] and `targets` [B, T] must agree on [B, T], got `logits` {logits.shape}, "
        f"`targets` {targets.shape}."
    )
  mask = _check_mask(mask, "mask", targets, "targets")
  # Padding ids (e.g. -100) would gather NaN; any in-range id works since the result is masked.
  safe_targets = jnp.where(mask, targets, 0)
  return jnp.where(mask, _target_logprobs(logits, safe_targets), 0.0)


def _target_logprobs_and_lse(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  # as_float validates the dtype; under jit the bf16 -> f32 cast feeds the reductions.
  logits_f = as_float(logits, "logits")
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0].astype(logits_f.dtype)
  # logsumexp split as max + log(sum(exp(x - max))), the max subtracted from the target
  # logit first: (g - m) is exact, whereas g - (m + log s) rounds m + log s at the scale
  # of m (an error of ~1e-3 for logits of 1e4 in float32).
  row_max = jnp.max(logits_f, axis=-1)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # rows of -inf give -inf, not NaN
  log_sum = jnp.log(jnp.sum(jnp.exp(logits_f - row_max[..., None]), axis=-1))
  return (target_logits - row_max) - log_sum, row_max + log_sum


@jax.custom_vjp
def _target_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return _target_logprobs_and_lse(logits, targets)[0]


def _target_logprobs_fwd(logits, targets):
  logprobs, log_partition = _target_logprobs_and_lse(logits, targets)
  return logprobs, (logits, targets, log_partition)


def _target_logprobs_bwd(residuals, cotangent):
  # d logprob / d logits = onehot(target) - softmax. Written by hand so that the backward
  # pass is one fused elementwise pass over the saved logits: autodiff of the forward
  # would keep exp(logits - max) (and the float32 copy of bf16 logits) as [B, T, V]
  # residuals.
  logits, targets, log_partition = residuals
  logits_f = as_float(logits, "logits")
  log_partition = jnp.where(jnp.isfinite(log_partition), log_partition, 0.0)
  softmax = jnp.exp(logits_f - log_partition[..., None])
  vocab_ids = jax.lax.broadcasted_iota(targets.dtype, logits.shape, logits.ndim - 1)
  onehot = (vocab_ids == targets[..., None]).astype(logits_f.dtype)
  grad = cotangent[..., None].astype(logits_f.dtype) * (onehot - softmax)
  return grad.astype(logits.dtype), None


_target_logprobs.defvjp(_target_logprobs_fwd, _target_logprobs_bwd)


def masked_sum(x: jax.Array, mask: jax.Array, axis: Any = -1) -> jax.Array:
  """Sum of `x` over entries where `mask` is true, along `axis` (None: all axes).

  Masked entries are selected away, not multiplied by 0, so NaN/inf padding does not
  leak into the sum.

  Args:
    x: floating array.
    mask: bool (or 0/1) array of the same shape.
    axis: axis or axes to reduce, as in `jnp.sum`.

  Returns:
    The masked sum, float32 (float64 for float64 `x`).
  """
  x = as_float(x, "x")
  mask = _check_mask(mask, "mask", x, "x")
  return jnp.sum(jnp.where(mask, x, 0.0), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis: Any = None) -> jax.Array:
  """Mean of `x` over entries where `mask` is true, along `axis` (None: all axes).

    masked_mean = sum(x * mask) / max(sum(mask), 1)

  An all-false mask gives 0 instead of NaN.

  Args:
    x: floating array.
    mask: bool (or 0/1) array of the same shape.
    axis: axis or axes to reduce, as in `jnp.mean`.

  Returns:
    The masked mean, float32 (float64 for float64 `x`).
  """
  x = as_float(x, "x")
  mask = _check_mask(mask, "mask", x, "x")
  total = jnp.sum(jnp.where(mask, x, 0.0), axis=axis)
  return total / _count(mask, axis).astype(total.dtype)


def kl_penalty(
    logprobs: jax.Array,
    ref_logprobs: jax.Array,
    *,
    kind: str = "k1",
) -> jax.Array:
  """Per-token estimator of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

  With `log_ratio = logprobs - ref_logprobs` (log pi / pi_ref at the sampled token):

    k1 = log_ratio                                  (unbiased, high variance, can be < 0)
    k2 = 0.5 * log_ratio ** 2                       (biased, low variance, >= 0)
    k3 = exp(-log_ratio) - 1 + log_ratio            (unbiased, low variance, >= 0)
       = pi_ref / pi - 1 - log(pi_ref / pi)

  Schulman, 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html.

  Convention: for k3 only, `log_ratio` is clamped to [-20, 20] before the exponential
  so that values and gradients stay finite (exp(1e4) overflows); this is verl's
  `kl_penalty("low_var_kl")` clamp. verl additionally clamps the k3 value to
  [-10, 10]; we do not, so a token far from the reference keeps its gradient.

  The estimate is per token; the caller masks and reduces (e.g. with `masked_mean` or
  `aggregate`), or subtracts `beta * k1` from per-token rewards (Ziegler et al., 2019).

  Args:
    logprobs: [...] log-probs of the sampled tokens under the policy.
    ref_logprobs: same shape, under the reference policy.
    kind: "k1", "k2" or "k3".

  Returns:
    Per-token estimates, same shape, float32 (float64 for float64 inputs).
  """
  logprobs = as_float(logprobs, "logprobs")
  ref_logprobs = as_float(ref_logprobs, "ref_logprobs")
  check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
  check_choice(kind, "kind", KL_KINDS)
  log_ratio = logprobs - ref_logprobs
  if kind == "k1":
    return log_ratio
  if kind == "k2":
    return 0.5 * jnp.square(log_ratio)
  log_ratio = jnp.clip(log_ratio, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
  # expm1 keeps the cancellation near log_ratio = 0 accurate.
  return jnp.expm1(-log_ratio) + log_ratio


def gae(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
  """Generalized advantage estimation over the valid tokens of each sequence.

  Going backwards over the valid tokens t of a sequence, with t' the next valid token
  after t (if any):

    delta_t = r_t + gamma * V_{t'} - V_t          (V after the last valid token is 0)
    A_t     = delta_t + gamma * lam * A_{t'}       (A after the last valid token is 0)
    R_t     = A_t + V_t

  Schulman, Moritz, Levine, Jordan and Abbeel, 2016, "High-Dimensional Continuous
  Control Using Generalized Advantage Estimation", arXiv:1506.02438, Eq. 16.
  Implemented as one reverse `jax.lax.scan` over T.

  Convention for the mask: masked steps are skipped. The next value and advantage are
  carried across them unchanged, so right padding, left padding and interior holes
  (e.g. observation or tool-output tokens in a multi-turn rollout) are all handled, and
  a hole costs no extra discount. This is the convention of verl's
  `compute_gae_advantage_return`. Rewards and values at masked positions are ignored
  (put a sequence's reward on a valid token, usually the last). The episode ends at
  the last valid token (no bootstrap value); advantages and returns are 0 on masked
  positions. Gradients flow through all inputs; callers normally treat the outputs as
  constants (`jax.lax.stop_gradient`).

  Args:
    rewards: [B, T] per-token rewards (e.g. the KL penalty on every token plus the
      reward-model score on the last one).
    values: [B, T] value estimates V(s_t) from the rollout's value model.
    mask: [B, T] bool (or 0/1), true on valid tokens.
    gamma: discount factor in [0, 1].
    lam: GAE lambda in [0, 1]; 1 gives Monte-Carlo returns minus values, 0 gives
      one-step TD errors.

  Returns:
    `(advantages, returns)`, each [B, T] float32 (float64 for float64 inputs), 0 on
    masked positions.
  """
  rewards = as_float(rewards, "rewards")
  values = as_float(values, "values")
  check_rank(rewards, "rewards", 2)
  check_rank(values, "values", 2)
  check_same_shape(rewards=rewards, values=values)
  mask = _check_mask(mask, "mask", rewards, "rewards")
  check_scalar_range(gamma, "gamma", low=0.0, high=1.0, high_inclusive=True)
  check_scalar_range(lam, "lam", low=0.0, high=1.0, high_inclusive=True)
  dtype = jnp.result_type(rewards, values)
  # Padding may hold garbage (even NaN); select it away before any arithmetic.
  rewards = jnp.where(mask, rewards, 0.0).astype(dtype)
  values = jnp.where(mask, values, 0.0).astype(dtype)

  def step(carry, inputs):
    next_value, next_advantage = carry
    reward, value, valid = inputs
    delta = reward + gamma * next_value - value
    advantage = delta + gamma * lam * next_advantage
    carry = (jnp.where(valid, value, next_value), jnp.where(valid, advantage, next_advantage))
    return carry, jnp.where(valid, advantage, 0.0)

  zeros = jnp.zeros(rewards.shape[0], dtype)
  _, advantages = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, mask.T), reverse=True)
  advantages = advantages.T
  returns = jnp.where(mask, advantages + values, 0.0)
  return advantages, returns


def whiten(
    values: jax.Array,
    mask: jax.Array,
    *,
    shift_mean: bool = True,
) -> jax.Array:
  """Standardizes `values` with the mean and variance of its valid entries.

    whitened = (values - mean) / sqrt(var + 1e-8)        (+ mean if not shift_mean)

  where mean and var are taken over the entries where `mask` is true, over the whole
  array (all axes). Convention (TRL's `masked_whiten`, also verl's): the variance is
  the unbiased one, sum((x - mean)^2) / (n - 1), with n the number of valid entries;
  for n <= 1 the divisor is max(n - 1, 1), which gives variance 0 instead of NaN.
  With `shift_mean=False` the mean is added back: only the scale changes (TRL uses
  this for rewards). Unlike TRL, masked positions are set to 0.

  Args:
    values: floating array, usually advantages [B, T].
    mask: bool (or 0/1) array of the same shape.
    shift_mean: whether the output has mean 0 (True) or keeps the original mean.

  Returns:
    Whitened values, same shape, float32 (float64 for float64 inputs), 0 on masked
    positions.
  """
  values = as_float(values, "values")
  mask = _check_mask(mask, "mask", values, "values")
  count = jnp.sum(mask, dtype=values.dtype)
  mean = jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1.0)
  centered = jnp.where(mask, values - mean, 0.0)
  variance = jnp.sum(jnp.square(centered)) / jnp.maximum(count - 1.0, 1.0)
  whitened = centered * jax.lax.rsqrt(variance + _WHITEN_EPS)
  if not shift_mean:
    whitened = whitened + mean
  return jnp.where(mask, whitened, 0.0)


def aggregate(
    per_token: jax.Array,
    mask: jax.Array,
    *,
    aggregation: str,
    constant_normalizer: float | None = None,
) -> jax.Array:
  """Reduces a per-token loss [B, T] to a scalar, counting only valid tokens.

  The choice matters: it decides how much each token and each sequence weighs in the
  gradient, and silently different choices are a common source of mismatched results.

  * "token_mean": sum over all valid tokens / number of valid tokens in the batch.
    Every token weighs the same, so long sequences weigh more in total. PPO as
    implemented in TRL/verl, and DAPO (Yu et al., 2025, arXiv:2503.14476), which
    adopts it so that long reasoning chains are not under-weighted.
  * "sequence_mean": mean over the valid tokens of each sequence, then mean over the
    B sequences. Every sequence weighs the same, so a token of a short sequence weighs
    more than one of a long sequence: with a negative advantage, long wrong answers are
    penalized less per token (length bias). Original GRPO (Shao et al., 2024,
    arXiv:2402.03300, Eq. 3).
  * "sequence_sum": sum over the valid tokens of each sequence, then mean over the B
    sequences: the REINFORCE objective on the sequence log-prob; its scale grows with
    sequence length.
  * "constant_normalizer": sum over all valid tokens / `constant_normalizer`, a fixed
    number independent of the batch's lengths (e.g. B * max_completion_length). Each
    token weighs the same and the normalizer does not depend on how long the sampled
    completions are, which removes the length bias of "sequence_mean" without
    "token_mean"'s batch-dependent scale. Dr. GRPO (Liu et al., 2025,
    arXiv:2503.20783); TRL's `loss_type="dr_grpo"` uses B * max_completion_length.

  Sequences (or batches) with no valid token contribute 0, never NaN (counts are
  floored at 1). "sequence_mean" and "sequence_sum" average over all B rows, including
  empty ones, as TRL and verl do.

  Args:
    per_token: [B, T] per-token loss.
    mask: [B, T] bool (or 0/1), true on valid tokens.
    aggregation: one of `AGGREGATIONS`.
    constant_normalizer: the positive divisor, required for "constant_normalizer" and
      ignored otherwise.

  Returns:
    A scalar, float32 (float64 for float64 inputs).
  """
  per_token = as_float(per_token, "per_token")
  check_rank(per_token, "per_token", 2)
  mask = _check_mask(mask, "mask", per_token, "per_token")
  check_choice(aggregation, "aggregation", AGGREGATIONS)
  masked = jnp.where(mask, per_token, 0.0)
  if aggregation == "token_mean":
    return jnp.sum(masked) / _count(mask).astype(masked.dtype)
  if aggregation == "sequence_mean":
    return jnp.mean(jnp.sum(masked, axis=-1) / _count(mask, -1).astype(masked.dtype))
  if aggregation == "sequence_sum":
    return jnp.mean(jnp.sum(masked, axis=-1))
  if constant_normalizer is None:
    raise ValueError(
        "`constant_normalizer` is required when `aggregation` is 'constant_normalizer' "
        "(e.g. batch size * maximum completion length)."
    )
  check_scalar_range(constant_normalizer, "constant_normalizer", low=0.0, low_inclusive=False)
  return jnp.sum(masked) / constant_normalizer


def _check_per_token(**arrays: Any) -> dict[str, jax.Array]:
  """as_float + rank 2 + same shape for named [B, T] arrays."""
  checked = {name: as_float(x, name) for name, x in arrays.items()}
  for name, x in checked.items():
    check_rank(x, name, 2)
  check_same_shape(**checked)
  return checked


def ppo_policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token_mean",
    constant_normalizer: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO clipped surrogate policy loss, with optional dual clip, aggregated to a scalar.

  With ratio = exp(logprobs - old_logprobs) and advantage A per token:

    loss_t = max(-A * ratio, -A * clip(ratio, 1 - clip_eps, 1 + clip_eps))

  Schulman, Wolski, Dhariwal, Radford and Klimov, 2017, "Proximal Policy Optimization
  Algorithms", arXiv:1707.06347, Eq. 7 (negated, to be minimized). With `dual_clip`
  c > 1, tokens with A < 0 are further capped:

    loss_t = min(loss_t, -c * A)                   (A < 0 only)

  so a huge ratio on a bad token cannot produce an unbounded loss. Ye et al., 2020,
  "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning",
  arXiv:1912.09729, Eq. 5.

  Conventions: the log-ratio is clamped to [-20, 20] before the exponential (verl's
  `compute_policy_loss`) so that values and gradients stay finite. Metrics (under
  `stop_gradient`, averaged over valid tokens):
    * "clip_fraction": share of tokens where the clipped term is strictly larger than
      the unclipped one, i.e. clipping removed the gradient (verl's `pg_clipfrac`).
    * "approx_kl": the k3 estimator of KL(pi_old || pi) from tokens sampled by pi_old,
      mean of (ratio - 1) - log(ratio) (Schulman, 2020; CleanRL's `approx_kl`); >= 0.
    * "dual_clip_fraction" (only when `dual_clip` is set): share of tokens where the
      dual clip was active.
  `old_logprobs` and `advantages` are used as given; pass constants (they normally
  come from the rollout, under `stop_gradient`).

  Args:
    logprobs: [B, T] log-probs of the sampled tokens under the current policy.
    old_logprobs: [B, T] log-probs under the policy that sampled them.
    advantages: [B, T] per-token advantages (broadcast sequence advantages to [B, T]).
    mask: [B, T] bool (or 0/1), true on valid tokens.
    clip_eps: PPO clip range, in (0, 1).
    dual_clip: None, or the dual-clip constant c > 1 (3.0 in verl and the paper).
    aggregation: one of `AGGREGATIONS`, see `aggregate`.
    constant_normalizer: divisor for aggregation="constant_normalizer" (required then).

  Returns:
    `(loss, metrics)`: a scalar float32 loss and a dict of scalar metrics.
  """
  arrays = _check_per_token(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
  logprobs, old_logprobs, advantages = arrays["logprobs"], arrays["old_logprobs"], arrays["advantages"]
  mask = _check_mask(mask, "mask", logprobs, "logprobs")
  check_scalar_range(clip_eps, "clip_eps", low=0.0, high=1.0, low_inclusive=False)
  if dual_clip is not None:
    check_scalar_range(dual_clip, "dual_clip", low=1.0, low_inclusive=False)
  check_choice(aggregation, "aggregation", AGGREGATIONS)
  if aggregation == "constant_normalizer" and constant_normalizer is None:
    raise ValueError("`constant_normalizer` is required when `aggregation` is 'constant_normalizer'.")

  log_ratio = jnp.clip(logprobs - old_logprobs, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  per_token = jnp.maximum(unclipped, clipped)
  metrics = {"clip_fraction": masked_mean((clipped > unclipped).astype(per_token.dtype), mask)}
  if dual_clip is not None:
    cap = -dual_clip * advantages
    dual_active = (advantages < 0) & (per_token > cap)
    per_token = jnp.where(advantages < 0, jnp.minimum(per_token, cap), per_token)
    metrics["dual_clip_fraction"] = masked_mean(dual_active.astype(per_token.dtype), mask)
  metrics["approx_kl"] = masked_mean(jnp.expm1(log_ratio) - log_ratio, mask)
  metrics = jax.tree_util.tree_map(jax.lax.stop_gradient, metrics)
  loss = aggregate(per_token, mask, aggregation=aggregation, constant_normalizer=constant_normalizer)
  return loss, metrics


def ppo_value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float = 0.2,
    aggregation: str = "token_mean",
    constant_normalizer: float | None = None,
) -> jax.Array:
  """PPO clipped value loss, aggregated to a scalar.

    v_clipped = clip(values, old_values - clip_eps, old_values + clip_eps)
    loss_t    = 0.5 * max((values - returns)^2, (v_clipped - returns)^2)

  The value-clipping of the PPO reference implementation (OpenAI baselines ppo2; see
  Engstrom et al., 2020, arXiv:2005.12729, Sec. 3), as in TRL and verl.

  Args:
    values: [B, T] current value predictions.
    old_values: [B, T] value predictions at rollout time.
    returns: [B, T] return targets (e.g. from `gae`).
    mask: [B, T] bool (or 0/1), true on valid tokens.
    clip_eps: value clip range, >= 0 (in the units of the values).
    aggregation: one of `AGGREGATIONS`, see `aggregate`.
    constant_normalizer: divisor for aggregation="constant_normalizer" (required then).

  Returns:
    A scalar float32 loss.
  """
  arrays = _check_per_token(values=values, old_values=old_values, returns=returns)
  values, old_values, returns = arrays["values"], arrays["old_values"], arrays["returns"]
  mask = _check_mask(mask, "mask", values, "values")
  check_scalar_range(clip_eps, "clip_eps", low=0.0)
  check_choice(aggregation, "aggregation", AGGREGATIONS)
  if aggregation == "constant_normalizer" and constant_normalizer is None:
    raise ValueError("`constant_normalizer` is required when `aggregation` is 'constant_normalizer'.")
  values_clipped = jnp.clip(values, old_values - clip_eps, old_values + clip_eps)
  per_token = 0.5 * jnp.maximum(jnp.square(values - returns), jnp.square(values_clipped - returns))
  return aggregate(per_token, mask, aggregation=aggregation, constant_normalizer=constant_normalizer)


def _check_group_rewards(rewards: Any, group_size: Any, min_group_size: int) -> jax.Array:
  rewards = as_float(rewards, "rewards")
  check_rank(rewards, "rewards", 1)
  if not isinstance(group_size, numbers.Integral) or isinstance(group_size, bool) or group_size < min_group_size:
    raise ValueError(f"`group_size` must be an int >= {min_group_size}, got {group_size!r}.")
  if rewards.shape[0] % group_size:
    raise ValueError(
        f"`rewards` length {rewards.shape[0]} must be a multiple of `group_size` {group_size} "
        "(consecutive groups of completions of the same prompt)."
    )
  return rewards


def grpo_advantages(
    rewards: jax.Array,
    *,
    group_size: int,
    scale: str = "group",
    eps: float = 1e-4,
) -> jax.Array:
  """Group-relative advantages of GRPO: each reward minus its group's mean, scaled.

    A_i = (r_i - mean_group(r)) / (std + eps)

  with std the group's standard deviation for scale="group" (Shao et al., 2024,
  "DeepSeekMath", arXiv:2402.03300, Sec. 4.1.2), the whole batch's standard deviation
  for scale="batch" (the group mean is still subtracted; TRL's
  `scale_rewards="batch"`), and no division at all for scale="none" (Dr. GRPO, Liu et
  al., 2025, arXiv:2503.20783, which shows the std division biases towards
  too-easy/too-hard prompts).

  Convention (TRL's `GRPOTrainer`): std is the unbiased sample standard deviation
  (ddof=1, torch's default `.std()`), and eps=1e-4 is added to the std. A group of
  size 1 (or a batch of 1 for "batch") has std 0, as in recent TRL. A group whose
  rewards are all equal gets advantage 0.

  Args:
    rewards: [B] scalar rewards, B = n_prompts * group_size, with the group_size
      completions of each prompt consecutive.
    group_size: completions per prompt, a Python int >= 1 dividing B.
    scale: "group", "batch" or "none".
    eps: added to the std, >= 0.

  Returns:
    [B] advantages, float32 (float64 for float64 rewards); broadcast to [B, T] with
    `advantages[:, None] * mask` for per-token losses.
  """
  rewards = _check_group_rewards(rewards, group_size, 1)
  group_size = int(group_size)
  check_choice(scale, "scale", GRPO_SCALES)
  check_scalar_range(eps, "eps", low=0.0)
  grouped = rewards.reshape(-1, group_size)
  # Shifted by the group's first reward before the mean: a group of equal rewards then
  # centres to exact zeros (a float32 mean of 6554.17 six times is off by an ulp, which
  # the division by std + eps would blow up to advantages of order one).
  shifted = grouped - grouped[:, :1]
  centered = shifted - jnp.mean(shifted, axis=1, keepdims=True)
  advantages = centered.reshape(-1)
  if scale == "none":
    return advantages
  if scale == "group":
    if group_size == 1:
      return advantages  # zeros: a lone completion has no baseline to beat
    variance = jnp.sum(jnp.square(centered), axis=1) / (group_size - 1)
    std = jnp.repeat(_safe_sqrt(variance), group_size)
  else:
    n = rewards.shape[0]
    if n == 1:
      return advantages
    variance = jnp.sum(jnp.square(rewards - jnp.mean(rewards))) / (n - 1)
    std = _safe_sqrt(variance)
  return advantages / (std + eps)


def rloo_advantages(rewards: jax.Array, *, group_size: int) -> jax.Array:
  """REINFORCE leave-one-out advantages: each reward minus the mean of the others.

    A_i = r_i - mean_{j != i} r_j = group_size / (group_size - 1) * (r_i - mean_group(r))

  Kool, van Hoof and Welling, 2019, "Buy 4 REINFORCE Samples, Get a Baseline for
  Free!"; Ahmadian et al., 2024, "Back to Basics: Revisiting REINFORCE Style
  Optimization for Learning from Human Feedback in LLMs", arXiv:2402.14740, Eq. 5.
  The baseline of sample i does not depend on r_i, so the estimator stays unbiased.

  Args:
    rewards: [B] scalar rewards, B = n_prompts * group_size, with the group_size
      completions of each prompt consecutive.
    group_size: completions per prompt, a Python int >= 2 dividing B.

  Returns:
    [B] advantages, float32 (float64 for float64 rewards).
  """
  rewards = _check_group_rewards(rewards, group_size, 2)
  group_size = int(group_size)
  grouped = rewards.reshape(-1, group_size)
  centered = grouped - jnp.mean(grouped, axis=1, keepdims=True)
  return (centered * (group_size / (group_size - 1))).reshape(-1)


class AdaptiveKLState(NamedTuple):
  """State of the adaptive KL controller: the current KL coefficient (scalar array)."""

  coef: jax.Array


def adaptive_kl_init(init_coef: float) -> AdaptiveKLState:
  """Initial state of the adaptive KL controller of Ziegler et al. (2019).

  Args:
    init_coef: initial KL coefficient beta, >= 0 (0.2 in the paper, 0.05 in TRL).

  Returns:
    `AdaptiveKLState(coef=float32 scalar)`.
  """
  check_scalar_range(init_coef, "init_coef", low=0.0)
  return AdaptiveKLState(coef=jnp.asarray(init_coef, dtype=jnp.float32))


def adaptive_kl_update(
    state: AdaptiveKLState,
    current_kl: jax.Array,
    n_steps: jax.Array,
    *,
    target: float,
    horizon: float,
) -> AdaptiveKLState:
  """One step of the proportional KL-coefficient controller.

    error = clip(current_kl / target - 1, -0.2, 0.2)
    coef  = coef * (1 + error * n_steps / horizon)

  Ziegler et al., 2019, "Fine-Tuning Language Models from Human Preferences",
  arXiv:1909.08593, Sec. 2.2 (as in TRL's and verl's `AdaptiveKLController`). The KL
  coefficient grows when the measured KL is above target and shrinks below it, by at
  most 20% * n_steps / horizon per update. Pure and jit-able; `current_kl` and
  `n_steps` may be traced.

  Args:
    state: the current `AdaptiveKLState`.
    current_kl: scalar measured KL (e.g. mean sequence KL of the last batch).
    n_steps: scalar number of samples (or steps) since the last update.
    target: target KL, > 0 (6.0 in the paper).
    horizon: horizon in the same units as `n_steps`, > 0 (10000 in the paper).

  Returns:
    The new `AdaptiveKLState`.
  """
  current_kl = as_float(current_kl, "current_kl")
  check_rank(current_kl, "current_kl", 0)
  n_steps = jnp.asarray(n_steps)
  check_rank(n_steps, "n_steps", 0)
  check_scalar_range(target, "target", low=0.0, low_inclusive=False)
  check_scalar_range(horizon, "horizon", low=0.0, low_inclusive=False)
  coef = as_float(state.coef, "state.coef")
  error = jnp.clip(current_kl / target - 1.0, -0.2, 0.2)
  return AdaptiveKLState(coef=coef * (1.0 + error * n_steps / horizon))
