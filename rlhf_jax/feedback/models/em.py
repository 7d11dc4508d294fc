"""The one EM driver of the annotator models, and the segment sums their steps share.

`run_em` alternates a model's M-step and E-step inside one `jax.lax.while_loop` that
stops once no posterior moves by `tol`. The Dawid-Skene family (`dawid_skene`,
`one_coin_dawid_skene`, `bayesian_dawid_skene`) shares the E-step too
(`confusion_e_step`) and differs only in its M-step; MACE and GLAD
(`spammer_models`) bring their own E-step, because their emission probabilities are
"one value if the answer is the true class, another otherwise" per annotation (GLAD's
depend on the item as well, so no [A, K, K] confusion table holds them). The helpers are
the counts every model needs: annotations per item, expected class counts, a floored
normalised log, vote shares (the usual EM start), per-annotator means, posteriors from a
log joint, and the argmax result. All take flat annotation arrays
(`rlhf_jax.feedback.types`) and are traceable."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlhf_jax.feedback.types import AggregationResult

__all__ = [
    "EStep", "MStep", "PROB_FLOOR", "Params", "argmax_result", "class_counts", "confusion_e_step",
    "STOP_RULES", "e_step_core", "item_counts", "normalized_log", "per_annotator_mean",
    "posteriors_from_log_joint", "run_em", "vote_share_init",
]

# What `run_em` compares with its tolerance: the largest move of a posterior, or the
# gain of the E-step's objective (crowd-kit's kind of rule).
STOP_RULES = ("posteriors", "objective")

# Probabilities are floored here before a log, as crowd-kit's DawidSkene clips its
# error matrices and priors at 1e-10: an answer never seen under some true class keeps
# a finite log-probability instead of -inf (which would veto that class for good).
PROB_FLOOR = 1e-10


def per_annotator_mean(
    values: jax.Array, annotators: jax.Array, num_annotators: int, fallback: float | jax.Array = 0.0
) -> jax.Array:
  """Mean of `values` [N] over each annotator's annotations; `fallback` for annotators without any."""
  totals = jax.ops.segment_sum(values, annotators, num_segments=num_annotators)
  counts = jax.ops.segment_sum(jnp.ones_like(values), annotators, num_segments=num_annotators)
  return jnp.where(counts > 0, totals / jnp.maximum(counts, 1.0), fallback)


def item_counts(items: jax.Array, num_items: int) -> jax.Array:
  """Annotations per item, float32 [I]."""
  return jax.ops.segment_sum(jnp.ones(items.shape, jnp.float32), items, num_segments=num_items)


def normalized_log(pseudo_counts: jax.Array, floor: float | jax.Array = PROB_FLOOR) -> jax.Array:
  """log of `pseudo_counts` normalised over the last axis, each entry floored first."""
  floored = jnp.maximum(pseudo_counts, floor)
  return jnp.log(floored) - jnp.log(jnp.sum(floored, axis=-1, keepdims=True))


def e_step_core(
    items: jax.Array,
    annotators: jax.Array,
    labels: jax.Array,
    log_confusion: jax.Array,
    item_log_priors: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Posteriors [I, K] and per-item log marginal likelihoods [I].

    log p(z_i = k | y) = item_log_priors[i, k] + sum_{n: item_n = i} log_confusion[a_n, k, y_n]
                         - logsumexp_k(...)

  The gather reads one row of `log_confusion` laid out as [A * K_observed, K_true] per
  annotation; the sum over an item's annotations is a segment sum.
  """
  num_annotators, num_classes, _ = log_confusion.shape
  by_observed = log_confusion.transpose(0, 2, 1).reshape(num_annotators * num_classes, num_classes)
  per_annotation = by_observed[annotators * num_classes + labels]  # [N, K_true]
  log_joint = item_log_priors + jax.ops.segment_sum(
      per_annotation, items, num_segments=item_log_priors.shape[0]
  )
  return posteriors_from_log_joint(log_joint)


def posteriors_from_log_joint(log_joint: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(posteriors [I, K], log marginal likelihoods [I]) from log p(z_i = k, answers of i) [I, K]."""
  log_marginal = jax.nn.logsumexp(log_joint, axis=-1)
  posteriors = jnp.exp(log_joint - log_marginal[:, None])
  return posteriors, log_marginal


def argmax_result(
    posteriors: jax.Array, annotator_params: dict[str, jax.Array], extras: dict[str, Any]
) -> AggregationResult:
  """Labels = argmax of the posteriors (ties to the lowest class), confidence = their mass."""
  labels = jnp.argmax(posteriors, axis=-1).astype(jnp.int32)
  confidence = jnp.take_along_axis(posteriors, labels[:, None], axis=-1)[:, 0]
  return AggregationResult(posteriors, labels, confidence, annotator_params, extras)


def vote_share_init(items: jax.Array, labels: jax.Array, num_items: int, num_classes: int) -> jax.Array:
  """Vote shares per item (uniform for items without annotations): crowd-kit's start."""
  votes = jax.ops.segment_sum(
      jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), items, num_segments=num_items
  )
  total = jnp.sum(votes, axis=-1, keepdims=True)
  return jnp.where(total > 0, votes / jnp.maximum(total, 1.0), 1.0 / num_classes)


