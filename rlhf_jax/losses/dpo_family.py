"""Direct Preference Optimization and its pairwise relatives, one small function each.

Every variant is a pure function that returns per-example losses [B]. Most take the
chosen and rejected log-ratios `c = log pi(y_c|x) - log pi_ref(y_c|x)` and
`r = log pi(y_r|x) - log pi_ref(y_r|x)` of summed completion log-probs; `aot_loss`
takes the four log-probs (it sorts policy and reference margins separately), and
`ipo_loss` / `dpo_sigmoid_norm_loss` also take completion lengths.

`dpo(..., variant=name)` is the entry point the trainer uses: it checks the four summed
log-probs, looks the variant function up in `DPO_VARIANT_LOSSES` by name, hands it the
inputs its signature names, and returns the losses with the implicit rewards
`beta * (policy - reference)`. A variant function's signature is the one home of its
defaults; `dpo`'s keyword defaults are read from there.

Conventions follow Hugging Face TRL's `DPOTrainer` (trl/trainer/dpo_trainer.py), the
most used public implementation.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlhf_jax import _checks
from rlhf_jax.losses.logistic import smoothed_logistic_loss
from rlhf_jax.registry import Registry

__all__ = [
    "DPO_VARIANTS",
    "DPO_VARIANT_LOSSES",
    "aot_loss",
    "aot_unpaired_loss",
    "apo_down_loss",
    "apo_zero_loss",
    "bco_pair_loss",
    "cdpo_loss",
    "discopop_loss",
    "dpo",
    "dpo_robust_loss",
    "dpo_sigmoid_loss",
    "dpo_sigmoid_norm_loss",
    "exo_pair_loss",
    "hinge_loss",
    "ipo_loss",
    "nca_pair_loss",
    "sppo_hard_loss",
]


# ---------------------------------------------------------------------------------------
# Argument checks shared by the variants.


def _logratio_pair(chosen_logratios: Any, rejected_logratios: Any) -> tuple[jax.Array, jax.Array]:
  """The two log-ratio arrays as float, rank 1 and of one shape."""
  chosen = _checks.as_float(chosen_logratios, "chosen_logratios")
  rejected = _checks.as_float(rejected_logratios, "rejected_logratios")
  _checks.check_rank(chosen, "chosen_logratios", 1)
  _checks.check_rank(rejected, "rejected_logratios", 1)
  _checks.check_same_shape(chosen_logratios=chosen, rejected_logratios=rejected)
  return chosen, rejected


def _check_beta(beta: Any) -> None:
  _checks.check_scalar_range(beta, "beta", low=0.0, low_inclusive=False)


def _check_label_smoothing(label_smoothing: Any) -> None:
  _checks.check_scalar_range(label_smoothing, "label_smoothing", low=0.0, high=0.5)


def _as_lengths(x: Any, name: str) -> jax.Array:
  """Returns completion lengths as floats clamped to at least one token.

  Integer and floating lengths are accepted. Clamping at one (as TRL does) keeps an
  empty completion from dividing by zero; its summed log-ratio is then zero anyway.
  """
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_ or not jnp.issubdtype(x.dtype, jnp.number):
    raise ValueError(f"`{name}` must have a numeric dtype, got {x.dtype} with shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype in (jnp.bfloat16, jnp.float16):
    x = x.astype(jnp.float32)
  return jnp.maximum(x, 1.0)


def _length_pair(
    chosen_lengths: Any, rejected_lengths: Any, like: jax.Array, like_name: str
) -> tuple[jax.Array, jax.Array]:
  """Both lengths checked (numeric, rank 1, shaped like `like`) and clamped to >= 1."""
  chosen = _as_lengths(chosen_lengths, "chosen_lengths")
  rejected = _as_lengths(rejected_lengths, "rejected_lengths")
  _checks.check_rank(chosen, "chosen_lengths", 1)
  _checks.check_rank(rejected, "rejected_lengths", 1)
  _checks.check_same_shape(**{like_name: like}, chosen_lengths=chosen, rejected_lengths=rejected)
  return chosen, rejected


# ---------------------------------------------------------------------------------------
# The variants. Notation: c, r the chosen / rejected log-ratios, z = beta * (c - r),
# ls = log_sigmoid, eps = label_smoothing. Each returns [B] float32 losses (float64 for
# float64 inputs; bfloat16 and float16 inputs are computed in float32).


def dpo_sigmoid_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> jax.Array:
  """DPO's logistic loss, optionally label-smoothed (`dpo(variant="sigmoid")`).

    loss = -(1 - eps) ls(z) - eps ls(-z),   z = beta (c - r)

  Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is
  Secretly a Reward Model", arXiv:2305.18290, Eq. 7; `eps > 0` is conservative DPO
  (see `cdpo_loss`). `eps = 0` is plain DPO.

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.
    label_smoothing: assumed label-flip probability `eps`, in [0, 0.5).

  Returns:
    [B] per-example losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  _check_label_smoothing(label_smoothing)
  # A difference of log-ratios (not of policy and reference margins), so a tie between
  # policy and reference gives exactly z = 0.
  return smoothed_logistic_loss(beta * (chosen - rejected), label_smoothing)


