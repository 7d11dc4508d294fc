"""Spammer-aware annotation aggregation: MACE and GLAD.

Both models explain each label by a latent true class per item and a per-annotator skill,
and both are fitted by (generalised) EM over the flat annotation arrays of
`rlhf_jax.feedback.types`: `items[n]`, `annotators[n]`, `labels[n]`. Every E-step and
M-step is a handful of `jax.ops.segment_sum` calls over those arrays, so one iteration
costs O(N + num_items * K + num_annotators * K). The EM loop is the annotator models'
shared driver `em.run_em` inside one jitted function (MACE's random restarts run side by
side under `vmap`); what is their own is the E-step (both models' emission is one
probability for the true class and one for every other, per annotation, which GLAD's
item difficulty keeps out of an [A, K, K] confusion table) and the M-step (MACE's in
closed form, GLAD's a few L-BFGS steps warm-started from the previous point, which is
why the driver hands each M-step the previous parameters).

* MACE (Hovy, Berg-Kirkpatrick, Vaswani, Hovy 2013, "Learning Whom to Trust with MACE",
  NAACL-HLT): annotator j knows the answer with probability `theta_j` (its competence) and
  otherwise spams, drawing a label from its own strategy `xi_j`:
  `P(label = l | truth = k) = theta_j [l = k] + (1 - theta_j) xi_j[l]`.
* GLAD (Whitehill, Ruvolo, Wu, Bergsma, Movellan 2009, "Whose Vote Should Count More",
  NIPS): annotator ability `alpha_j` (negative for adversaries) and item inverse difficulty
  `beta_i = exp(b_i) > 0`: `P(label = truth) = sigmoid(alpha_j beta_i)`, errors uniform over
  the other K - 1 classes.

The annotators' `reliability` reported by both is the model's probability that the
annotator's label equals the true class, averaged over the items that annotator labelled
(the definition of `AggregationResult`), so it is comparable across methods; the
model-specific parameters (`competence`, `spam_strategy`, `ability`) are reported beside it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from rlhf_jax import _checks
from rlhf_jax.feedback.models._arrays import annotation_arrays, check_size
from rlhf_jax.feedback.models.em import (
    argmax_result,
    per_annotator_mean,
    posteriors_from_log_joint,
    run_em,
)
from rlhf_jax.feedback.types import AggregationResult

__all__ = [
    "glad",
    "glad_log_likelihood",
    "glad_m_step_objective",
    "mace",
    "mace_log_likelihood",
]

# Numerical floor inside logs of probabilities that may underflow to 0 in float32.
_TINY = 1e-30


# --------------------------------------------------------------------------------------
# Argument checks shared by both models.
# --------------------------------------------------------------------------------------


def _as_class_prior(class_prior: ArrayLike | None, num_classes: int) -> jax.Array:
  if class_prior is None:
    return jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
  class_prior = _checks.as_float(class_prior, "class_prior")
  if class_prior.shape != (num_classes,):
    raise ValueError(
        f"`class_prior` must have shape (num_classes,) = ({num_classes},), got {class_prior.shape}."
    )
  if not isinstance(class_prior, jax.core.Tracer):
    values = np.asarray(class_prior, np.float64)
    if np.any(values <= 0) or abs(values.sum() - 1.0) > 1e-4:
      raise ValueError(f"`class_prior` must be positive and sum to 1, got {values.tolist()}.")
  return class_prior


# --------------------------------------------------------------------------------------
# The shared E-step: per-item log joint from per-annotation emission log-probabilities.
# --------------------------------------------------------------------------------------


def _item_log_joint(
    items: jax.Array,
    labels: jax.Array,
    log_emission_other: jax.Array,
    log_emission_same: jax.Array,
    log_class_prior: jax.Array,
    num_items: int,
    num_classes: int,
) -> jax.Array:
  """[I, K] log P(truth_i = k, labels of item i) for "one correct class" emission models.

  Both MACE and GLAD give annotation n a log-probability `log_emission_same[n]` when the
  true class equals its label and `log_emission_other[n]` for every other class, so the
  [N, K] emission table never needs to exist: summing the "other" value per item and a
  correction at (item, label) takes two segment sums.
  """
  other = jax.ops.segment_sum(log_emission_other, items, num_segments=num_items)
  correction = jax.ops.segment_sum(
      log_emission_same - log_emission_other,
      items * num_classes + labels,
      num_segments=num_items * num_classes,
  ).reshape(num_items, num_classes)
  return log_class_prior[None, :] + other[:, None] + correction


# --------------------------------------------------------------------------------------
# MACE.
# --------------------------------------------------------------------------------------


def _mace_log_emissions(
    annotators: jax.Array,
    labels: jax.Array,
    log_competence: jax.Array,
    log_spam: jax.Array,
    log_strategy: jax.Array,
    num_classes: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per annotation: log P(l | truth != l), log P(l | truth = l) and log theta_j."""
  log_know = log_competence[annotators]
  log_other = log_spam[annotators] + log_strategy.reshape(-1)[annotators * num_classes + labels]
  log_same = jnp.logaddexp(log_know, log_other)
  return log_other, log_same, log_know