def class_counts(items: jax.Array, posteriors: jax.Array) -> jax.Array:
  """Expected class counts over the items that have at least one annotation."""
  annotated = item_counts(items, posteriors.shape[0]) > 0
  return jnp.sum(jnp.where(annotated[:, None], posteriors, 0.0), axis=0)


# ----------------------------------------------------------------------------------
# The driver.
# ----------------------------------------------------------------------------------

# A model's parameters: a dict of arrays (a pytree), whatever its E-step reads.
Params = dict[str, Any]
# M-step: (posteriors [I, K], the parameters those posteriors came from) -> parameters.
# Closed-form M-steps (Dawid-Skene) ignore the second argument; MACE reads it for the
# E-step's "annotator knew the answer" responsibilities, GLAD to warm-start its
# gradient steps.
MStep = Callable[[jax.Array, Params], Params]
# E-step: parameters -> (posteriors [I, K], scalars traced per iteration). The scalars
# hold the "objective" EM increases (log-likelihood plus the parameters' log prior
# density, or the variational lower bound) and whatever else the model reports.
EStep = Callable[[Params], tuple[jax.Array, dict[str, jax.Array]]]


def confusion_e_step(
    items: jax.Array, annotators: jax.Array, labels: jax.Array, num_items: int
) -> EStep:
  """The Dawid-Skene family's E-step (`e_step_core`) as an `EStep`.

  It reads "log_confusion" [A, K, K], "log_class_prior" [K] and "log_prior_density"
  (the parameters' log prior, or minus the KL terms of the variational bound) from the
  parameters; its "objective" is the observed-data log-likelihood of the annotated
  items plus that density, per annotation.
  """
  num_annotations = items.shape[0]
  annotated = item_counts(items, num_items) > 0

  def e_step(params: Params) -> tuple[jax.Array, dict[str, jax.Array]]:
    log_priors = jnp.broadcast_to(
        params["log_class_prior"], (num_items, params["log_class_prior"].shape[-1])
    )
    posteriors, log_marginal = e_step_core(
        items, annotators, labels, params["log_confusion"], log_priors
    )
    data_term = jnp.sum(jnp.where(annotated, log_marginal, 0.0))
    return posteriors, {"objective": (data_term + params["log_prior_density"]) / num_annotations}

  return e_step