def cdpo_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> jax.Array:
  """Conservative DPO: the label-smoothed DPO loss (`dpo(variant="cdpo")`).

    loss = -(1 - eps) ls(z) - eps ls(-z),   z = beta (c - r)

  Mitchell, 2023, "A note on DPO with noisy preferences & relationship to IPO"
  (no arXiv id; the eps-smoothed target of conservative DPO). The same numbers as
  `dpo_sigmoid_loss`: an explicit name for it with `eps > 0`. At `eps = 0` (the
  default, kept equal to `dpo`'s) it is plain DPO.

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.
    label_smoothing: assumed label-flip probability `eps`, in [0, 0.5).

  Returns:
    [B] per-example losses.
  """
  return dpo_sigmoid_loss(
      chosen_logratios, rejected_logratios, beta=beta, label_smoothing=label_smoothing)


def dpo_robust_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> jax.Array:
  """Robust DPO, unbiased under labels flipped with probability eps (`variant="robust"`).

    loss = (-(1 - eps) ls(z) + eps ls(-z)) / (1 - 2 eps),   z = beta (c - r)

  Its expectation over a flip with probability `eps` is the clean DPO loss. Chowdhury,
  Kini and Natarajan, 2024, "Provably Robust DPO: Aligning Language Models with Noisy
  Feedback", arXiv:2403.00409.

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.
    label_smoothing: label-flip rate `eps`, in [0, 0.5).

  Returns:
    [B] per-example losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  _check_label_smoothing(label_smoothing)
  logits = beta * (chosen - rejected)
  return ((-(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
           + label_smoothing * jax.nn.log_sigmoid(-logits))
          / (1.0 - 2.0 * label_smoothing))


def ipo_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
) -> jax.Array:
  """Identity preference optimization: a squared loss on the log-ratio difference.

    loss = (d - 1 / (2 beta))^2,   d = c - r

  Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", arXiv:2310.12036, Eq. 17 (`beta` is their tau). When both lengths are
  given, each log-ratio is first divided by its completion length (per-token averages,
  `d = c / chosen_lengths - r / rejected_lengths`), as TRL does for IPO; lengths are
  clamped to at least one token.

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: regularisation strength, > 0; the target difference is `1 / (2 beta)`.
    chosen_lengths: optional [B] number of tokens of the chosen completions.
    rejected_lengths: optional [B] same for the rejected ones; both or neither.

  Returns:
    [B] per-example losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  given = {"chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
  missing = [name for name, x in given.items() if x is None]
  if len(missing) == 1:
    raise ValueError(
        "IPO (variant 'ipo') length-normalises only when both `chosen_lengths` and "
        f"`rejected_lengths` are given; missing `{missing[0]}`.")
  if missing:
    logratio_diff = chosen - rejected
  else:
    chosen_len, rejected_len = _length_pair(
        chosen_lengths, rejected_lengths, chosen, "chosen_logratios")
    logratio_diff = chosen / chosen_len - rejected / rejected_len
  return (logratio_diff - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
) -> jax.Array:
  """SLiC's hinge loss on the scaled log-ratio difference (`dpo(variant="hinge")`).

    loss = relu(1 - z),   z = beta (c - r)

  Zhao et al., 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
  arXiv:2305.10425, on log-ratios to the reference as TRL writes it (`beta` is the
  inverse of SLiC's margin).

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: scale of the difference, > 0.

  Returns:
    [B] per-example losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  return jax.nn.relu(1.0 - beta * (chosen - rejected))


def exo_pair_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
    epsilon: float = 1e-3,
) -> jax.Array:
  """EXO on pairs: reverse KL from the model's preference to a smoothed target.

    loss = sigmoid(z) (ls(z) - log(1 - e)) + sigmoid(-z) (ls(-z) - log e),
    z = beta (c - r), e = epsilon

  the KL divergence from `(sigmoid(z), sigmoid(-z))` to the target `(1 - e, e)`. Ji et
  al., 2024, "Towards Efficient Exact Optimization of Language Model Alignment",
  arXiv:2402.00856, Eq. 16 with K = 2. The target needs `e > 0` for its log; the
  default `1e-3` is TRL's fallback (`dpo` passes `label_smoothing` instead when that is
  positive, as TRL does).

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.
    epsilon: target smoothing `e`, in (0, 1).

  Returns:
    [B] per-example losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  _checks.check_scalar_range(epsilon, "epsilon", low=0.0, low_inclusive=False, high=1.0)
  logits = beta * (chosen - rejected)
  epsilon = jnp.asarray(epsilon).astype(logits.dtype)
  log_q_chosen = jax.nn.log_sigmoid(logits)
  log_q_rejected = jax.nn.log_sigmoid(-logits)
  # sigmoid = exp(log_sigmoid) keeps the 0 * (-large) products exactly zero.
  return (jnp.exp(log_q_chosen) * (log_q_chosen - jnp.log1p(-epsilon))
          + jnp.exp(log_q_rejected) * (log_q_rejected - jnp.log(epsilon)))


