"""The Dawid-Skene family: annotator confusion matrices fitted by EM.

Every method takes the flat annotation arrays of `rlhf_jax.feedback.types` (`items`,
`annotators`, `labels`, one entry per annotation) and returns an `AggregationResult`.
The work is a few segment sums over the N annotations per iteration, so the cost is
linear in N; sizes are static, every core is `jax.jit`-compiled, and EM runs inside one
`jax.lax.while_loop` that stops early once the posteriors stop moving (`em.run_em`).

* `dawid_skene`: Dawid & Skene (1979) EM with a full confusion matrix per annotator.
* `one_coin_dawid_skene`: one accuracy per annotator, errors uniform over other classes.
* `bayesian_dawid_skene`: Dirichlet priors on confusion rows and class priors, fitted
  by MAP EM or by mean-field variational Bayes (Simpson et al. 2013).
* `e_step`, `m_step`: the two halves of Dawid-Skene EM, exposed so that a reward model
  can supply per-item class priors (Raykar et al. 2010) and be trained on the posteriors.

Conventions: `confusion[a, k, l] = P(annotator a answers l | true class k)`, rows (true
class) sum to one. Items without any annotation keep the class prior as posterior (a
uniform one for votes) and are left out of every parameter update. Annotator
`reliability` is the model's probability that the annotator's answer equals the true
class: `sum_k class_prior[k] * confusion[a, k, k]`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln
from jax.typing import ArrayLike

from rlhf_jax._checks import check_choice, check_scalar_range
from rlhf_jax.feedback.models._arrays import annotation_arrays, check_size, check_tol, is_traced
from rlhf_jax.feedback.models.em import (
    PROB_FLOOR,
    STOP_RULES,
    argmax_result,
    class_counts,
    confusion_e_step,
    e_step_core,
    item_counts,
    normalized_log,
    run_em,
    vote_share_init,
)
from rlhf_jax.feedback.types import AggregationResult

__all__ = [
    "BAYESIAN_METHODS",
    "dawid_skene",
    "one_coin_dawid_skene",
    "bayesian_dawid_skene",
    "e_step",
    "m_step",
]

BAYESIAN_METHODS = ("map", "variational")

# Confusion cells of a label the annotator never gave are floored far lower. crowd-kit
# normalises each annotator's confusion rows over the labels that annotator used; with
# no pseudo-count those cells are then (almost) 0, and a row without evidence (a class
# none of the annotator's items is believed to have) spreads over the used labels only.
# An annotator who always answers 0 then gives no evidence for or against a class it
# has never been seen under, where a uniform row over all K labels would count each of
# its answers as K-fold evidence against that class.
_UNUSED_LABEL_FLOOR = 1e-30


# ----------------------------------------------------------------------------------
# Argument checks and shared pieces.
# ----------------------------------------------------------------------------------


def _check_concentration(value: Any, name: str) -> float:
  check_scalar_range(value, name, low=0.0, low_inclusive=False)
  return float(value)


def _confusion_counts(
    items: jax.Array,
    annotators: jax.Array,
    labels: jax.Array,
    posteriors: jax.Array,
    num_annotators: int,
) -> jax.Array:
  """Expected counts `n[a, k, l] = sum_{n: annotator a, label l} posteriors[item_n, k]`.

  One segment sum over the N annotations keyed by (annotator, label): [A * K, K] memory,
  never an [N, K, K] outer product.
  """
  num_classes = posteriors.shape[-1]
  segments = annotators * num_classes + labels
  counts = jax.ops.segment_sum(
      posteriors[items], segments, num_segments=num_annotators * num_classes
  )
  # [A, observed l, true k] -> [A, true k, observed l]
  return counts.reshape(num_annotators, num_classes, num_classes).transpose(0, 2, 1)


def _label_floor(
    annotators: jax.Array, labels: jax.Array, num_annotators: int, num_classes: int
) -> jax.Array:
  """[A, 1, K] floor for confusion cells: 1e-10 for labels the annotator gave, else 1e-30."""
  given = jax.ops.segment_sum(
      jnp.ones(labels.shape, jnp.float32), annotators * num_classes + labels,
      num_segments=num_annotators * num_classes,
  ).reshape(num_annotators, 1, num_classes)
  return jnp.where(given > 0, PROB_FLOOR, _UNUSED_LABEL_FLOOR)


def _diag_reliability(confusion: jax.Array, class_prior: jax.Array) -> jax.Array:
  """P(answer = true class) = sum_k prior[k] * confusion[a, k, k], per annotator."""
  diagonal = jnp.diagonal(confusion, axis1=1, axis2=2)
  return jnp.clip(diagonal @ class_prior, 0.0, 1.0)



# ----------------------------------------------------------------------------------
# The E-step and M-step of Dawid-Skene, public for joint training with a reward model.
# ----------------------------------------------------------------------------------


@jax.jit
def _e_step_jit(items, annotators, labels, log_confusion, item_log_priors):
  return e_step_core(items, annotators, labels, log_confusion, item_log_priors)[0]


def e_step(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    log_confusion: ArrayLike,
    item_log_priors: ArrayLike,
) -> jax.Array:
  """Posterior over each item's true class given annotator confusions and item priors.

    log q[i, k] = item_log_priors[i, k] + sum_{n : item_n = i} log_confusion[a_n, k, y_n]
                  - logsumexp_k(...)

  The E-step of Dawid & Skene (1979). With `item_log_priors` the reward model's predicted
  class log-probabilities per item, it is the E-step of Raykar et al. 2010, "Learning
  from crowds" (JMLR 11): the posteriors are the soft targets of the next reward-model
  epoch, and `m_step` on them re-estimates the annotators. A global class prior is the
  special case of identical rows.

  Args:
    items, annotators, labels: int [N] flat annotations.
    log_confusion: float [A, K, K], `log P(answer l | true k)` at `[a, k, l]`.
    item_log_priors: float [I, K] class log-probabilities per item (rows need not be
      normalised: only differences between classes matter).

  Returns:
    float [I, K] posteriors; an item without annotations keeps its (normalised) prior.
  """
  log_confusion = jnp.asarray(log_confusion)
  item_log_priors = jnp.asarray(item_log_priors)
  for name, x in (("log_confusion", log_confusion), ("item_log_priors", item_log_priors)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"`{name}` must have a floating dtype, got {x.dtype}.")
  if log_confusion.ndim != 3 or log_confusion.shape[1] != log_confusion.shape[2]:
    raise ValueError(
        f"`log_confusion` must be [num_annotators, K, K], got shape {log_confusion.shape}."
    )
  num_annotators, num_classes, _ = log_confusion.shape
  if item_log_priors.ndim != 2 or item_log_priors.shape[1] != num_classes:
    raise ValueError(
        f"`item_log_priors` must be [num_items, {num_classes}] (K from `log_confusion`), "
        f"got shape {item_log_priors.shape}."
    )
  items, annotators, labels, _, _ = annotation_arrays(
      items, annotators, labels, num_classes=num_classes,
      num_items=int(item_log_priors.shape[0]), num_annotators=int(num_annotators),
  )
  return _e_step_jit(
      items, annotators, labels, log_confusion.astype(jnp.float32),
      item_log_priors.astype(jnp.float32),
  )


@functools.partial(jax.jit, static_argnames=("num_annotators",))
def _m_step_jit(items, annotators, labels, posteriors, smoothing, *, num_annotators):
  counts = _confusion_counts(items, annotators, labels, posteriors, num_annotators)
  floor = _label_floor(annotators, labels, num_annotators, posteriors.shape[-1])
  return normalized_log(counts + smoothing, floor)


def m_step(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    posteriors: ArrayLike,
    *,
    num_annotators: int,
    smoothing: float | ArrayLike = 0.0,
) -> jax.Array:
  """Annotator confusion matrices that maximise the expected complete-data likelihood.

    confusion[a, k, l] = (n[a, k, l] + s) / sum_l' (n[a, k, l'] + s),
    n[a, k, l] = sum_{n : annotator_n = a, label_n = l} posteriors[item_n, k]

  The M-step of Dawid & Skene (1979); a pseudo-count `s > 0` makes it the MAP estimate
  under a Dirichlet(s + 1) prior on each row. Entries are floored at 1e-10 before
  normalising, as crowd-kit does, and at 1e-30 for labels the annotator never gave
  (crowd-kit normalises over the labels each annotator used): with `s = 0` a row
  without evidence spreads evenly over the annotator's used labels.

  Args:
    items, annotators, labels: int [N] flat annotations.
    posteriors: float [I, K] item class probabilities (from `e_step`, or a reward
      model's predictions).
    num_annotators: A, static.
    smoothing: pseudo-count `s`, a scalar or a [K, K] array (per true/observed class).

  Returns:
    float [A, K, K] log confusion matrices.
  """
  posteriors = jnp.asarray(posteriors)
  if not jnp.issubdtype(posteriors.dtype, jnp.floating) or posteriors.ndim != 2:
    raise ValueError(
        f"`posteriors` must be a float [num_items, K] array, got {posteriors.dtype} {posteriors.shape}."
    )
  num_items, num_classes = posteriors.shape
  smoothing = jnp.asarray(smoothing, jnp.float32)
  if smoothing.shape not in ((), (num_classes, num_classes)):
    raise ValueError(
        f"`smoothing` must be a scalar or [{num_classes}, {num_classes}], got shape {smoothing.shape}."
    )
  if not is_traced(smoothing) and bool(jnp.any(smoothing < 0)):
    raise ValueError(f"`smoothing` must be >= 0, got {np.asarray(smoothing)}.")
  items, annotators, labels, _, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=int(num_items),
      num_annotators=num_annotators,
  )
  return _m_step_jit(
      items, annotators, labels, posteriors.astype(jnp.float32), smoothing,
      num_annotators=num_annotators,
  )


# ----------------------------------------------------------------------------------
# Helpers of the EM fits.
# ----------------------------------------------------------------------------------


def _split(flat: jax.Array, *shapes: tuple[int, ...]) -> list[jax.Array]:
  """Cuts a flat array into consecutive pieces of the given shapes."""
  pieces, start = [], 0
  for shape in shapes:
    size = int(np.prod(shape))
    pieces.append(flat[start:start + size].reshape(shape))
    start += size
  return pieces


def _dirichlet_log_normalizers(
    confusion_concentration: jax.Array, class_concentration: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """log(1 / B(alpha)) = lgamma(sum alpha) - sum lgamma(alpha) per confusion row and for rho.

  One `gammaln` over all arguments: every call site of a special function adds its
  whole polynomial expansion to the compiled program.
  """
  rows = confusion_concentration.shape[:-1]
  flat = jnp.concatenate([
      confusion_concentration.ravel(), jnp.sum(confusion_concentration, -1).ravel(),
      class_concentration, jnp.sum(class_concentration, keepdims=True),
  ])
  lg_conf, lg_conf_total, lg_class, lg_class_total = _split(
      gammaln(flat), confusion_concentration.shape, rows, class_concentration.shape, (1,)
  )
  return lg_conf_total - jnp.sum(lg_conf, -1), lg_class_total[0] - jnp.sum(lg_class)


def _confusion_em(items, annotators, labels, model_m_step, *, num_items, num_classes, num_iters, tol, stop_on):
  """`run_em` with the confusion E-step from the vote shares, as crowd-kit's DawidSkene."""
  init = vote_share_init(items, labels, num_items, num_classes)
  return run_em(
      init, None, model_m_step, confusion_e_step(items, annotators, labels, num_items),
      num_iters=num_iters, tol=tol, refit_last=True, stop_on=stop_on,
  )


def _confusion_result(posteriors, params, trace, items, extra_params=None):
  class_prior = params["class_prior"]
  annotator_params = {
      "confusion": params["confusion"],
      "reliability": _diag_reliability(params["confusion"], class_prior),
  }
  if extra_params:
    annotator_params.update(extra_params)
  extras = {
      "class_priors": class_prior,
      "objective": trace["objective"],
      "posterior_change": trace["posterior_change"],
      "num_iters": trace["num_iters"],
      "num_annotations": item_counts(items, posteriors.shape[0]).astype(jnp.int32),
  }
  return argmax_result(posteriors, annotator_params, extras)


# ----------------------------------------------------------------------------------
# Dawid-Skene.
# ----------------------------------------------------------------------------------


@functools.partial(
    jax.jit, static_argnames=("num_items", "num_annotators", "num_classes", "num_iters", "tol", "stop_on")
)
def _dawid_skene(items, annotators, labels, smoothing, *, num_items, num_annotators,
                 num_classes, num_iters, tol, stop_on):
  def model_m_step(posteriors, previous_params):
    del previous_params  # closed form
    log_confusion = _m_step_jit(
        items, annotators, labels, posteriors, smoothing, num_annotators=num_annotators
    )
    class_prior = jnp.maximum(class_counts(items, posteriors), 0.0)
    log_class_prior = normalized_log(class_prior)
    # A pseudo-count s is a Dirichlet(s + 1) prior: its log density up to a constant.
    return {
        "log_confusion": log_confusion,
        "log_class_prior": log_class_prior,
        "log_prior_density": jnp.sum(smoothing * log_confusion),
        "confusion": jnp.exp(log_confusion),
        "class_prior": jnp.exp(log_class_prior),
    }

  posteriors, params, trace = _confusion_em(
      items, annotators, labels, model_m_step, num_items=num_items, num_classes=num_classes,
      num_iters=num_iters, tol=tol, stop_on=stop_on,
  )
  return _confusion_result(posteriors, params, trace, items)


def _em_arguments(items, annotators, labels, num_classes, num_items, num_annotators,
                  num_iters, tol, stop_on="posteriors"):
  check_choice(stop_on, "stop_on", STOP_RULES)
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=num_items,
      num_annotators=num_annotators,
  )
  sizes = dict(
      num_items=num_items, num_annotators=num_annotators, num_classes=num_classes,
      num_iters=check_size(num_iters, "num_iters"), tol=check_tol(tol),
      stop_on=stop_on,
  )
  return items, annotators, labels, sizes


