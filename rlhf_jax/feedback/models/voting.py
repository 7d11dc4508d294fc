"""Votes: plurality and weighted plurality with explicit tie-breaking.

* `majority_vote`: the plurality of the item's answers.
* `weighted_vote`: each answer counts with its annotator's weight (from calibration,
  golden-set accuracy or another model's reliabilities).
* `wawa`: weighted by each annotator's agreement with the majority vote.
* `zero_based_skill`: weighted by skills fitted in gradient steps toward agreement with
  the weighted vote.
* `gold_majority_vote`: weighted by each annotator's accuracy on golden items.

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

from rlhf_jax._checks import check_choice, check_scalar_range
from rlhf_jax.feedback.models._arrays import annotation_arrays, check_size, is_traced
from rlhf_jax.feedback.models.em import item_counts, per_annotator_mean
from rlhf_jax.feedback.types import AggregationResult

__all__ = ["TIE_BREAKS", "gold_majority_vote", "majority_vote", "wawa", "weighted_vote", "zero_based_skill"]

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


# ----------------------------------------------------------------------------------
# Votes weighted by a skill estimated from the votes or from golden items.
# ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("num_items", "num_annotators", "num_classes"))
def _wawa(items, annotators, labels, *, num_items, num_annotators, num_classes):
  sizes = dict(num_items=num_items, num_annotators=num_annotators, num_classes=num_classes,
               tie_break="lowest")
  first = _vote(items, annotators, labels, jnp.ones((num_annotators,), jnp.float32), None, **sizes)
  return _skill_vote(items, annotators, labels, first.annotator_params["reliability"], sizes)


def _skill_vote(items, annotators, labels, skill, sizes) -> AggregationResult:
  """The vote weighted by `skill` [A], which it reports as annotator_params "skill"."""
  result = _vote(items, annotators, labels, skill, None, **sizes)
  result.annotator_params["skill"] = skill
  return result


def wawa(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_items: int | None = None,
    num_annotators: int | None = None,
) -> AggregationResult:
  """Worker Agreement With Aggregate: a majority vote weighted by agreement with the majority.

    skill[a] = #{n : annotator_n = a, label_n = mv[item_n]} / #{n : annotator_n = a}
    votes[i, k] = sum_{n : item_n = i, label_n = k} skill[annotator_n],  label_i = argmax_k

  where `mv` is the plain majority vote (ties to the lowest class). A common baseline of
  crowdsourcing practice (Appen's "worker agreement with aggregate"; crowd-kit's `Wawa`).

  Args:
    items, annotators, labels: int [N] flat annotations (see `feedback.types`).
    num_classes: K, static.
    num_items, num_annotators: static sizes, inferred when None (outside `jit` only).

  Returns:
    `AggregationResult` as `weighted_vote` (ties to the lowest class; extras
    "vote_shares" are the skill-weighted shares, crowd-kit's probabilities), with
    annotator_params "skill" [A] (the weights) and "reliability" [A] (agreement with the
    final label).
  """
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=num_items, num_annotators=num_annotators)
  return _wawa(items, annotators, labels, num_items=num_items, num_annotators=num_annotators,
               num_classes=num_classes)


@functools.partial(
    jax.jit, static_argnames=("num_items", "num_annotators", "num_classes", "num_iters", "lr_steps_to_reduce"))
def _zero_based_skill(items, annotators, labels, lr_init, lr_reduce_factor, eps, *, num_items, num_annotators,
                      num_classes, num_iters, lr_steps_to_reduce):
  sizes = dict(num_items=num_items, num_annotators=num_annotators, num_classes=num_classes,
               tie_break="lowest")
  given = jax.ops.segment_sum(jnp.ones(labels.shape, jnp.float32), labels, num_segments=num_classes)
  num_used = jnp.sum(given > 0)
  skill = jnp.full((num_annotators,), 1.0 / num_used + eps, jnp.float32)

  def body(iteration, carry):
    skill, rate = carry
    rate = jnp.where((iteration + 1) % lr_steps_to_reduce == 0, rate * lr_reduce_factor, rate)
    accuracy = _vote(items, annotators, labels, skill, None, **sizes).annotator_params["reliability"]
    return skill + rate * (accuracy - skill), rate

  skill, _ = jax.lax.fori_loop(0, num_iters, body, (skill, jnp.asarray(lr_init, jnp.float32)))
  return _skill_vote(items, annotators, labels, skill, sizes)


def zero_based_skill(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_items: int | None = None,
    num_annotators: int | None = None,
    num_iters: int = 100,
    lr_init: float = 1.0,
    lr_steps_to_reduce: int = 20,
    lr_reduce_factor: float = 0.5,
    eps: float = 1e-5,
) -> AggregationResult:
  """Zero-based skill (ZBS): skills fitted by gradient steps toward agreement with the vote.

  Starting from skill[a] = 1 / K_used + eps (K_used: classes anyone answered), each of
  `num_iters` iterations t = 1, 2, ... takes the skill-weighted vote and moves every
  skill toward the annotator's agreement with it, a gradient step on the squared error:

    lr_t = lr_init * lr_reduce_factor ** floor(t / lr_steps_to_reduce)
    skill[a] <- skill[a] + lr_t * (agreement[a] - skill[a])

  and the labels are the vote weighted by the final skills. crowd-kit's `ZeroBasedSkill`
  (same defaults, same schedule: the rate is reduced at iterations 20, 40, ...).

  Args:
    items, annotators, labels, num_classes, num_items, num_annotators: as in `wawa`.
    num_iters: skill updates, static.
    lr_init, lr_steps_to_reduce, lr_reduce_factor: the step-size schedule above.
    eps: added to the initial skill.

  Returns:
    `AggregationResult` as `wawa`, annotator_params "skill" the final skills.
  """
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=num_items, num_annotators=num_annotators)
  num_iters = check_size(num_iters, "num_iters")
  lr_steps_to_reduce = check_size(lr_steps_to_reduce, "lr_steps_to_reduce")
  check_scalar_range(lr_init, "lr_init", low=0.0, low_inclusive=False)
  check_scalar_range(lr_reduce_factor, "lr_reduce_factor", low=0.0, high=1.0, low_inclusive=False)
  check_scalar_range(eps, "eps", low=0.0)
  return _zero_based_skill(
      items, annotators, labels, jnp.float32(lr_init), jnp.float32(lr_reduce_factor), jnp.float32(eps),
      num_items=num_items, num_annotators=num_annotators, num_classes=num_classes, num_iters=num_iters,
      lr_steps_to_reduce=lr_steps_to_reduce)


@functools.partial(jax.jit, static_argnames=("num_items", "num_annotators", "num_classes", "tie_break"))
def _gold_majority_vote(items, annotators, labels, gold_labels, missing_accuracy, key, *, num_items,
                        num_annotators, num_classes, tie_break):
  gold = gold_labels[items]
  on_gold = (gold >= 0).astype(jnp.float32)
  correct = on_gold * (labels == gold)
  num_golden = jax.ops.segment_sum(on_gold, annotators, num_segments=num_annotators)
  num_correct = jax.ops.segment_sum(correct, annotators, num_segments=num_annotators)
  accuracy = jnp.where(num_golden > 0, num_correct / jnp.maximum(num_golden, 1.0), missing_accuracy)
  result = _vote(items, annotators, labels, accuracy, key, num_items=num_items, num_annotators=num_annotators,
                 num_classes=num_classes, tie_break=tie_break)
  result.annotator_params["golden_accuracy"] = accuracy
  result.annotator_params["num_golden"] = num_golden.astype(jnp.int32)
  return result


def gold_majority_vote(
    items: ArrayLike,
    annotators: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    gold_labels: ArrayLike,
    num_annotators: int | None = None,
    missing_accuracy: float | None = None,
    tie_break: str = "lowest",
    key: jax.Array | None = None,
) -> AggregationResult:
  """GoldMV: a vote weighted by each annotator's accuracy on the items with a known answer.

    accuracy[a] = #{n : annotator_n = a, gold[item_n] >= 0, label_n = gold[item_n]}
                  / #{n : annotator_n = a, gold[item_n] >= 0}
    votes[i, k] = sum_{n : item_n = i, label_n = k} accuracy[annotator_n]

  crowd-kit's `GoldMajorityVote`, which requires every annotator to have answered a
  golden item; here an annotator without one gets `missing_accuracy` (None: an error
  naming the first such annotator, as crowd-kit; under `jit` it must be given).

  Args:
    items, annotators, labels, num_classes: as in `majority_vote`.
    gold_labels: int [I] the known answer per item, -1 where unknown; I fixes `num_items`.
    num_annotators: A, static; inferred when None (outside `jit` only).
    missing_accuracy: weight of an annotator without golden answers, in [0, 1], or None.
    tie_break, key: as in `majority_vote`.

  Returns:
    `AggregationResult` as `weighted_vote`, with annotator_params "golden_accuracy" [A]
    (the weights) and "num_golden" [A] (golden answers behind each).
  """
  gold_labels = jnp.asarray(gold_labels)
  if not jnp.issubdtype(gold_labels.dtype, jnp.integer) or gold_labels.ndim != 1:
    raise ValueError(f"`gold_labels` must be an integer [num_items] array (-1: unknown), got dtype "
                     f"{gold_labels.dtype} with shape {gold_labels.shape}.")
  items, annotators, labels, num_items, num_annotators = annotation_arrays(
      items, annotators, labels, num_classes=num_classes, num_items=int(gold_labels.shape[0]),
      num_annotators=num_annotators)
  _check_tie_break(tie_break, key)
  if missing_accuracy is not None:
    check_scalar_range(missing_accuracy, "missing_accuracy", low=0.0, high=1.0)
  if not is_traced(gold_labels) and not is_traced(items):
    gold = np.asarray(gold_labels)
    bad = np.flatnonzero((gold < -1) | (gold >= num_classes))
    if bad.size:
      raise ValueError(f"`gold_labels` must lie in [-1, num_classes={num_classes}), got {int(gold[bad[0]])} "
                       f"for item {int(bad[0])}.")
    if missing_accuracy is None:
      on_gold = gold[np.asarray(items)] >= 0
      has_gold = np.bincount(np.asarray(annotators)[on_gold], minlength=num_annotators) > 0
      answered = np.bincount(np.asarray(annotators), minlength=num_annotators) > 0
      lacking = np.flatnonzero(answered & ~has_gold)
      if lacking.size:
        raise ValueError(f"annotator {int(lacking[0])} (and {lacking.size - 1} more) answered no item with a "
                         "gold label; give `missing_accuracy` (their weight) or gold labels they answered.")
  elif missing_accuracy is None:
    raise ValueError("`missing_accuracy` must be given under jit (annotators without golden answers "
                     "cannot be checked on traced arrays).")
  return _gold_majority_vote(
      items, annotators, labels, gold_labels.astype(jnp.int32),
      jnp.float32(0.0 if missing_accuracy is None else missing_accuracy),
      key if tie_break == "random" else None, num_items=num_items, num_annotators=num_annotators,
      num_classes=num_classes, tie_break=tie_break)