def run_em(
    init_posteriors: jax.Array,
    init_params: Params | None,
    m_step: MStep,
    e_step: EStep,
    *,
    num_iters: int,
    tol: float | None,
    refit_last: bool,
    stop_on: str = "posteriors",
) -> tuple[jax.Array, Params, dict[str, jax.Array]]:
  """The one EM loop of the annotator models: `m_step` then `e_step`, in one `while_loop`.

  Iteration t (t = 1, 2, ...) runs the M-step on the current posteriors (and the
  parameters they came from), then the E-step with the new parameters, which also yields
  the objective at them. It stops after `num_iters` iterations, or after the first
  iteration in which no posterior probability moved by `tol` or more (`stop_on`
  "posteriors", the default), or, with `stop_on` "objective", in which the E-step's
  objective gained less than `tol` (or fell): crowd-kit's kind of rule, on the objective
  EM increases (crowd-kit's DawidSkene compares a bound that counts the class prior once
  per annotation, so the two need not stop at the same iteration). The posteriors are
  the steadier signal: in float32 a per-annotation log-likelihood is resolved to ~1e-8
  only, while labels still move at changes of 1e-7, so the objective rule stops earlier
  with a few labels not yet settled. Models differ in what they return at the stop:

  * `refit_last=True` (the Dawid-Skene family, as crowd-kit): one last loop pass runs
    only the M-step, so the returned parameters are the M-step on the returned
    posteriors; the pass is the loop body again, so each step is compiled once.
  * `refit_last=False` (MACE, GLAD, as their papers and crowd-kit): the loop ends after
    the E-step; the returned parameters are those the returned posteriors came from (so
    the traced objective is theirs). GLAD's M-step is many gradient steps: no pass is
    spent on parameters that would be thrown away.

  Args:
    init_posteriors: float [I, K] start (vote shares, or the E-step of initial parameters).
    init_params: the parameters `init_posteriors` came from; None when `m_step` does not
      read them (zeros of its output's shapes are then carried).
    m_step, e_step: the model's two steps (`MStep`, `EStep`).
    num_iters: most iterations, static; tol: None runs exactly `num_iters`.
    refit_last: see above.
    stop_on: "posteriors" or "objective" (the E-step's scalar of that name), static.

  Returns:
    (posteriors, params, trace); trace holds each scalar of the E-step and
    "posterior_change" (max |change| of a posterior) as [num_iters] arrays, NaN after the
    stop, and "num_iters", the iterations run.
  """
  if init_params is None:
    shapes = jax.eval_shape(lambda p: m_step(p, None), init_posteriors)
    init_params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  scalar_names = list(jax.eval_shape(e_step, init_params)[1])
  if stop_on not in STOP_RULES:
    raise ValueError(f"stop_on must be one of {', '.join(map(repr, STOP_RULES))}; got {stop_on!r}.")
  if stop_on == "objective" and "objective" not in scalar_names:
    raise ValueError("stop_on='objective': this model's E-step reports no objective; use 'posteriors'.")

  def stop(iteration, change):
    finished = iteration >= num_iters
    if tol is not None:
      finished |= change < tol
    return finished

  def stop_signal(posteriors, new_posteriors, scalars, previous_objective):
    """What `tol` is compared with: the largest posterior move, or the objective's gain."""
    if stop_on == "objective":
      return scalars["objective"] - previous_objective
    return jnp.max(jnp.abs(new_posteriors - posteriors))

  def cond(state):
    return ~state["finished"]

  def body(state):
    iteration, posteriors = state["iteration"], state["posteriors"]
    params = m_step(posteriors, state["params"])
    # With a refit, a pass that starts stopped only refits the parameters.
    counted = ~stop(iteration, state["change"]) if refit_last else jnp.asarray(True)
    new_posteriors, scalars = e_step(params)
    change = stop_signal(posteriors, new_posteriors, scalars, state["objective"])
    scalars = {**scalars, "posterior_change": jnp.max(jnp.abs(new_posteriors - posteriors))}
    slot = jnp.minimum(iteration, num_iters - 1)
    next_iteration = jnp.where(counted, iteration + 1, iteration)
    return {
        "iteration": next_iteration,
        "posteriors": jnp.where(counted, new_posteriors, posteriors),
        "params": params,
        "change": change,
        "objective": jnp.where(counted, scalars.get("objective", state["objective"]), state["objective"]),
        "trace": {
            name: jnp.where(counted, trace.at[slot].set(scalars[name]), trace)
            for name, trace in state["trace"].items()
        },
        "finished": ~counted if refit_last else stop(next_iteration, change),
    }

  empty_trace = jnp.full((num_iters,), jnp.nan, jnp.float32)
  state = {
      "iteration": jnp.asarray(0, jnp.int32),
      "posteriors": init_posteriors,
      "params": init_params,
      "change": jnp.asarray(jnp.inf, jnp.float32),
      "objective": jnp.asarray(-jnp.inf, jnp.float32),
      "trace": {name: empty_trace for name in [*scalar_names, "posterior_change"]},
      "finished": jnp.asarray(False),
  }
  state = jax.lax.while_loop(cond, body, state)
  return state["posteriors"], state["params"], {**state["trace"], "num_iters": state["iteration"]}