def nca_pair_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
) -> jax.Array:
  """Noise contrastive alignment on pairs: absolute, not relative, log-ratios.

    loss = -ls(beta c) - ls(-beta c) / 2 - ls(-beta r) / 2

  Chen et al., 2024, "Noise Contrastive Alignment of Language Models with Explicit
  Rewards", arXiv:2402.05369, with K = 2 responses (TRL's `nca_pair`). It scores each
  log-ratio on its own rather than their difference, which the paper shows keeps the
  chosen likelihood from falling as DPO's can.

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.

  Returns:
    [B] per-example losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  chosen_scaled = beta * chosen
  rejected_scaled = beta * rejected
  return (-jax.nn.log_sigmoid(chosen_scaled)
          - 0.5 * jax.nn.log_sigmoid(-chosen_scaled)
          - 0.5 * jax.nn.log_sigmoid(-rejected_scaled))


def bco_pair_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
    delta: float = 0.0,
) -> jax.Array:
  """Binary classifier optimization on pairs: chosen as class 1, rejected as class 0.

    loss = -ls(beta c - delta) - ls(-(beta r - delta))

  Jung et al., 2024, "Binary Classifier Optimization for Large Language Model
  Alignment", arXiv:2404.04656. TRL shifts the rewards by a running mean
  `delta` of past batch rewards, which is state; this pure function takes that shift
  as an argument (on the `beta`-scaled reward scale).

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.
    delta: reward shift, any real number.

  Returns:
    [B] per-example losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  _checks.check_scalar_range(delta, "delta")
  return (-jax.nn.log_sigmoid(beta * chosen - delta)
          - jax.nn.log_sigmoid(-(beta * rejected - delta)))