def mace_log_likelihood(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    competence: ArrayLike,
    spam_strategy: ArrayLike,
    *,
    num_items: int | None = None,
    class_prior: ArrayLike | None = None,
) -> jax.Array:
  """Observed-data log-likelihood of MACE (Hovy et al. 2013, NAACL-HLT).

    log L = sum_i log sum_k p_k prod_{n: items[n] = i}
              (theta_j [l_n = k] + (1 - theta_j) xi_j[l_n]),   j = annotators[n]

  with p the prior over the true class (uniform, as in the paper, unless given).

  Args:
    items, annotators, labels: int [N] flat annotations.
    competence: float [A], theta_j = P(annotator j knows the answer), in [0, 1].
    spam_strategy: float [A, K], xi_j, the label distribution of annotator j when spamming.
    num_items: number of items (default: max(items) + 1).
    class_prior: float [K] prior over the true class (default uniform).

  Returns:
    float scalar, the log-likelihood summed over items.
  """
  competence = _checks.as_float(competence, "competence")
  spam_strategy = _checks.as_float(spam_strategy, "spam_strategy")
  _checks.check_rank(competence, "competence", 1)
  _checks.check_rank(spam_strategy, "spam_strategy", 2)
  num_annotators, num_classes = spam_strategy.shape
  if competence.shape != (num_annotators,):
    raise ValueError(
        f"`competence` must have shape (num_annotators,) = ({num_annotators},) like the rows "
        f"of `spam_strategy` {spam_strategy.shape}, got {competence.shape}."
    )
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=num_items,
      num_annotators=num_annotators,
  )
  return _mace_log_likelihood_jit(
      items,
      annotators,
      labels,
      jnp.log(jnp.maximum(competence, _TINY)),
      jnp.log(jnp.maximum(1.0 - competence, _TINY)),
      jnp.log(jnp.maximum(spam_strategy, _TINY)),
      jnp.log(_as_class_prior(class_prior, num_classes)),
      num_items=num_items,
      num_classes=num_classes,
  )


@functools.partial(jax.jit, static_argnames=("num_items", "num_classes"))
def _mace_log_likelihood_jit(
    items,
    annotators,
    labels,
    log_competence,
    log_spam,
    log_strategy,
    log_prior,
    *,
    num_items,
    num_classes,
):
  log_other, log_same, _ = _mace_log_emissions(
      annotators, labels, log_competence, log_spam, log_strategy, num_classes
  )
  log_joint = _item_log_joint(items, labels, log_other, log_same, log_prior, num_items, num_classes)
  return jnp.sum(jax.nn.logsumexp(log_joint, axis=1))


def _dirichlet_kl(posterior: jax.Array, prior: jax.Array) -> jax.Array:
  """KL(Dir(posterior) || Dir(prior)) along the last axis (a Beta when it has size 2)."""
  lgamma, digamma = jax.scipy.special.gammaln, jax.scipy.special.digamma
  post_sum = jnp.sum(posterior, axis=-1)
  prior_sum = jnp.sum(prior, axis=-1)
  return (
      lgamma(post_sum)
      - jnp.sum(lgamma(posterior), axis=-1)
      - lgamma(prior_sum)
      + jnp.sum(lgamma(prior), axis=-1)
      + jnp.sum((posterior - prior) * (digamma(posterior) - digamma(post_sum)[..., None]), axis=-1)
  )


