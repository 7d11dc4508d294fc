"""Votes: plurality and weighted plurality with explicit tie-breaking.

* `majority_vote`: the plurality of the item's answers.
* `weighted_vote`: each answer counts with its annotator's weight (from calibration,
  golden-set accuracy or another model's reliabilities).

Both take the flat annotation arrays of `rlhf_jax.feedback.types` and return an
`AggregationResult` whose posterior is the vote decision and whose extras hold the raw
vote shares (the soft label). Annotator `reliability` is the annotator's agreement with
the voted label.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rlhf_jax._checks import check_choice
from rlhf_jax.feedback.models._arrays import annotation_arrays, is_traced
from rlhf_jax.feedback.models.em import item_counts, per_annotator_mean
from rlhf_jax.feedback.types import AggregationResult

__all__ = ["TIE_BREAKS", "majority_vote", "weighted_vote"]

TIE_BREAKS = ("lowest", "random", "uniform")

# Two weighted vote totals closer than this (relative) count as a tie, so that float
# rounding in sums of weights does not decide the label.
_TIE_RTOL = 1e-6


@functools.partial(
    jax.jit, static_argnames=("num_items", "num_annotators", "num_classes", "tie_break")
)
def _vote(
    items: jax.Array,
    annotators: jax.Array,
    labels: jax.Array,
    annotator_weights: jax.Array,
    key: jax.Array | None,
    *,
    num_items: int,
    num_annotators: int,
    num_classes: int,
    tie_break: str,
) -> AggregationResult:
  weights = annotator_weights[annotators]
  votes = jax.ops.segment_sum(
      jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * weights[:, None],
      items,
      num_segments=num_items,
  )
  total = jnp.sum(votes, axis=-1)
  has_votes = total > 0
  top = jnp.max(votes, axis=-1, keepdims=True)
  is_top = (votes >= top * (1.0 - _TIE_RTOL)) & has_votes[:, None]
  num_top = jnp.sum(is_top, axis=-1)
  if tie_break == "random":
    noise = jax.random.uniform(key, votes.shape)
    winner = jnp.argmax(jnp.where(is_top, noise, -1.0), axis=-1)
  else:
    winner = jnp.argmax(is_top, axis=-1)  # first True: the lowest tied class
  winner = winner.astype(jnp.int32)
  if tie_break == "uniform":
    decided = is_top / jnp.maximum(num_top, 1)[:, None]
  else:
    decided = jax.nn.one_hot(winner, num_classes, dtype=jnp.float32)
  uniform = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
  posteriors = jnp.where(has_votes[:, None], decided, uniform)
  vote_shares = jnp.where(
      has_votes[:, None], votes / jnp.where(has_votes, total, 1.0)[:, None], uniform
  )
  winner_share = jnp.take_along_axis(vote_shares, winner[:, None], axis=-1)[:, 0]
  confidence = jnp.where(has_votes, winner_share, 0.0)
  agreement = posteriors[items, labels]
  reliability = per_annotator_mean(agreement, annotators, num_annotators)
  extras = {
      "vote_shares": vote_shares,
      "is_tie": num_top > 1,
      "num_annotations": item_counts(items, num_items).astype(jnp.int32),
  }
  return AggregationResult(posteriors, winner, confidence, {"reliability": reliability}, extras)


def _check_tie_break(tie_break: str, key: jax.Array | None) -> None:
  check_choice(tie_break, "tie_break", TIE_BREAKS)
  if tie_break == "random" and key is None:
    raise ValueError('`tie_break="random"` needs a PRNG `key` (e.g. jax.random.key(0)).')


def majority_vote(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_items: int | None = None,
    num_annotators: int | None = None,
    tie_break: str = "lowest",
    key: jax.Array | None = None,
) -> AggregationResult:
  """Plurality vote per item, with explicit tie-breaking.

    votes[i, k] = #{n : item_n = i, label_n = k},   label_i = argmax_k votes[i, k]

  Ties between classes with the same top count are resolved by `tie_break`:
  `"lowest"` picks the lowest class index, `"random"` picks one of the tied classes
  uniformly with `key`, `"uniform"` leaves the tie in the posterior.

  Args:
    items, annotators, labels: int [N] flat annotations (see `feedback.types`).
    num_classes: K, static.
    num_items: I, static; inferred as `max(items) + 1` when None (outside `jit` only).
    num_annotators: A, static; inferred like `num_items`.
    tie_break: one of `TIE_BREAKS`.
    key: PRNG key, needed for `tie_break="random"`.

  Returns:
    `AggregationResult` with
      posteriors [I, K]: the vote decision as a distribution, one-hot on `labels`, or
        for `tie_break="uniform"` split evenly over the tied top classes;
      labels [I]: the voted class (lowest tied class under `"uniform"`);
      confidence [I]: share of the item's votes that agree with `labels`;
      annotator_params["reliability"] [A]: mean posterior mass of the annotator's
        answers, i.e. agreement with the voted label (0 for annotators without any);
      extras: "vote_shares" [I, K] (the raw soft label), "is_tie" [I],
        "num_annotations" [I].
    Items without annotations get a uniform posterior, label 0 and confidence 0.
  """
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=num_items,
      num_annotators=num_annotators,
  )
  _check_tie_break(tie_break, key)
  return _vote(
      items, annotators, labels, jnp.ones((num_annotators,), jnp.float32),
      key if tie_break == "random" else None,
      num_items=num_items, num_annotators=num_annotators, num_classes=num_classes,
      tie_break=tie_break,
  )


def weighted_vote(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    annotator_weights: ArrayLike,
    num_items: int | None = None,
    tie_break: str = "lowest",
    key: jax.Array | None = None,
) -> AggregationResult:
  """Vote in which each annotator's answer counts with the annotator's weight.

    votes[i, k] = sum_{n : item_n = i, label_n = k} annotator_weights[annotator_n]

  Weights come from calibration (golden-set accuracy, expert agreement) or from another
  model's reliabilities; all-ones weights give `majority_vote`. Totals within a relative
  1e-6 of the top count as tied.

  Args:
    items, annotators, labels: int [N] flat annotations.
    num_classes: K, static.
    annotator_weights: float [A], non-negative; A fixes `num_annotators`.
    num_items, tie_break, key: as in `majority_vote`.

  Returns:
    `AggregationResult` as `majority_vote`, with `confidence` the weighted share of the
    item's votes agreeing with `labels` (an item whose annotators all weigh 0 counts as
    unannotated) and `annotator_params["weight"]` the weights used.
  """
  annotator_weights = jnp.asarray(annotator_weights)
  if not jnp.issubdtype(annotator_weights.dtype, jnp.floating) and not jnp.issubdtype(
      annotator_weights.dtype, jnp.integer
  ):
    raise ValueError(f"`annotator_weights` must be numeric, got dtype {annotator_weights.dtype}.")
  if annotator_weights.ndim != 1:
    raise ValueError(
        f"`annotator_weights` must be [num_annotators], got shape {annotator_weights.shape}."
    )
  annotator_weights = annotator_weights.astype(jnp.float32)
  if not is_traced(annotator_weights):
    weights_np = np.asarray(annotator_weights)
    bad = np.flatnonzero(~(weights_np >= 0) | ~np.isfinite(weights_np))
    if bad.size:
      raise ValueError(
          "`annotator_weights` must be finite and >= 0, got "
          f"{weights_np[bad[0]]} for annotator {bad[0]}."
      )
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=num_items,
      num_annotators=int(annotator_weights.shape[0]),
  )
  _check_tie_break(tie_break, key)
  result = _vote(
      items, annotators, labels, annotator_weights,
      key if tie_break == "random" else None,
      num_items=num_items, num_annotators=num_annotators, num_classes=num_classes,
      tie_break=tie_break,
  )
  result.annotator_params["weight"] = annotator_weights
  return result