def dawid_skene(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_iters: int = 50,
    num_items: int | None = None,
    num_annotators: int | None = None,
    tol: float | None = 1e-5,
    stop_on: str = "posteriors",
    smoothing: float = 0.0,
) -> AggregationResult:
  """Dawid-Skene EM: a full confusion matrix per annotator and class priors.

  Dawid & Skene 1979, "Maximum likelihood estimation of observer error-rates using the
  EM algorithm" (JRSS C 28(1)). Model: z_i ~ Cat(rho), y_n | z_{item_n} = k ~
  Cat(confusion[a_n, k, :]). EM alternates

    E: q[i, k] ∝ rho[k] * prod_{n : item_n = i} confusion[a_n, k, y_n]      (`e_step`)
    M: confusion[a, k, l] ∝ n[a, k, l] + s,  rho[k] ∝ sum_i q[i, k]          (`m_step`)

  in log space, starting from the vote shares as crowd-kit's DawidSkene does (M-step on
  the vote shares first). For pairwise preferences K = 3 (a, b, tie), and the
  confusion matrix captures position bias (an annotator who favours "a").

  Args:
    items, annotators, labels: int [N] flat annotations.
    num_classes: K, static.
    num_iters: maximum number of EM iterations (E-step then M-step), static.
    num_items, num_annotators: static sizes, inferred from the data when None (outside
      `jit` only).
    tol: stop after the first iteration in which no posterior probability changed by
      `tol` or more; None runs exactly `num_iters` iterations.
    stop_on: what `tol` bounds (`em.STOP_RULES`): "posteriors" (the above) or
      "objective": stop after the first iteration whose objective (extras "objective")
      gained less than `tol` (or fell), crowd-kit's kind of rule; fewer iterations, a
      few labels not yet settled (`em.run_em`).
    smoothing: pseudo-count added to every confusion cell (0: maximum likelihood, as
      the paper and crowd-kit; cells are floored at 1e-10 so logs stay finite).

  Returns:
    `AggregationResult`: posteriors [I, K] from the last E-step, argmax labels (ties to
    the lowest class), confidence = max posterior; annotator_params "confusion"
    [A, K, K] (M-step on the returned posteriors) and "reliability" [A]; extras
    "class_priors" [K], "objective" [num_iters] (per annotation: the log-likelihood of
    the parameters each E-step used, plus the smoothing prior's log density; EM never
    decreases it), "posterior_change" [num_iters] (max |change| of a posterior), both
    NaN after the stop, "num_iters", "num_annotations" [I].
  """
  items, annotators, labels, sizes = _em_arguments(
      items, annotators, labels, num_classes, num_items, num_annotators, num_iters, tol, stop_on
  )
  check_scalar_range(smoothing, "smoothing", low=0.0)
  return _dawid_skene(items, annotators, labels, jnp.float32(smoothing), **sizes)