@functools.partial(
    jax.jit,
    static_argnames=("num_items", "num_annotators", "num_classes", "num_iters", "num_restarts"),
)
def _mace_fit(
    items,
    annotators,
    labels,
    key,
    variational,
    learn_class_prior,
    alpha,
    beta,
    strategy_prior,
    smoothing,
    *,
    num_items,
    num_annotators,
    num_classes,
    num_iters,
    num_restarts,
):
  # `variational` and `learn_class_prior` are traced booleans: both branches are cheap
  # next to the E-step, and one compiled program serves every setting.
  digamma = jax.scipy.special.digamma
  uniform = jnp.full((num_classes,), -math.log(num_classes))

  def emissions(params):
    log_competence, log_spam, log_strategy = params["log_params"]
    return _mace_log_emissions(
        annotators, labels, log_competence, log_spam, log_strategy, num_classes
    )

  def e_step(params):
    log_other, log_same, _ = emissions(params)
    log_joint = _item_log_joint(
        items, labels, log_other, log_same, params["log_class_prior"], num_items, num_classes
    )
    posteriors, log_evidence = posteriors_from_log_joint(log_joint)
    log_likelihood = jnp.sum(log_evidence)
    # VB: log-evidence under exp E[log params] minus KL(q || prior) is the ELBO;
    # EM: log-likelihood plus log prior is the MAP objective. Both never decrease.
    return posteriors, {
        "objective": log_likelihood + params["penalty"], "log_likelihood": log_likelihood
    }

  def expected_counts(posteriors, previous):
    """Expected "knew" and "spammed" counts per annotator, and spammed labels [A, K]."""
    _, log_same, log_know = emissions(previous)
    # P(annotator knew | data) = P(truth = l_n | data) * theta_j / P(l_n | truth = l_n).
    knowing = posteriors[items, labels] * jnp.exp(log_know - log_same)
    spamming = 1.0 - knowing
    return (
        jax.ops.segment_sum(knowing, annotators, num_segments=num_annotators),
        jax.ops.segment_sum(spamming, annotators, num_segments=num_annotators),
        jax.ops.segment_sum(
            spamming, annotators * num_classes + labels, num_segments=num_annotators * num_classes
        ).reshape(num_annotators, num_classes),
    )

  def m_step(posteriors, previous):
    """Parameters for the next E-step, the objective's prior term, and reported values.

    EM: smoothed point estimates. VB: exp E_q[log .] under the Beta/Dirichlet posteriors.
    The counts are those of the E-step that gave `posteriors`, from its parameters.
    """
    knowing, spamming, strategy = expected_counts(posteriors, previous)
    # Maximum-likelihood class prior: the mean posterior (a point parameter in both EM and
    # VB, so the objective still never decreases).
    log_class_prior = jnp.where(
        learn_class_prior, jnp.log(jnp.maximum(jnp.mean(posteriors, axis=0), _TINY)), uniform
    )
    strategy_total = jnp.sum(strategy, axis=1, keepdims=True)
    # VB: the objective is the ELBO, so the prior term is -KL(q || prior).
    digamma_total = digamma(knowing + spamming + alpha + beta)
    vb_params = (
        digamma(knowing + alpha) - digamma_total,
        digamma(spamming + beta) - digamma_total,
        digamma(strategy + strategy_prior) - digamma(strategy_total + num_classes * strategy_prior),
    )
    beta_posterior = jnp.stack([knowing + alpha, spamming + beta], axis=-1)
    beta_prior = jnp.broadcast_to(jnp.stack([alpha, beta]), beta_posterior.shape)
    vb_penalty = -jnp.sum(_dirichlet_kl(beta_posterior, beta_prior)) - jnp.sum(
        _dirichlet_kl(strategy + strategy_prior, jnp.broadcast_to(strategy_prior, strategy.shape))
    )
    # EM: additive smoothing is the MAP estimate under Beta(1+s, 1+s) and Dirichlet(1+s)
    # priors; their log densities (up to constants) make the objective a log posterior.
    log_total = jnp.log(knowing + spamming + 2.0 * smoothing)
    em_params = (
        jnp.log(knowing + smoothing) - log_total,
        jnp.log(spamming + smoothing) - log_total,
        jnp.log(strategy + smoothing) - jnp.log(strategy_total + num_classes * smoothing),
    )
    em_penalty = smoothing * sum(jnp.sum(p) for p in em_params)
    log_params = jax.tree.map(lambda v, e: jnp.where(variational, v, e), vb_params, em_params)
    penalty = jnp.where(variational, vb_penalty, em_penalty)
    # Reported: VB posterior means, EM point estimates.
    competence = jnp.where(
        variational,
        (knowing + alpha) / (knowing + spamming + alpha + beta),
        jnp.exp(em_params[0]),
    )
    spam_strategy = jnp.where(
        variational,
        (strategy + strategy_prior) / (strategy_total + num_classes * strategy_prior),
        jnp.exp(em_params[2]),
    )
    return {
        "log_params": log_params,
        "log_class_prior": log_class_prior,
        "penalty": penalty,
        "competence": competence,
        "spam_strategy": spam_strategy,
        # VB's variational posteriors: Beta over theta_j, Dirichlet over xi_j.
        "competence_posterior": beta_posterior,
        "strategy_posterior": strategy + strategy_prior,
    }

  def fit_one(raw):
    raw_competence, raw_strategy = raw[:, :2], raw[:, 2:]
    log_competence_pair = jnp.log(raw_competence / jnp.sum(raw_competence, axis=1, keepdims=True))
    init = (
        log_competence_pair[:, 0],
        log_competence_pair[:, 1],
        jnp.log(raw_strategy / jnp.sum(raw_strategy, axis=1, keepdims=True)),
    )

    # The E-step of the random start has no prior term and is not traced; the returned
    # parameters are those whose objective ends the trace (`refit_last=False`).
    params = {
        "log_params": init,
        "log_class_prior": uniform,
        "penalty": jnp.float32(0.0),
        "competence": jnp.zeros((num_annotators,)),
        "spam_strategy": jnp.zeros((num_annotators, num_classes)),
        "competence_posterior": jnp.zeros((num_annotators, 2)),
        "strategy_posterior": jnp.zeros((num_annotators, num_classes)),
    }
    posteriors, _ = e_step(params)
    return run_em(
        posteriors, params, m_step, e_step, num_iters=num_iters, tol=None, refit_last=False
    )

  # One draw for all restarts; crowd-kit's initialisation, normalised U(1, 2.5).
  posteriors, params, trace = jax.vmap(fit_one)(
      jax.random.uniform(
          key, (num_restarts, num_annotators, 2 + num_classes), minval=1.0, maxval=2.5
      )
  )
  best = jnp.argmax(trace["objective"][:, -1])
  posteriors = posteriors[best]
  class_prior = jnp.exp(params["log_class_prior"][best])
  competence = params["competence"][best]
  spam_strategy = params["spam_strategy"][best]
  # P(label = truth) = theta_j + (1 - theta_j) xi_j[truth], averaged over annotated items.
  correct_given_class = competence[:, None] + (1.0 - competence[:, None]) * spam_strategy
  per_annotation = jnp.sum(posteriors[items] * correct_given_class[annotators], axis=1)
  fallback = correct_given_class @ jnp.mean(posteriors, axis=0)
  reliability = per_annotator_mean(per_annotation, annotators, num_annotators, fallback)
  log_likelihood = _mace_log_likelihood_jit(
      items,
      annotators,
      labels,
      jnp.log(jnp.maximum(competence, _TINY)),
      jnp.log(jnp.maximum(1.0 - competence, _TINY)),
      jnp.log(jnp.maximum(spam_strategy, _TINY)),
      jnp.log(jnp.maximum(class_prior, _TINY)),
      num_items=num_items,
      num_classes=num_classes,
  )
  return {
      "posteriors": posteriors,
      "log_likelihood": log_likelihood,
      "competence": competence,
      "spam_strategy": spam_strategy,
      "reliability": reliability,
      "class_prior": class_prior,
      "competence_posterior": params["competence_posterior"][best],
      "strategy_posterior": params["strategy_posterior"][best],
      "objective_trace": trace["objective"][best],
      "log_likelihood_trace": trace["log_likelihood"][best],
      "restart_objectives": trace["objective"][:, -1],
      "best_restart": best,
  }