def sppo_hard_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
) -> jax.Array:
  """Self-play preference optimization with hard labels: each log-ratio to its target.

    loss = (c - 1 / (2 beta))^2 + (r + 1 / (2 beta))^2

  Wu et al., 2024, "Self-Play Preference Optimization for Language Model Alignment",
  arXiv:2405.00675, Eq. 4.7 with win probabilities 1 and 0 (TRL's `sppo_hard`).

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature, > 0; the targets are `+-1 / (2 beta)`.

  Returns:
    [B] per-example losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  half_margin = 0.5 / beta
  return (chosen - half_margin) ** 2 + (rejected + half_margin) ** 2


def aot_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> jax.Array:
  """Alignment via optimal transport, paired: DPO's loss on sorted margins of the batch.

    loss_i = -(1 - eps) ls(z_i) - eps ls(-z_i),
    z = beta (sort(policy_chosen - policy_rejected) - sort(ref_chosen - ref_rejected))

  Melnyk et al., 2024, "Distributional Preference Alignment of LLMs via Optimal
  Transport", arXiv:2406.05882: first-order stochastic dominance of the policy's
  margins over the reference's, through their quantiles. Entry `i` belongs to the
  `i`-th quantile, not to pair `i`: only the batch mean is meaningful, and the result
  depends on the whole batch. A batch of one pair is plain (smoothed) DPO.

  Args:
    policy_chosen_logps: [B] summed log-probs of the chosen completions, policy.
    policy_rejected_logps: [B] same for the rejected completions.
    ref_chosen_logps: [B] summed log-probs of the chosen completions, reference.
    ref_rejected_logps: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.
    label_smoothing: assumed label-flip probability `eps`, in [0, 0.5).

  Returns:
    [B] per-quantile losses, in increasing order of the margins.
  """
  logps = {
      "policy_chosen_logps": policy_chosen_logps,
      "policy_rejected_logps": policy_rejected_logps,
      "ref_chosen_logps": ref_chosen_logps,
      "ref_rejected_logps": ref_rejected_logps,
  }
  logps = {name: _checks.as_float(x, name) for name, x in logps.items()}
  for name, x in logps.items():
    _checks.check_rank(x, name, 1)
  _checks.check_same_shape(**logps)
  _check_beta(beta)
  _check_label_smoothing(label_smoothing)
  policy_margins = jnp.sort(logps["policy_chosen_logps"] - logps["policy_rejected_logps"])
  ref_margins = jnp.sort(logps["ref_chosen_logps"] - logps["ref_rejected_logps"])
  return smoothed_logistic_loss(beta * (policy_margins - ref_margins), label_smoothing)


def aot_unpaired_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> jax.Array:
  """Alignment via optimal transport, unpaired: DPO's loss on sorted log-ratios.

    loss_i = -(1 - eps) ls(z_i) - eps ls(-z_i),   z = beta (sort(c) - sort(r))

  Melnyk et al., 2024, arXiv:2406.05882, unpaired form: the chosen log-ratios should
  dominate the rejected ones quantile by quantile. As in `aot_loss`, entry `i` belongs
  to the `i`-th quantile and only the batch mean is meaningful.

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.
    label_smoothing: assumed label-flip probability `eps`, in [0, 0.5).

  Returns:
    [B] per-quantile losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  _check_label_smoothing(label_smoothing)
  quantile_diff = jnp.sort(chosen) - jnp.sort(rejected)
  return smoothed_logistic_loss(beta * quantile_diff, label_smoothing)


def apo_zero_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
) -> jax.Array:
  """Anchored preference optimization, zero anchor: raise chosen, lower rejected.

    loss = 1 - sigmoid(beta c) + sigmoid(beta r)

  D'Oosterlinck et al., 2024, "Anchored Preference Optimization and Contrastive
  Revisions", arXiv:2408.06266, Eq. 7: for data whose chosen answers are better than
  the model's own.

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.

  Returns:
    [B] per-example losses, in [0, 2].
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  # 1 - sigmoid(x) written as sigmoid(-x) to avoid cancellation near 1.
  return jax.nn.sigmoid(-beta * chosen) + jax.nn.sigmoid(beta * rejected)


def apo_down_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
) -> jax.Array:
  """Anchored preference optimization, down anchor: lower chosen, lower rejected more.

    loss = sigmoid(beta c) + 1 - sigmoid(z),   z = beta (c - r)

  D'Oosterlinck et al., 2024, arXiv:2408.06266, Eq. 8: for data whose chosen answers
  are worse than the model's own.

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.

  Returns:
    [B] per-example losses, in [0, 2].
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  return jax.nn.sigmoid(beta * chosen) + jax.nn.sigmoid(-(beta * (chosen - rejected)))