# ----------------------------------------------------------------------------------
# One-coin Dawid-Skene.
# ----------------------------------------------------------------------------------


def _one_coin_log_confusion(
    log_accuracy: jax.Array, log_error: jax.Array, num_classes: int
) -> jax.Array:
  """[A, K, K] log confusion with `log_accuracy` on the diagonal and `log_error` off it."""
  eye = jnp.eye(num_classes, dtype=bool)
  return jnp.where(eye, log_accuracy[:, None, None], log_error[:, None, None])


@functools.partial(
    jax.jit, static_argnames=("num_items", "num_annotators", "num_classes", "num_iters", "tol", "stop_on")
)
def _one_coin(items, annotators, labels, smoothing, *, num_items, num_annotators,
              num_classes, num_iters, tol, stop_on):
  ones = jnp.ones(items.shape, jnp.float32)
  answered = jax.ops.segment_sum(ones, annotators, num_segments=num_annotators)
  denominator = answered + 2.0 * smoothing
  has_evidence = denominator > 0

  def model_m_step(posteriors, previous_params):
    del previous_params  # closed form
    agreeing = posteriors[items, labels]
    # The wrong mass is summed directly rather than as 1 - accuracy, which float32
    # rounds to 0 for near-perfect annotators (log 0 would veto every other class).
    correct = jax.ops.segment_sum(agreeing, annotators, num_segments=num_annotators)
    wrong = jax.ops.segment_sum(1.0 - agreeing, annotators, num_segments=num_annotators)
    scale = jnp.where(has_evidence, 1.0 / jnp.maximum(denominator, PROB_FLOOR), 0.0)
    accuracy = jnp.where(has_evidence, (correct + smoothing) * scale, 1.0 / num_classes)
    error = jnp.where(has_evidence, (wrong + smoothing) * scale, 1.0 - 1.0 / num_classes)
    # Floored as crowd-kit clips its one-coin error matrices to [1e-10, 1 - 1e-10].
    log_accuracy = jnp.log(jnp.maximum(accuracy, PROB_FLOOR))
    log_error = jnp.log(jnp.maximum(error / (num_classes - 1), PROB_FLOOR))
    log_class_prior = normalized_log(class_counts(items, posteriors))
    log_confusion = _one_coin_log_confusion(log_accuracy, log_error, num_classes)
    return {
        "log_confusion": log_confusion,
        "log_class_prior": log_class_prior,
        # Beta(s + 1, s + 1) prior on each accuracy, up to a constant.
        "log_prior_density": jnp.sum(
            smoothing * (log_accuracy + jnp.log(jnp.maximum(error, PROB_FLOOR)))
        ),
        "confusion": jnp.exp(log_confusion),
        "class_prior": jnp.exp(log_class_prior),
        "accuracy": jnp.clip(accuracy, PROB_FLOOR, 1.0 - PROB_FLOOR),
    }

  posteriors, params, trace = _confusion_em(
      items, annotators, labels, model_m_step, num_items=num_items, num_classes=num_classes,
      num_iters=num_iters, tol=tol, stop_on=stop_on,
  )
  return _confusion_result(posteriors, params, trace, items, {"accuracy": params["accuracy"]})


