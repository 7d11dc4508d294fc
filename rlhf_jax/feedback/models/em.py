"""The EM driver of the annotator models, and the segment sums their steps share.

`run_em` alternates a model's M-step (posteriors -> parameters) and the Dawid-Skene
E-step (`e_step_core`) inside one `jax.lax.while_loop` that stops once no posterior
moves by `tol`; the Dawid-Skene family (`dawid_skene`, `one_coin_dawid_skene`,
`bayesian_dawid_skene`) differs only in its M-step. The helpers are the counts every
model needs: annotations per item, expected class counts, a floored normalised log,
vote shares (the usual EM start), per-annotator means, and the argmax result.
All take flat annotation arrays (`rlhf_jax.feedback.types`) and are traceable.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlhf_jax.feedback.types import AggregationResult

__all__ = ["MStep", "PROB_FLOOR", "argmax_result", "class_counts", "e_step_core", "item_counts",
           "normalized_log", "per_annotator_mean", "run_em", "vote_share_init"]

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

# A model's M-step maps posteriors to a dict with "log_confusion" [A, K, K] and
# "log_class_prior" [K] (what the next E-step uses) and "log_prior_density" (the
# parameters' log prior, or minus the KL terms of the variational bound) that is added
# to the data term to form the objective EM increases.
MStep = Callable[[jax.Array], dict[str, jax.Array]]


def run_em(
    items: jax.Array,
    annotators: jax.Array,
    labels: jax.Array,
    init_posteriors: jax.Array,
    model_m_step: MStep,
    *,
    num_iters: int,
    tol: float | None,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
  """Alternates `model_m_step` and `e_step_core` in one `while_loop`.

  Iteration t (t = 1, 2, ...) runs the M-step on the current posteriors, then the
  E-step with those parameters, which also yields the objective at them (the
  observed-data log-likelihood plus the log prior density, or the variational lower
  bound). It stops after `num_iters` iterations, or after the first iteration in which
  no posterior probability moved by `tol` or more. (crowd-kit stops on the change of
  its objective; in float32 a per-annotation log-likelihood is resolved to ~1e-8 only,
  while labels still move at changes of 1e-7, so the posteriors are the steadier
  signal.) One last loop pass runs only the M-step, so the returned parameters are the
  M-step on the returned posteriors, as in crowd-kit, and each step is compiled once.
  """
  num_items = init_posteriors.shape[0]
  num_annotations = items.shape[0]
  annotated = item_counts(items, num_items) > 0

  def cond(state):
    return ~state["finished"]

  def body(state):
    iteration, posteriors = state["iteration"], state["posteriors"]
    params = model_m_step(posteriors)
    finished = iteration >= num_iters
    if tol is not None:
      finished |= state["change"] < tol
    log_priors = jnp.broadcast_to(params["log_class_prior"], posteriors.shape)
    new_posteriors, log_marginal = e_step_core(
        items, annotators, labels, params["log_confusion"], log_priors
    )
    data_term = jnp.sum(jnp.where(annotated, log_marginal, 0.0))
    objective = (data_term + params["log_prior_density"]) / num_annotations
    change = jnp.max(jnp.abs(new_posteriors - posteriors))
    slot = jnp.minimum(iteration, num_iters - 1)
    return {
        "iteration": jnp.where(finished, iteration, iteration + 1),
        "posteriors": jnp.where(finished, posteriors, new_posteriors),
        "params": params,
        "change": change,
        "objective": jnp.where(
            finished, state["objective"], state["objective"].at[slot].set(objective)
        ),
        "posterior_change": jnp.where(
            finished, state["posterior_change"], state["posterior_change"].at[slot].set(change)
        ),
        "finished": finished,
    }

  params_shapes = jax.eval_shape(model_m_step, init_posteriors)
  empty_trace = jnp.full((num_iters,), jnp.nan, jnp.float32)
  state = {
      "iteration": jnp.asarray(0, jnp.int32),
      "posteriors": init_posteriors,
      "params": jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params_shapes),
      "change": jnp.asarray(jnp.inf, jnp.float32),
      "objective": empty_trace,
      "posterior_change": empty_trace,
      "finished": jnp.asarray(False),
  }
  state = jax.lax.while_loop(cond, body, state)
  trace = {
      "objective": state["objective"],
      "posterior_change": state["posterior_change"],
      "num_iters": state["iteration"],
  }
  return state["posteriors"], state["params"], trace