def discopop_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    *,
    beta: float = 0.1,
    tau: float = 0.05,
) -> jax.Array:
  """DiscoPOP: a log-ratio modulated mix of the logistic and exponential losses.

    loss = -ls(z) (1 - m) + exp(-z) m,   m = sigmoid(z / tau),   z = beta (c - r)

  Lu et al., 2024, "Discovering Preference Optimization Algorithms with and for Large
  Language Models", arXiv:2406.08414, Eq. 5; the paper uses tau = 0.05.

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.
    tau: temperature of the modulation, in (0, 1]. Above 1 the exponential part grows
      without bound for very negative `z`.

  Returns:
    [B] per-example losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  _checks.check_scalar_range(tau, "tau", low=0.0, low_inclusive=False, high=1.0, high_inclusive=True)
  logits = beta * (chosen - rejected)
  # exp(-z) * sigmoid(z / tau) = exp(-z - softplus(-z / tau)): one exponent, so the
  # product never forms inf * 0 for very negative z (tau <= 1 keeps it bounded).
  exp_part = jnp.exp(-logits - jax.nn.softplus(-logits / tau))
  logistic_part = -jax.nn.log_sigmoid(logits) * jax.nn.sigmoid(-logits / tau)
  return logistic_part + exp_part


def dpo_sigmoid_norm_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    *,
    beta: float = 0.1,
) -> jax.Array:
  """Length-normalised DPO: the logistic loss of per-token-average log-ratios.

    loss = -ls(beta (c / chosen_lengths - r / rejected_lengths))

  Length normalisation in the spirit of SimPO (Meng et al., 2024, arXiv:2405.14734),
  but keeping the reference model, as TRL's `sigmoid_norm`. Lengths are clamped to at
  least one token; repeating every completion k times leaves the loss unchanged.

  Args:
    chosen_logratios: [B] policy minus reference log-probs of the chosen completions.
    rejected_logratios: [B] same for the rejected completions.
    chosen_lengths: [B] number of tokens of the chosen completions (int or float).
    rejected_lengths: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.

  Returns:
    [B] per-example losses.
  """
  chosen, rejected = _logratio_pair(chosen_logratios, rejected_logratios)
  _check_beta(beta)
  missing = [name for name, x in (("chosen_lengths", chosen_lengths),
                                  ("rejected_lengths", rejected_lengths)) if x is None]
  if missing:
    raise ValueError(
        "length-normalised DPO (variant 'sigmoid_norm') requires `chosen_lengths` and "
        f"`rejected_lengths`; missing {', '.join(f'`{name}`' for name in missing)}.")
  chosen_len, rejected_len = _length_pair(
      chosen_lengths, rejected_lengths, chosen, "chosen_logratios")
  return -jax.nn.log_sigmoid(beta * (chosen / chosen_len - rejected / rejected_len))


# ---------------------------------------------------------------------------------------
# `dpo`: one entry point over the variants.

# Variant name -> loss function, in the order of the README's table. `DPO_VARIANTS`
# keeps this order; `DPO_VARIANT_LOSSES` looks the functions up by name.
_VARIANTS_IN_ORDER: dict[str, Callable[..., jax.Array]] = {
    "sigmoid": dpo_sigmoid_loss,
    "cdpo": cdpo_loss,
    "robust": dpo_robust_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "exo_pair": exo_pair_loss,
    "nca_pair": nca_pair_loss,
    "bco_pair": bco_pair_loss,
    "sppo_hard": sppo_hard_loss,
    "aot": aot_loss,
    "aot_unpaired": aot_unpaired_loss,
    "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss,
    "discopop": discopop_loss,
    "sigmoid_norm": dpo_sigmoid_norm_loss,
}

DPO_VARIANT_LOSSES: Registry[Callable[..., jax.Array]] = Registry("DPO variant")
for _name, _loss in _VARIANTS_IN_ORDER.items():
  DPO_VARIANT_LOSSES.register(_name, _loss)
del _name, _loss

DPO_VARIANTS: tuple[str, ...] = tuple(_VARIANTS_IN_ORDER)


def _default(fn: Callable[..., Any], name: str) -> Any:
  """The default of `fn`'s argument `name`: `dpo` reads its defaults from the variants."""
  return inspect.signature(fn).parameters[name].default