def one_coin_dawid_skene(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_iters: int = 50,
    num_items: int | None = None,
    num_annotators: int | None = None,
    tol: float | None = 1e-5,
    stop_on: str = "posteriors",
    smoothing: float = 0.0,
) -> AggregationResult:
  """One-coin Dawid-Skene: one accuracy per annotator, errors uniform over other classes.

    confusion[a, k, l] = p_a if l == k else (1 - p_a) / (K - 1)
    M-step: p_a = (sum_{n : annotator_n = a} q[item_n, y_n] + s) / (#answers of a + 2 s)

  The "one-coin" restriction of Dawid & Skene (1979) analysed by Zhang, Chen, Zhou &
  Jordan 2016, "Spectral methods meet EM" (JMLR 17); crowd-kit's OneCoinDawidSkene.
  Same EM schedule, start and stopping rules (`stop_on`) as `dawid_skene`; `smoothing` is a
  Beta(s + 1, s + 1) prior on each accuracy. Confusion cells are floored at 1e-10 as in
  crowd-kit.

  Returns:
    `AggregationResult` as `dawid_skene`, with annotator_params "accuracy" [A] (the
    reliability is the same number: P(answer = truth) does not depend on the class).
  """
  items, annotators, labels, sizes = _em_arguments(
      items, annotators, labels, num_classes, num_items, num_annotators, num_iters, tol, stop_on
  )
  check_scalar_range(smoothing, "smoothing", low=0.0)
  return _one_coin(items, annotators, labels, jnp.float32(smoothing), **sizes)