def mace(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_iters: int = 50,
    num_items: int | None = None,
    num_annotators: int | None = None,
    num_restarts: int = 10,
    key: jax.Array | None = None,
    method: str = "vb",
    alpha: float = 0.5,
    beta: float = 0.5,
    strategy_prior: float = 10.0,
    smoothing: float | None = None,
    learn_class_prior: bool = True,
) -> AggregationResult:
  """MACE: Multi-Annotator Competence Estimation (Hovy et al. 2013, NAACL-HLT).

  Generative story: item i has a true class drawn from the class prior p; annotator j
  knows it with probability theta_j (its competence; it then labels it correctly) and
  otherwise spams, drawing its label from its own strategy xi_j:

    P(l_n = l | truth_i = k) = theta_j [l = k] + (1 - theta_j) xi_j[l].

  `method="vb"` (the default, as in the paper's recommended setting and crowd-kit) is
  variational Bayes with Beta(alpha, beta) priors on theta_j and symmetric
  Dirichlet(strategy_prior) priors on xi_j: the E-step uses exp E_q[log theta] etc. and the
  objective is the evidence lower bound. `method="em"` is the paper's EM with additive
  smoothing, i.e. the MAP estimate under Beta(1+s, 1+s) and Dirichlet(1+s) priors; its
  objective is that log posterior. Each of `num_restarts` random initialisations
  (crowd-kit's: normalised U(1, 2.5) draws) runs `num_iters` iterations; the restart with
  the best final objective is returned.

  The paper fixes p uniform. With `learn_class_prior=True` (the default) p is a point
  parameter set to the mean posterior in every M-step, as in Dawid-Skene; the objective
  still never decreases. On skewed data this matters: on the `product` benchmark (88% of
  items in class 0) the uniform prior gives 0.82-0.84 accuracy and the learned prior 0.93.
  Other defaults follow crowd-kit 1.4 (`MACE()`).

  Args:
    items, annotators, labels: int [N] flat annotations (see `feedback.types`).
    num_classes: K >= 2.
    num_iters: EM iterations per restart (static).
    num_items, num_annotators: sizes (default: max index + 1; required under `jit`).
    num_restarts: random restarts, run side by side with `vmap`.
    key: PRNG key for the initialisations (default `jax.random.key(0)`).
    method: "vb" (variational Bayes) or "em" (smoothed EM).
    alpha, beta: Beta(alpha, beta) prior on the competence theta_j (VB only; alpha adds
      to the "knows" count, beta to the "spams" count).
    strategy_prior: symmetric Dirichlet concentration on xi_j (VB only).
    smoothing: pseudo-count added to every expected count (EM only; default 0.01 / K).
    learn_class_prior: estimate the class prior (True) or keep it uniform (False, the
      paper's model).

  Returns:
    AggregationResult with posteriors [I, K]; annotator_params `competence` [A] (theta_j;
    VB: posterior mean), `spam_strategy` [A, K] (xi_j; VB: posterior mean), `reliability`
    [A] (the model's P(label = truth) averaged over the annotator's items, theta_j +
    (1 - theta_j) E[xi_j[truth]]); with VB also `competence_posterior` [A, 2] (the Beta
    parameters (a, b) of q(theta_j)) and `strategy_posterior` [A, K] (the Dirichlet
    parameters of q(xi_j)); extras `class_prior` [K], `objective_trace`
    [num_iters] (ELBO or log posterior after each iteration, non-decreasing),
    `log_likelihood_trace` [num_iters] (VB: under exp E[log params]), `log_likelihood`
    (observed-data log-likelihood at the returned `competence`, `spam_strategy` and
    `class_prior`), `restart_objectives` [num_restarts], `best_restart`.
  """
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=num_items,
      num_annotators=num_annotators,
  )
  num_iters = check_size(num_iters, "num_iters")
  num_restarts = check_size(num_restarts, "num_restarts")
  _checks.check_choice(method, "method", ("vb", "em"))
  _checks.check_scalar_range(alpha, "alpha", low=0.0, low_inclusive=False)
  _checks.check_scalar_range(beta, "beta", low=0.0, low_inclusive=False)
  _checks.check_scalar_range(strategy_prior, "strategy_prior", low=0.0, low_inclusive=False)
  if smoothing is None:
    smoothing = 0.01 / num_classes
  _checks.check_scalar_range(smoothing, "smoothing", low=0.0, low_inclusive=False)
  if key is None:
    key = jax.random.key(0)
  fit = _mace_fit(
      items,
      annotators,
      labels,
      key,
      jnp.bool_(method == "vb"),
      jnp.bool_(learn_class_prior),
      jnp.float32(alpha),
      jnp.float32(beta),
      jnp.float32(strategy_prior),
      jnp.float32(smoothing),
      num_items=num_items,
      num_annotators=num_annotators,
      num_classes=num_classes,
      num_iters=num_iters,
      num_restarts=num_restarts,
  )
  annotator_params = {
      "competence": fit["competence"],
      "spam_strategy": fit["spam_strategy"],
      "reliability": fit["reliability"],
  }
  if method == "vb":
    annotator_params["competence_posterior"] = fit["competence_posterior"]
    annotator_params["strategy_posterior"] = fit["strategy_posterior"]
  return argmax_result(
      fit["posteriors"],
      annotator_params,
      {
          "method": method,
          "class_prior": fit["class_prior"],
          "objective_trace": fit["objective_trace"],
          "log_likelihood_trace": fit["log_likelihood_trace"],
          "log_likelihood": fit["log_likelihood"],
          "restart_objectives": fit["restart_objectives"],
          "best_restart": fit["best_restart"],
          "num_iters": num_iters,
      },
  )


