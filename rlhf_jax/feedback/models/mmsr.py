"""M-MSR: annotator skills by robust rank-one completion of their agreement matrix.

Ma & Olshevsky 2020, "Adversarial crowdsourcing through robust rank-one matrix
completion" (NeurIPS 33; arXiv 2010.12181). Under a one-coin model with K classes,
annotator a answers correctly with probability p_a, and with s_a = (K p_a - 1) / (K - 1)
two annotators a != b agree on a shared item with probability such that

  E[ K / (K - 1) * agree[a, b] - 1 / (K - 1) ] = s_a s_b,

where agree[a, b] is the share of their shared items they answered alike. M-MSR fits
the rank-one |C| ~ u v^T on the observed pairs with Mean-Subsequence-Reduced updates (a
mean that drops the F largest and F smallest ratios, so that F adversarial annotators
cannot pull it, F = floor(min_b #partners(b) / 2) - 1):

  v[b] <- trimmed mean over a ~ b of |C[a, b]| / u[a],
  u[a] <- trimmed mean over b ~ a of |C[a, b]| / v[b],

until ||u v^T - u' v'^T||_F < tol. The magnitudes are |s| = u / sqrt(|u| / |v|); the
signs come from the signed graph of C (a negative entry: opposite signs; a positive one:
equal signs, through an auxiliary node), as the sign pattern of the eigenvector of its
random-walk matrix W with the eigenvalue closest to -1, oriented so that most annotators
are positive. Clipped to [-1 / (K - 1) + 1 / sqrt(T), 1 - 1 / sqrt(T)] (T items), the
skills give p = s (K - 1) / K + 1 / K and the labels are the one-coin posterior

  P(z_i = k) ∝ exp( sum_{n : item_n = i, label_n = k} log((K - 1) p_a / (1 - p_a)) ),

a weighted vote with weights log((K - 1) p / (1 - p)).

As in crowd-kit's `MMSR` (its source was read for the details): K is the number of
classes anyone answered, u and v start equal, U(0, 1); an annotator's last answer on an
item counts. Three differences: the sign vector is found by power iteration on (I - W) / 2
(matrix-free, where crowd-kit builds the dense graph with one node per positive pair)
on the pairs that share items (crowd-kit's graph also joins every pair that shares none,
and every annotator to itself, by a negative edge); and the labels are the argmax of the weighted sum over all classes (crowd-kit divides the
sums by their total before the argmax, which flips it when the total is negative). The
agreement matrices are dense [A, A] and the observation table [A, I]: for the annotator
counts of crowdsourcing data sets, not millions of annotators.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rlhf_jax.feedback.models._arrays import annotation_arrays, check_size, check_tol
from rlhf_jax.feedback.models.em import item_counts
from rlhf_jax.feedback.types import AggregationResult

__all__ = ["agreement_matrix", "mmsr"]

# Relative change of u v^T that float32 cannot resolve (a few ulps): counted as converged.
_RESOLUTION = 4 * float(np.finfo(np.float32).eps)


def agreement_matrix(items: np.ndarray, annotators: np.ndarray, labels: np.ndarray, *, num_items: int,
                     num_annotators: int) -> tuple[np.ndarray, np.ndarray, int]:
  """The centred agreement matrix C [A, A], the shared-item counts [A, A] and K used.

    C[a, b] = K / (K - 1) * agree[a, b] - 1 / (K - 1),  agree = 0 where nothing is shared

  An annotator's last answer on an item counts (crowd-kit's observation matrix).
  """
  used = np.unique(labels)
  num_used = int(used.size)
  if num_used < 2:
    raise ValueError(f"M-MSR needs answers in at least two classes, got only class {int(used[0])}.")
  observed = np.zeros((num_annotators, num_items), np.int32)
  observed[annotators, items] = np.searchsorted(used, labels) + 1  # last answer wins
  answered = (observed > 0).astype(np.float64)
  shared = answered @ answered.T
  np.fill_diagonal(shared, 0.0)
  agree = np.zeros_like(shared)
  for k in range(1, num_used + 1):
    same = (observed == k).astype(np.float64)
    agree += same @ same.T
  np.fill_diagonal(agree, 0.0)
  share = np.where(shared > 0, agree / np.maximum(shared, 1.0), 0.0)
  centred = share * num_used / (num_used - 1) - 1.0 / (num_used - 1)
  return centred, shared, num_used


def _trimmed_means(ratios, observed, current, trim, fallback_zero):
  """Column-wise MSR means of `ratios` [R, C] over `observed`, as crowd-kit's
  `_remove_largest_and_smallest_F_value` followed by the mean (see `mmsr`)."""
  count = jnp.sum(observed, axis=0)
  values = jnp.sort(jnp.where(observed, ratios, jnp.inf), axis=0)
  position = jnp.arange(ratios.shape[0])[:, None]
  valid = position < count[None, :]
  below = jnp.sum(valid & (values < current[None, :]), axis=0)
  # Drop the `trim` smallest, or every value below the current one when fewer are below;
  # a negative `trim` keeps only the largest -trim values (Python's y[trim:]).
  start = jnp.where(trim >= 0, jnp.where(below < trim, below, trim), jnp.maximum(count + trim, 0))
  kept = valid & (position >= start[None, :])
  above = jnp.sum(kept & (values > current[None, :]), axis=0)
  end = jnp.where(trim >= 0, jnp.where(above < trim, count - above, count - trim), count)
  kept &= position < end[None, :]
  num_kept = jnp.sum(kept, axis=0)
  total = jnp.sum(jnp.where(kept, values, 0.0), axis=0)
  # A single kept zero becomes 1 / sqrt(T), so that no factor collapses to 0.
  total = jnp.where((num_kept == 1) & (total == 0.0), fallback_zero, total)
  return jnp.where(num_kept > 0, total / jnp.maximum(num_kept, 1), current)


@functools.partial(jax.jit, static_argnames=("num_iters", "tol", "sign_iters"))
def _fit_skills(centred, shared, num_used, num_items_used, trim, key, *, num_iters, tol, sign_iters):
  num_annotators = centred.shape[0]
  observed = shared > 0
  magnitude = jnp.abs(centred)
  fallback_zero = 1.0 / jnp.sqrt(num_items_used)
  start = jax.random.uniform(key, (num_annotators,), jnp.float32)

  def cond(state):
    return (state[2] < num_iters) & (state[3] >= (0.0 if tol is None else tol))

  def body(state):
    u, v, iteration, _ = state
    new_v = _trimmed_means(magnitude / u[:, None], observed, v, trim, fallback_zero)
    new_u = _trimmed_means((magnitude / new_v[None, :]).T, observed.T, u, trim, fallback_zero)
    product = jnp.outer(new_u, new_v)
    loss = jnp.linalg.norm(product - jnp.outer(u, v))
    # A change below float32's resolution of the product is no change: stop there too
    # (crowd-kit's float64 reaches its 1e-10; float32 would run out the cap instead).
    loss = jnp.where(loss <= _RESOLUTION * jnp.linalg.norm(product), 0.0, loss)
    return new_u, new_v, iteration + 1, loss

  u, v, iterations, loss = jax.lax.while_loop(cond, body, (start, start, 0, jnp.float32(jnp.inf)))
  scale = jnp.sqrt(jnp.linalg.norm(u) / jnp.linalg.norm(v))
  magnitudes = u / scale

  # Signs: nodes of the signed graph are the annotators with a partner, joined directly
  # for a negative entry of C on a shared pair and through one auxiliary node per positive
  # one (above the diagonal).
  valid = jnp.any(observed, axis=1)
  pair = observed & valid[:, None] & valid[None, :]
  negative = (pair & (centred < 0)).astype(jnp.float32)
  positive = (pair & (centred > 0) & (jnp.arange(num_annotators)[:, None] < jnp.arange(num_annotators)[None, :]))
  positive = positive.astype(jnp.float32)
  positive_sym = positive + positive.T
  degree = jnp.sum(negative, axis=1) + jnp.sum(positive_sym, axis=1)
  degree = jnp.where(degree > 0, degree, 1.0)

  def walk(x, aux):
    """W [x; aux] of the random walk on the graph, for annotator values x [A] and the
    values aux [A, A] of the auxiliary node of each positive pair (upper triangle)."""
    new_x = (negative @ x + jnp.sum(positive * aux, axis=1) + jnp.sum(positive * aux, axis=0)) / degree
    new_aux = positive * 0.5 * (x[:, None] + x[None, :])
    return new_x, new_aux

  def power(_, carry):
    x, aux = carry
    wx, waux = walk(x, aux)
    x, aux = 0.5 * (x - wx), 0.5 * (aux - waux)  # (I - W) / 2: the eigenvalue nearest -1 dominates
    norm = jnp.sqrt(jnp.sum(x * x) + jnp.sum(aux * aux))
    return x / norm, aux / norm

  sign_key = jax.random.fold_in(key, 1)
  x0 = jnp.where(valid, jax.random.normal(sign_key, (num_annotators,)), 0.0)
  aux0 = positive * jax.random.normal(jax.random.fold_in(key, 2), (num_annotators, num_annotators))
  x, _ = jax.lax.fori_loop(0, sign_iters, power, (x0, aux0))
  signs = jnp.where(valid, jnp.sign(x), 0.0)
  orientation = jnp.where(jnp.sum(signs) < 0, -1.0, 1.0)
  skills = orientation * signs * magnitudes
  root = jnp.sqrt(num_items_used)
  skills = jnp.clip(skills, -1.0 / (num_used - 1) + 1.0 / root, 1.0 - 1.0 / root)
  correct = skills * (num_used - 1) / num_used + 1.0 / num_used
  return correct, iterations, loss


@functools.partial(jax.jit, static_argnames=("num_items", "num_annotators", "num_classes"))
def _weighted_posteriors(items, annotators, labels, weights, *, num_items, num_annotators, num_classes):
  scores = jax.ops.segment_sum(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * weights[annotators][:, None],
                               items, num_segments=num_items)
  posteriors = jax.nn.softmax(scores, axis=-1)
  labels_out = jnp.argmax(scores, axis=-1).astype(jnp.int32)
  confidence = jnp.take_along_axis(posteriors, labels_out[:, None], axis=-1)[:, 0]
  extras = {"scores": scores, "num_annotations": item_counts(items, num_items).astype(jnp.int32)}
  return posteriors, labels_out, confidence, extras


def mmsr(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_items: int | None = None,
    num_annotators: int | None = None,
    num_iters: int = 10000,
    tol: float | None = 1e-10,
    sign_iters: int = 2000,
    key: jax.Array | None = None,
) -> AggregationResult:
  """M-MSR (see the module docstring): skills from the agreement matrix, then a one-coin vote.

  Args:
    items, annotators, labels: int [N] flat annotations (concrete arrays: the agreement
      matrix is built on the host).
    num_classes: K, static (the skills use the number of classes anyone answered).
    num_items, num_annotators: sizes, inferred when None.
    num_iters: most MSR sweeps (crowd-kit's default 10000); `tol`: stop once
      ||u v^T - u' v'^T||_F < tol, or once the change is below float32's resolution of
      ||u v^T||_F (4 ulps; crowd-kit computes in float64).
    sign_iters: power iterations for the sign vector.
    key: PRNG key of the start of u = v ~ U(0, 1) and of the power iteration; None uses
      `jax.random.key(0)`.

  Returns:
    `AggregationResult`: posteriors [I, K] (the one-coin posterior with uniform class
    prior), labels [I] (argmax of the weighted sums, ties to the lowest class),
    confidence [I]; annotator_params "reliability" [A] (p_a, the estimated probability
    of a correct answer) and "weight" [A] (log((K - 1) p / (1 - p))); extras "scores"
    [I, K], "num_iters", "loss" (the last update's change), "num_annotations" [I].
  """
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=num_items, num_annotators=num_annotators)
  num_iters = check_size(num_iters, "num_iters")
  sign_iters = check_size(sign_iters, "sign_iters")
  tol = check_tol(tol)
  items_np, annotators_np, labels_np = (np.asarray(x) for x in (items, annotators, labels))
  centred, shared, num_used = agreement_matrix(items_np, annotators_np, labels_np, num_items=num_items,
                                               num_annotators=num_annotators)
  partners = (shared > 0).sum(axis=0)
  trim = int(np.floor(partners.min() / 2)) - 1
  num_items_used = int(np.unique(items_np).size)
  key = jax.random.key(0) if key is None else key
  correct, iterations, loss = _fit_skills(
      jnp.asarray(centred, jnp.float32), jnp.asarray(shared, jnp.float32), jnp.float32(num_used),
      jnp.float32(num_items_used), jnp.int32(trim), key, num_iters=num_iters, tol=tol, sign_iters=sign_iters)
  weights = jnp.log(correct * (num_used - 1) / (1.0 - correct))
  posteriors, labels_out, confidence, extras = _weighted_posteriors(
      items, annotators, labels, weights, num_items=num_items, num_annotators=num_annotators,
      num_classes=num_classes)
  extras.update({"num_iters": iterations, "loss": loss})
  return AggregationResult(posteriors, labels_out, confidence, {"reliability": correct, "weight": weights}, extras)