# ----------------------------------------------------------------------------------
# Bayesian Dawid-Skene.
# ----------------------------------------------------------------------------------


@functools.partial(
    jax.jit,
    static_argnames=("num_items", "num_annotators", "num_classes", "num_iters", "tol", "stop_on", "method"),
)
def _bayesian_dawid_skene(items, annotators, labels, prior_correct, prior_incorrect,
                          prior_class, *, num_items, num_annotators, num_classes, num_iters,
                          tol, stop_on, method):
  eye = jnp.eye(num_classes, dtype=bool)
  confusion_prior = jnp.where(eye, prior_correct, prior_incorrect)  # [K, K]
  class_prior_concentration = jnp.full((num_classes,), prior_class, jnp.float32)
  # log(1 / B(.)) of the priors: constants, computed once outside the loop.
  prior_row_log_norm, prior_class_log_norm = _dirichlet_log_normalizers(
      confusion_prior, class_prior_concentration
  )
  prior_log_norm = num_annotators * jnp.sum(prior_row_log_norm) + prior_class_log_norm

  def map_m_step(posteriors, previous_params):
    del previous_params  # closed form
    counts = _confusion_counts(items, annotators, labels, posteriors, num_annotators)
    log_confusion = normalized_log(
        counts + confusion_prior - 1.0,
        _label_floor(annotators, labels, num_annotators, num_classes),
    )
    log_class_prior = normalized_log(
        class_counts(items, posteriors) + class_prior_concentration - 1.0
    )
    # log Dir(confusion[a, k]; alpha0[k]) summed over a, k, plus log Dir(rho; nu0).
    log_density = (
        prior_log_norm
        + jnp.sum((confusion_prior - 1.0) * log_confusion)
        + jnp.sum((class_prior_concentration - 1.0) * log_class_prior)
    )
    return {
        "log_confusion": log_confusion,
        "log_class_prior": log_class_prior,
        "log_prior_density": log_density,
        "confusion": jnp.exp(log_confusion),
        "class_prior": jnp.exp(log_class_prior),
    }

  def variational_m_step(posteriors, previous_params):
    del previous_params  # closed form
    # q(confusion[a, k]) = Dir(alpha0[k] + n[a, k]), q(rho) = Dir(nu0 + sum_i q[i]);
    # the next E-step uses E_q[log confusion] and E_q[log rho] (Simpson et al. 2013).
    confusion_concentration = confusion_prior + _confusion_counts(
        items, annotators, labels, posteriors, num_annotators
    )
    class_concentration = class_prior_concentration + class_counts(items, posteriors)
    confusion_total = jnp.sum(confusion_concentration, -1)
    class_total = jnp.sum(class_concentration, keepdims=True)
    flat = jnp.concatenate([
        confusion_concentration.ravel(), confusion_total.ravel(), class_concentration, class_total
    ])
    dg_conf, dg_conf_total, dg_class, dg_class_total = _split(
        digamma(flat), confusion_concentration.shape, confusion_total.shape,
        class_concentration.shape, (1,),
    )
    expected_log_confusion = dg_conf - dg_conf_total[..., None]
    expected_log_class_prior = dg_class - dg_class_total
    row_log_norm, class_log_norm = _dirichlet_log_normalizers(
        confusion_concentration, class_concentration
    )
    # KL(Dir(a) || Dir(b)) = log(1/B(a)) - log(1/B(b)) + sum (a - b) E_a[log p].
    kl = (
        jnp.sum(row_log_norm) + class_log_norm - prior_log_norm
        + jnp.sum((confusion_concentration - confusion_prior) * expected_log_confusion)
        + jnp.sum((class_concentration - class_prior_concentration) * expected_log_class_prior)
    )
    return {
        "log_confusion": expected_log_confusion,
        "log_class_prior": expected_log_class_prior,
        "log_prior_density": -kl,
        "confusion": confusion_concentration / confusion_total[..., None],
        "class_prior": class_concentration / class_total,
        "confusion_concentration": confusion_concentration,
        "class_concentration": class_concentration,
    }

  model_m_step = map_m_step if method == "map" else variational_m_step
  posteriors, params, trace = _confusion_em(
      items, annotators, labels, model_m_step, num_items=num_items, num_classes=num_classes,
      num_iters=num_iters, tol=tol, stop_on=stop_on,
  )
  extra = {}
  if method == "variational":
    extra["confusion_concentration"] = params["confusion_concentration"]
  result = _confusion_result(posteriors, params, trace, items, extra)
  if method == "variational":
    result.extras["class_concentration"] = params["class_concentration"]
  return result