# --------------------------------------------------------------------------------------
# GLAD.
# --------------------------------------------------------------------------------------


def _glad_log_emissions(
    items: jax.Array,
    annotators: jax.Array,
    ability: jax.Array,
    log_beta: jax.Array,
    num_classes: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per annotation: log P(l | truth != l), log P(l | truth = l) and alpha_j beta_i."""
  logits = ability[annotators] * jnp.exp(log_beta[items])
  log_same = jax.nn.log_sigmoid(logits)
  log_other = jax.nn.log_sigmoid(-logits) - math.log(num_classes - 1)
  return log_other, log_same, logits


def _gaussian_log_density(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  return jnp.sum(-0.5 * jnp.square((x - mean) / std) - jnp.log(std) - 0.5 * math.log(2 * math.pi))


def glad_log_likelihood(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    ability: ArrayLike,
    log_beta: ArrayLike,
    *,
    num_classes: int,
    class_prior: ArrayLike | None = None,
) -> jax.Array:
  """Observed-data log-likelihood of GLAD (Whitehill et al. 2009, NIPS).

    log L = sum_i log sum_k p_k prod_{n: items[n] = i} P(l_n | k),
    P(l | k) = sigmoid(alpha_j beta_i) if l = k else (1 - sigmoid(alpha_j beta_i)) / (K - 1),

  with beta_i = exp(log_beta_i).

  Args:
    items, annotators, labels: int [N] flat annotations.
    ability: float [A], alpha_j.
    log_beta: float [I], b_i = log beta_i (item i's difficulty is 1 / beta_i).
    num_classes: K >= 2.
    class_prior: float [K] prior over the true class (default uniform).

  Returns:
    float scalar, the log-likelihood summed over items (without the parameter priors).
  """
  ability = _checks.as_float(ability, "ability")
  log_beta = _checks.as_float(log_beta, "log_beta")
  _checks.check_rank(ability, "ability", 1)
  _checks.check_rank(log_beta, "log_beta", 1)
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=log_beta.shape[0],
      num_annotators=ability.shape[0],
  )
  log_class_prior = jnp.log(_as_class_prior(class_prior, num_classes))
  return _glad_log_likelihood_jit(
      items, annotators, labels, ability, log_beta, log_class_prior, num_classes=num_classes
  )


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _glad_log_likelihood_jit(
    items, annotators, labels, ability, log_beta, log_class_prior, *, num_classes
):
  log_other, log_same, _ = _glad_log_emissions(items, annotators, ability, log_beta, num_classes)
  log_joint = _item_log_joint(
      items, labels, log_other, log_same, log_class_prior, log_beta.shape[0], num_classes
  )
  return jnp.sum(jax.nn.logsumexp(log_joint, axis=1))


def _glad_q(
    params,
    items,
    annotators,
    correct_probability,
    prior_means,
    prior_stds,
    num_classes,
):
  ability, log_beta = params
  log_other, log_same, _ = _glad_log_emissions(items, annotators, ability, log_beta, num_classes)
  expected = jnp.sum(correct_probability * log_same + (1.0 - correct_probability) * log_other)
  return (
      expected
      + _gaussian_log_density(ability, prior_means[0], prior_stds[0])
      + _gaussian_log_density(log_beta, prior_means[1], prior_stds[1])
  )


_glad_q_jit = jax.jit(_glad_q, static_argnums=6)


def glad_m_step_objective(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    posteriors: ArrayLike,
    ability: ArrayLike,
    log_beta: ArrayLike,
    *,
    num_classes: int,
    ability_prior_mean: float = 1.0,
    ability_prior_std: float = 1.0,
    log_beta_prior_mean: float = 1.0,
    log_beta_prior_std: float = 1.0,
) -> jax.Array:
  """The function GLAD's M-step maximises over (alpha, log beta) (Whitehill et al. 2009).

    Q = sum_n [ q_n log sigmoid(alpha_j beta_i) + (1 - q_n) (log sigmoid(-alpha_j beta_i)
               - log(K - 1)) ] + log N(alpha; mu_a, s_a^2) + log N(log beta; mu_b, s_b^2),

  where q_n = posteriors[items[n], labels[n]] is the E-step's probability that annotation n
  is correct; the class prior term is constant in (alpha, beta) and left out. Its gradient
  (`jax.grad` with respect to `ability` and `log_beta`) is what the M-step follows.

  Args:
    items, annotators, labels: int [N] flat annotations.
    posteriors: float [I, K] E-step posteriors.
    ability: float [A]; log_beta: float [I].
    num_classes: K >= 2.
    ability_prior_mean, ability_prior_std, log_beta_prior_mean, log_beta_prior_std: the
      Gaussian priors.

  Returns:
    float scalar Q.
  """
  ability = _checks.as_float(ability, "ability")
  log_beta = _checks.as_float(log_beta, "log_beta")
  posteriors = _checks.as_float(posteriors, "posteriors")
  _checks.check_rank(posteriors, "posteriors", 2)
  items, annotators, labels, _, _ = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=log_beta.shape[0],
      num_annotators=ability.shape[0],
  )
  if posteriors.shape != (log_beta.shape[0], num_classes):
    raise ValueError(
        f"`posteriors` must have shape (num_items, num_classes) = ({log_beta.shape[0]}, "
        f"{num_classes}), got {posteriors.shape}."
    )
  return _glad_q_jit(
      (ability, log_beta),
      items,
      annotators,
      posteriors[items, labels],
      (jnp.float32(ability_prior_mean), jnp.float32(log_beta_prior_mean)),
      (jnp.float32(ability_prior_std), jnp.float32(log_beta_prior_std)),
      num_classes,
  )


@functools.partial(
    jax.jit,
    static_argnames=(
        "num_items",
        "num_annotators",
        "num_classes",
        "num_iters",
        "m_step_iters",
    ),
)
def _glad_fit(
    items,
    annotators,
    labels,
    log_class_prior,
    learn_class_prior,
    prior_means,
    prior_stds,
    *,
    num_items,
    num_annotators,
    num_classes,
    num_iters,
    m_step_iters,
):
  optimizer = optax.lbfgs()

  def e_step(params):
    """Exact item posteriors; the objective is the log-likelihood plus the Gaussian log priors."""
    ability, log_beta = params["ability"], params["log_beta"]
    log_other, log_same, _ = _glad_log_emissions(items, annotators, ability, log_beta, num_classes)
    log_joint = _item_log_joint(
        items, labels, log_other, log_same, params["log_class_prior"], num_items, num_classes
    )
    posteriors, log_evidence = posteriors_from_log_joint(log_joint)
    log_likelihood = jnp.sum(log_evidence)
    log_prior = _gaussian_log_density(ability, prior_means[0], prior_stds[0]) + (
        _gaussian_log_density(log_beta, prior_means[1], prior_stds[1])
    )
    return posteriors, {"objective": log_likelihood + log_prior, "log_likelihood": log_likelihood}

  def m_step(posteriors, previous):
    """L-BFGS steps on Q from the previous point; the class prior from the posteriors."""
    params = (previous["ability"], previous["log_beta"])
    correct_probability = posteriors[items, labels]
    # L-BFGS minimises; the scale keeps float32 line-search tolerances meaningful.
    scale = 1.0 / items.shape[0]

    def loss(p):
      q = _glad_q(p, items, annotators, correct_probability, prior_means, prior_stds, num_classes)
      return -q * scale

    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
      p, state = carry
      value, grad = value_and_grad(p, state=state)
      updates, state = optimizer.update(grad, state, p, value=value, grad=grad, value_fn=loss)
      return (optax.apply_updates(p, updates), state), None

    (new_params, _), _ = jax.lax.scan(
        step, (params, optimizer.init(params)), None, length=m_step_iters
    )
    # Generalised EM needs Q not to decrease; keep the old point if the line search failed.
    improved = jnp.isfinite(loss(new_params)) & (loss(new_params) <= loss(params))
    ability, log_beta = jax.tree.map(
        lambda new, old: jnp.where(improved, new, old), new_params, params
    )
    log_class_prior = jnp.where(
        learn_class_prior,
        jnp.log(jnp.maximum(jnp.mean(posteriors, axis=0), _TINY)),
        previous["log_class_prior"],
    )
    return {"ability": ability, "log_beta": log_beta, "log_class_prior": log_class_prior}

  params = {
      "ability": jnp.full((num_annotators,), prior_means[0], jnp.float32),
      "log_beta": jnp.full((num_items,), prior_means[1], jnp.float32),
      "log_class_prior": log_class_prior,
  }
  posteriors, _ = e_step(params)
  posteriors, params, trace = run_em(
      posteriors, params, m_step, e_step, num_iters=num_iters, tol=None, refit_last=False
  )
  ability, log_beta = params["ability"], params["log_beta"]
  _, _, logits = _glad_log_emissions(items, annotators, ability, log_beta, num_classes)
  fallback = jax.nn.sigmoid(ability * jnp.mean(jnp.exp(log_beta)))
  reliability = per_annotator_mean(jax.nn.sigmoid(logits), annotators, num_annotators, fallback)
  return {
      "posteriors": posteriors,
      "ability": ability,
      "log_beta": log_beta,
      "reliability": reliability,
      "class_prior": jnp.exp(params["log_class_prior"]),
      "objective_trace": trace["objective"],
      "log_likelihood_trace": trace["log_likelihood"],
  }


def glad(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_iters: int = 100,
    num_items: int | None = None,
    num_annotators: int | None = None,
    m_step_iters: int = 5,
    class_prior: ArrayLike | None = None,
    ability_prior_mean: float = 1.0,
    ability_prior_std: float = 1.0,
    log_beta_prior_mean: float = 1.0,
    log_beta_prior_std: float = 1.0,
    learn_class_prior: bool = False,
) -> AggregationResult:
  """GLAD: Generative model of Labels, Abilities and Difficulties (Whitehill et al. 2009).

  Annotator j has ability alpha_j in R (0: guessing, negative: adversarial) and item i an
  inverse difficulty beta_i = exp(b_i) > 0; the label is correct with probability
  sigmoid(alpha_j beta_i) and otherwise uniform over the other K - 1 classes:

    P(l_n = l | truth_i = k) = sigmoid(alpha_j beta_i) if l = k,
                               (1 - sigmoid(alpha_j beta_i)) / (K - 1) otherwise.

  EM for the MAP estimate with Gaussian priors alpha_j ~ N(mu_a, s_a^2) and
  b_i ~ N(mu_b, s_b^2), the paper's priors (defaults N(1, 1) for both, as in crowd-kit):
  the E-step computes item posteriors exactly; the M-step takes `m_step_iters` L-BFGS
  steps (optax, zoom line search) on `glad_m_step_objective` from the current point and
  keeps them only if they do not decrease it (generalised EM), so the log posterior never
  decreases. Parameters start at the prior means. The class prior is fixed, as in the
  paper and crowd-kit, unless `learn_class_prior` (then it is the mean posterior after
  each M-step; on the three crowd benchmarks this lowers accuracy, so it is off).

  Args:
    items, annotators, labels: int [N] flat annotations (see `feedback.types`).
    num_classes: K >= 2.
    num_iters: EM iterations (static).
    num_items, num_annotators: sizes (default: max index + 1; required under `jit`).
    m_step_iters: L-BFGS steps per M-step (static).
    class_prior: float [K] prior over the true class (default uniform, as crowd-kit); the
      starting value when `learn_class_prior`.
    ability_prior_mean, ability_prior_std: Gaussian prior on alpha_j.
    log_beta_prior_mean, log_beta_prior_std: Gaussian prior on b_i = log beta_i.
    learn_class_prior: re-estimate the class prior in every M-step.

  Returns:
    AggregationResult with posteriors [I, K]; annotator_params `ability` [A] (alpha_j) and
    `reliability` [A] (the model's P(label = truth) = mean of sigmoid(alpha_j beta_i) over
    the items annotator j labelled; sigmoid(alpha_j mean(beta)) if none); extras
    `item_difficulty` [I] (1 / beta_i), `log_beta` [I], `class_prior` [K],
    `objective_trace` [num_iters] (log posterior after each iteration, non-decreasing),
    `log_likelihood_trace` [num_iters], `log_likelihood` (final observed-data
    log-likelihood).
  """
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=num_items,
      num_annotators=num_annotators,
  )
  num_iters = check_size(num_iters, "num_iters")
  m_step_iters = check_size(m_step_iters, "m_step_iters")
  _checks.check_scalar_range(ability_prior_std, "ability_prior_std", low=0.0, low_inclusive=False)
  _checks.check_scalar_range(log_beta_prior_std, "log_beta_prior_std", low=0.0, low_inclusive=False)
  log_class_prior = jnp.log(_as_class_prior(class_prior, num_classes))
  fit = _glad_fit(
      items,
      annotators,
      labels,
      log_class_prior,
      jnp.bool_(learn_class_prior),
      (jnp.float32(ability_prior_mean), jnp.float32(log_beta_prior_mean)),
      (jnp.float32(ability_prior_std), jnp.float32(log_beta_prior_std)),
      num_items=num_items,
      num_annotators=num_annotators,
      num_classes=num_classes,
      num_iters=num_iters,
      m_step_iters=m_step_iters,
  )
  return argmax_result(
      fit["posteriors"],
      {"ability": fit["ability"], "reliability": fit["reliability"]},
      {
          "item_difficulty": jnp.exp(-fit["log_beta"]),
          "class_prior": fit["class_prior"],
          "log_beta": fit["log_beta"],
          "objective_trace": fit["objective_trace"],
          "log_likelihood_trace": fit["log_likelihood_trace"],
          "log_likelihood": fit["log_likelihood_trace"][-1],
          "num_iters": num_iters,
      },
  )
