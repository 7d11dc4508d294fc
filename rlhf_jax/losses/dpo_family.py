"""Direct Preference Optimization and its pairwise relatives, as one pure function.

All variants consume summed completion log-probabilities of a policy and a frozen
reference on a (chosen, rejected) pair and return per-example losses plus the implicit
rewards `beta * (policy - reference)`. Conventions follow Hugging Face TRL's
`DPOTrainer` (trl/trainer/dpo_trainer.py), the most used public implementation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlhf_jax import _checks

DPO_VARIANTS: tuple[str, ...] = (
    "sigmoid",
    "cdpo",
    "robust",
    "ipo",
    "hinge",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
)

# Variants whose length normalisation is mandatory; `ipo` normalises only when given lengths.
_NEEDS_LENGTHS = ("sigmoid_norm",)

# TRL replaces a zero `label_smoothing` by this epsilon for `exo_pair`, since the EXO
# target distribution (1 - eps, eps) needs eps > 0 for its log.
_EXO_DEFAULT_EPSILON = 1e-3


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


def _smoothed_sigmoid_loss(logits: jax.Array, label_smoothing: Any) -> jax.Array:
  """Cross-entropy of sigmoid(logits) against the soft label (1 - eps, eps)."""
  return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
          - label_smoothing * jax.nn.log_sigmoid(-logits))


def dpo(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    variant: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
    discopop_tau: float = 0.05,
    exo_epsilon: float | None = None,
    bco_delta: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Per-example DPO-family preference loss and implicit rewards.

  With chosen / rejected log-ratios `c = policy_chosen - ref_chosen`,
  `r = policy_rejected - ref_rejected`, their difference `d = c - r`, `z = beta * d`,
  `ls = log_sigmoid` and `eps = label_smoothing`, the variants are:

  - `sigmoid` (Rafailov et al., 2023, arXiv:2305.18290), with label smoothing
    (conservative DPO): `-(1 - eps) ls(z) - eps ls(-z)`; `eps = 0` is plain DPO.
  - `cdpo` (Mitchell, 2023, "A note on DPO with noisy preferences"): the same
    label-smoothed sigmoid; an explicit name for `sigmoid` with `eps > 0`.
  - `robust` (Chowdhury et al., 2024, arXiv:2403.00409), unbiased under a label-flip
    rate `eps`: `(-(1 - eps) ls(z) + eps ls(-z)) / (1 - 2 eps)`.
  - `ipo` (Azar et al., 2023, arXiv:2310.12036, Eq. 17, `beta` is their tau):
    `(d - 1 / (2 beta))^2`. When both lengths are given, each log-ratio is first
    divided by its completion length (per-token averages), as TRL does for IPO.
  - `hinge` (SLiC, Zhao et al., 2023, arXiv:2305.10425): `relu(1 - z)`.
  - `exo_pair` (Ji et al., 2024, arXiv:2402.00856, Eq. 16), the KL divergence from
    `(sigmoid(z), sigmoid(-z))` to the target `(1 - e, e)`:
    `sigmoid(z) (ls(z) - log(1 - e)) + sigmoid(-z) (ls(-z) - log e)`.
  - `nca_pair` (Chen et al., 2024, arXiv:2402.05369):
    `-ls(beta c) - ls(-beta c) / 2 - ls(-beta r) / 2`.
  - `bco_pair` (Jung et al., 2024, arXiv:2404.04656):
    `-ls(beta c - delta) - ls(-(beta r - delta))`.
  - `sppo_hard` (Wu et al., 2024, arXiv:2405.00675, hard-label Eq. 4.7):
    `(c - 1 / (2 beta))^2 + (r + 1 / (2 beta))^2`.
  - `aot` (Melnyk et al., 2024, arXiv:2406.05882): the label-smoothed sigmoid of
    `beta * (sort(policy_chosen - policy_rejected) - sort(ref_chosen - ref_rejected))`,
    sorting across the batch (first-order stochastic dominance of the quantiles).
  - `aot_unpaired` (same paper, unpaired form): the label-smoothed sigmoid of
    `beta * (sort(c) - sort(r))`.
  - `apo_zero` (D'Oosterlinck et al., 2024, arXiv:2408.06266, Eq. 7):
    `1 - sigmoid(beta c) + sigmoid(beta r)`.
  - `apo_down` (same paper, Eq. 8): `sigmoid(beta c) + 1 - sigmoid(z)`.
  - `discopop` (Lu et al., 2024, arXiv:2406.08414, Eq. 5), with `m = sigmoid(z / tau)`:
    `-ls(z) (1 - m) + exp(-z) m`.
  - `sigmoid_norm` (length-normalised DPO in the spirit of SimPO, Meng et al., 2024,
    arXiv:2405.14734, but keeping the reference as TRL does):
    `-ls(beta (c / chosen_lengths - r / rejected_lengths))`.

  Conventions (all following TRL's `DPOTrainer`):

  - `label_smoothing` enters `sigmoid`, `cdpo`, `robust`, `aot`, `aot_unpaired` and
    (as the EXO epsilon) `exo_pair`; the other variants ignore it, as TRL does.
  - `exo_pair` uses `exo_epsilon` when given, else `label_smoothing`, else (when
    `label_smoothing == 0`) TRL's fallback `1e-3`.
  - `bco_pair`: TRL shifts rewards by a running mean `delta` of past batch rewards,
    which is state; this pure function takes that shift as `bco_delta` (default 0).
  - `aot` / `aot_unpaired`: entry `i` of the losses belongs to the `i`-th quantile,
    not to pair `i`; only the batch mean is meaningful. Results depend on the batch.
  - Lengths are clamped to at least one token (as in TRL). They are used only by
    `ipo` (optional, both or neither) and `sigmoid_norm` (required).
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
    discopop_tau: temperature of the DiscoPOP modulation, in (0, 1]; the paper uses
      0.05. Above 1 the exponential branch grows without bound for very negative `z`.
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
  _checks.check_choice(variant, "variant", DPO_VARIANTS)
  _checks.check_scalar_range(beta, "beta", low=0.0, low_inclusive=False, high=None)
  _checks.check_scalar_range(label_smoothing, "label_smoothing", low=0.0, high=0.5)
  _checks.check_scalar_range(
      discopop_tau, "discopop_tau", low=0.0, low_inclusive=False, high=1.0, high_inclusive=True)
  if exo_epsilon is not None:
    _checks.check_scalar_range(
        exo_epsilon, "exo_epsilon", low=0.0, low_inclusive=False, high=1.0)
  _checks.check_scalar_range(bco_delta, "bco_delta")

  inputs = {
      "policy_chosen_logps": policy_chosen_logps,
      "policy_rejected_logps": policy_rejected_logps,
      "ref_chosen_logps": ref_chosen_logps,
      "ref_rejected_logps": ref_rejected_logps,
  }
  inputs = {name: _checks.as_float(x, name) for name, x in inputs.items()}
  for name, x in inputs.items():
    _checks.check_rank(x, name, 1)
  _checks.check_same_shape(**inputs)
  policy_chosen = inputs["policy_chosen_logps"]
  policy_rejected = inputs["policy_rejected_logps"]
  ref_chosen = inputs["ref_chosen_logps"]
  ref_rejected = inputs["ref_rejected_logps"]

  given = {"chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
  missing = [name for name, x in given.items() if x is None]
  if variant in _NEEDS_LENGTHS and missing:
    raise ValueError(
        f"variant {variant!r} requires `chosen_lengths` and `rejected_lengths`; "
        f"missing {', '.join(f'`{name}`' for name in missing)}.")
  if variant == "ipo" and len(missing) == 1:
    raise ValueError(
        "variant 'ipo' length-normalises only when both `chosen_lengths` and "
        f"`rejected_lengths` are given; missing `{missing[0]}`.")
  lengths = {}
  for name, x in given.items():
    if x is not None:
      lengths[name] = _as_lengths(x, name)
      _checks.check_rank(lengths[name], name, 1)
  if lengths:
    _checks.check_same_shape(policy_chosen_logps=policy_chosen, **lengths)

  chosen_logratios = policy_chosen - ref_chosen
  rejected_logratios = policy_rejected - ref_rejected
  # Grouped as a difference of log-ratios (not of policy and reference margins) so a
  # tie between policy and reference gives exactly d = 0.
  logratio_diff = chosen_logratios - rejected_logratios
  logits = beta * logratio_diff

  if variant in ("sigmoid", "cdpo"):
    losses = _smoothed_sigmoid_loss(logits, label_smoothing)
  elif variant == "robust":
    losses = ((-(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
               + label_smoothing * jax.nn.log_sigmoid(-logits))
              / (1.0 - 2.0 * label_smoothing))
  elif variant == "ipo":
    if lengths:
      logratio_diff = (chosen_logratios / lengths["chosen_lengths"]
                       - rejected_logratios / lengths["rejected_lengths"])
    losses = (logratio_diff - 1.0 / (2.0 * beta)) ** 2
  elif variant == "hinge":
    losses = jax.nn.relu(1.0 - logits)
  elif variant == "exo_pair":
    if exo_epsilon is None:
      epsilon = jnp.where(label_smoothing == 0, _EXO_DEFAULT_EPSILON, label_smoothing)
    else:
      epsilon = jnp.asarray(exo_epsilon)
    epsilon = epsilon.astype(logits.dtype)
    log_q_chosen = jax.nn.log_sigmoid(logits)
    log_q_rejected = jax.nn.log_sigmoid(-logits)
    # sigmoid = exp(log_sigmoid) keeps the 0 * (-large) products exactly zero.
    losses = (jnp.exp(log_q_chosen) * (log_q_chosen - jnp.log1p(-epsilon))
              + jnp.exp(log_q_rejected) * (log_q_rejected - jnp.log(epsilon)))
  elif variant == "nca_pair":
    chosen_scaled = beta * chosen_logratios
    rejected_scaled = beta * rejected_logratios
    losses = (-jax.nn.log_sigmoid(chosen_scaled)
              - 0.5 * jax.nn.log_sigmoid(-chosen_scaled)
              - 0.5 * jax.nn.log_sigmoid(-rejected_scaled))
  elif variant == "bco_pair":
    losses = (-jax.nn.log_sigmoid(beta * chosen_logratios - bco_delta)
              - jax.nn.log_sigmoid(-(beta * rejected_logratios - bco_delta)))
  elif variant == "sppo_hard":
    half_margin = 0.5 / beta
    losses = (chosen_logratios - half_margin) ** 2 + (rejected_logratios + half_margin) ** 2
  elif variant == "aot":
    policy_margins = jnp.sort(policy_chosen - policy_rejected)
    ref_margins = jnp.sort(ref_chosen - ref_rejected)
    losses = _smoothed_sigmoid_loss(beta * (policy_margins - ref_margins), label_smoothing)
  elif variant == "aot_unpaired":
    quantile_diff = jnp.sort(chosen_logratios) - jnp.sort(rejected_logratios)
    losses = _smoothed_sigmoid_loss(beta * quantile_diff, label_smoothing)
  elif variant == "apo_zero":
    # 1 - sigmoid(x) written as sigmoid(-x) to avoid cancellation near 1.
    losses = jax.nn.sigmoid(-beta * chosen_logratios) + jax.nn.sigmoid(beta * rejected_logratios)
  elif variant == "apo_down":
    losses = jax.nn.sigmoid(beta * chosen_logratios) + jax.nn.sigmoid(-logits)
  elif variant == "discopop":
    # exp(-z) * sigmoid(z / tau) = exp(-z - softplus(-z / tau)): one exponent, so the
    # product never forms inf * 0 for very negative z (tau <= 1 keeps it bounded).
    exp_part = jnp.exp(-logits - jax.nn.softplus(-logits / discopop_tau))
    logistic_part = -jax.nn.log_sigmoid(logits) * jax.nn.sigmoid(-logits / discopop_tau)
    losses = logistic_part + exp_part
  else:  # "sigmoid_norm"
    normalised_diff = (chosen_logratios / lengths["chosen_lengths"]
                       - rejected_logratios / lengths["rejected_lengths"])
    losses = -jax.nn.log_sigmoid(beta * normalised_diff)

  chosen_rewards = beta * chosen_logratios
  rejected_rewards = beta * rejected_logratios
  return losses, chosen_rewards, rejected_rewards