def bayesian_dawid_skene(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_iters: int = 50,
    num_items: int | None = None,
    num_annotators: int | None = None,
    tol: float | None = 1e-5,
    stop_on: str = "posteriors",
    prior_correct: float = 2.0,
    prior_incorrect: float = 1.0,
    prior_class: float = 1.0,
    method: str = "map",
) -> AggregationResult:
  """Dawid-Skene with Dirichlet priors, fitted by MAP EM or mean-field variational Bayes.

  Priors: confusion[a, k, :] ~ Dir(alpha0[k]) with alpha0[k, k] = `prior_correct` and
  alpha0[k, l != k] = `prior_incorrect`; class priors rho ~ Dir(`prior_class` * 1).
  The Bayesian Dawid-Skene / IBCC of Kim & Ghahramani 2012 and Simpson et al. 2013,
  "Dynamic Bayesian combination of multiple imperfect classifiers"; compared with
  other annotation models in Paun et al. 2018, "Comparing Bayesian models of
  annotation" (TACL 6).

  * `method="map"`: EM for the posterior mode. M-step
    confusion[a, k, l] ∝ n[a, k, l] + alpha0[k, l] - 1, rho[k] ∝ sum_i q[i, k] + nu0 - 1
    (the mode exists for concentrations >= 1; cells are floored at 1e-10 below that).
    The objective is log p(y | params) + log p(params).
  * `method="variational"`: mean-field q(z) q(confusion) q(rho). Updates
    q(confusion[a, k]) = Dir(alpha0[k] + n[a, k]), q(rho) = Dir(nu0 + sum_i q[i]), and
    q(z_i = k) ∝ exp(E[log rho_k] + sum_n E[log confusion[a_n, k, y_n]]) with
    E[log p_l] = digamma(alpha_l) - digamma(sum alpha). The objective is the evidence
    lower bound: sum_i log sum_k exp(...) - KL(q(confusion) || prior) - KL(q(rho) || prior).

  Args:
    items, annotators, labels, num_classes, num_iters, num_items, num_annotators, tol,
      stop_on: as in `dawid_skene`; extras "objective" traces the objective above.
    prior_correct: Dirichlet concentration on the diagonal, > 0.
    prior_incorrect: Dirichlet concentration off the diagonal, > 0.
    prior_class: Dirichlet concentration of the class priors, > 0.
    method: one of `BAYESIAN_METHODS`.

  Returns:
    `AggregationResult` as `dawid_skene`; "confusion" is the MAP estimate or the
    posterior mean; for "variational" also annotator_params "confusion_concentration"
    [A, K, K] and extras "class_concentration" [K].
  """
  check_choice(method, "method", BAYESIAN_METHODS)
  items, annotators, labels, sizes = _em_arguments(
      items, annotators, labels, num_classes, num_items, num_annotators, num_iters, tol, stop_on
  )
  prior_correct = _check_concentration(prior_correct, "prior_correct")
  prior_incorrect = _check_concentration(prior_incorrect, "prior_incorrect")
  prior_class = _check_concentration(prior_class, "prior_class")
  return _bayesian_dawid_skene(
      items, annotators, labels, jnp.float32(prior_correct), jnp.float32(prior_incorrect),
      jnp.float32(prior_class), method=method, **sizes,
  )