@functools.lru_cache(maxsize=None)
def _parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
  return dict(inspect.signature(fn).parameters)


def dpo(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float = _default(dpo_sigmoid_loss, "beta"),
    variant: str = "sigmoid",
    label_smoothing: float = _default(dpo_sigmoid_loss, "label_smoothing"),
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
    discopop_tau: float = _default(discopop_loss, "tau"),
    exo_epsilon: float | None = None,
    bco_delta: float = _default(bco_pair_loss, "delta"),
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Per-example DPO-family preference loss and implicit rewards.

  Computes the log-ratios `c = policy_chosen - ref_chosen` and
  `r = policy_rejected - ref_rejected` and calls the loss function of `variant`, whose
  docstring holds the formula and the paper:

  - `sigmoid`: `dpo_sigmoid_loss`, DPO (Rafailov et al., 2023), label-smoothed by `eps`.
  - `cdpo`: `cdpo_loss`, conservative DPO (Mitchell, 2023).
  - `robust`: `dpo_robust_loss`, robust DPO (Chowdhury et al., 2024).
  - `ipo`: `ipo_loss`, IPO (Azar et al., 2023), per-token averages when given lengths.
  - `hinge`: `hinge_loss`, SLiC (Zhao et al., 2023).
  - `exo_pair`: `exo_pair_loss`, EXO (Ji et al., 2024).
  - `nca_pair`: `nca_pair_loss`, NCA (Chen et al., 2024).
  - `bco_pair`: `bco_pair_loss`, BCO (Jung et al., 2024).
  - `sppo_hard`: `sppo_hard_loss`, SPPO (Wu et al., 2024).
  - `aot`, `aot_unpaired`: `aot_loss`, `aot_unpaired_loss`, AOT (Melnyk et al., 2024).
  - `apo_zero`, `apo_down`: `apo_zero_loss`, `apo_down_loss`, APO (D'Oosterlinck et
    al., 2024).
  - `discopop`: `discopop_loss`, DiscoPOP (Lu et al., 2024).
  - `sigmoid_norm`: `dpo_sigmoid_norm_loss`, length-normalised DPO (as in TRL).

  A variant function receives what its signature names: the log-ratios
  (`chosen_logratios`, `rejected_logratios`) or the four log-probs under their names
  here, the lengths, `beta`, `label_smoothing`, and `tau` = `discopop_tau`,
  `epsilon` = the EXO epsilon, `delta` = `bco_delta`. Arguments a variant does not name
  are checked and then ignored, as in TRL (e.g. `label_smoothing` enters only
  `sigmoid`, `cdpo`, `robust`, `aot`, `aot_unpaired` and, as the EXO epsilon,
  `exo_pair`). The defaults here are the variant functions' own.

  Conventions (all following TRL's `DPOTrainer`):

  - `exo_pair` uses `exo_epsilon` when given, else `label_smoothing` when positive, else
    `exo_pair_loss`'s default epsilon (TRL's fallback `1e-3`).
  - `bco_pair`: TRL's running mean of past rewards is state; pass it as `bco_delta`.
  - `aot` / `aot_unpaired`: entry `i` of the losses belongs to the `i`-th quantile,
    not to pair `i`; only the batch mean is meaningful.
  - Lengths are clamped to at least one token. They are used only by `ipo` (optional,
    both or neither) and `sigmoid_norm` (required).
  - The rewards are always `beta * (policy - ref)` of the summed inputs, even where a
    variant length-normalises inside its loss.

  Args:
    policy_chosen_logps: [B] summed log-probs of the chosen completions under the policy.
    policy_rejected_logps: [B] same for the rejected completions.
    ref_chosen_logps: [B] summed log-probs of the chosen completions under the reference.
    ref_rejected_logps: [B] same for the rejected completions.
    beta: inverse temperature of the implicit reward, > 0.
    variant: one of `DPO_VARIANTS`.
    label_smoothing: assumed label-flip probability, in [0, 0.5).
    chosen_lengths: optional [B] number of completion tokens of the chosen completions.
    rejected_lengths: optional [B] number of completion tokens of the rejected ones.
    discopop_tau: temperature of the DiscoPOP modulation, in (0, 1].
    exo_epsilon: optional target smoothing for `exo_pair`, in (0, 1).
    bco_delta: reward shift of `bco_pair`, on the reward (`beta`-scaled) scale.

  Returns:
    `(losses, chosen_rewards, rejected_rewards)`, each [B] in float32 (float64 for
    float64 inputs), with `chosen_rewards = beta * (policy_chosen - ref_chosen)` and
    `rejected_rewards = beta * (policy_rejected - ref_rejected)`.

  Raises:
    ValueError: for a non-floating dtype, a rank other than 1, mismatched shapes, an
      out-of-range hyper-parameter, an unknown variant, or missing lengths.
  """
  # Every argument is checked whatever the variant, so a bad config fails at once.
  if variant not in DPO_VARIANT_LOSSES:
    raise ValueError(f"`variant`: {DPO_VARIANT_LOSSES.unknown_message(variant)}")
  _check_beta(beta)
  _check_label_smoothing(label_smoothing)
  _checks.check_scalar_range(
      discopop_tau, "discopop_tau", low=0.0, low_inclusive=False, high=1.0, high_inclusive=True)
  if exo_epsilon is not None:
    _checks.check_scalar_range(
        exo_epsilon, "exo_epsilon", low=0.0, low_inclusive=False, high=1.0)
  _checks.check_scalar_range(bco_delta, "bco_delta")

  logps = {
      "policy_chosen_logps": policy_chosen_logps,
      "policy_rejected_logps": policy_rejected_logps,
      "ref_chosen_logps": ref_chosen_logps,
      "ref_rejected_logps": ref_rejected_logps,
  }
  logps = {name: _checks.as_float(x, name) for name, x in logps.items()}
  for name, x in logps.items():
    _checks.check_rank(x, name, 1)
  _checks.check_same_shape(**logps)

  lengths = {"chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
  given = {}
  for name, x in lengths.items():
    if x is not None:
      given[name] = _as_lengths(x, name)
      _checks.check_rank(given[name], name, 1)
  if given:
    _checks.check_same_shape(policy_chosen_logps=logps["policy_chosen_logps"], **given)

  loss_fn = DPO_VARIANT_LOSSES.get(variant)
  parameters = _parameters(loss_fn)
  chosen_logratios = logps["policy_chosen_logps"] - logps["ref_chosen_logps"]
  rejected_logratios = logps["policy_rejected_logps"] - logps["ref_rejected_logps"]
  if exo_epsilon is None and "epsilon" in parameters:
    # TRL reuses label smoothing as the EXO epsilon, and falls back when it is zero.
    exo_epsilon = jnp.where(
        label_smoothing == 0, _default(exo_pair_loss, "epsilon"), label_smoothing)
  available = {
      **logps,
      "chosen_logratios": chosen_logratios,
      "rejected_logratios": rejected_logratios,
      **lengths,
      "beta": beta,
      "label_smoothing": label_smoothing,
      "tau": discopop_tau,
      "epsilon": exo_epsilon,
      "delta": bco_delta,
  }
  losses = loss_fn(**{name: available[name] for name in parameters})
  return losses, beta * chosen_logratios, beta * rejected_logratios
