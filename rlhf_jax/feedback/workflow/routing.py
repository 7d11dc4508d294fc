"""Routing: expert review, difficulty, hard-item assignment, pricing and budgets.

* `route_items`: items whose posterior confidence (or agreement) is below a threshold
  go to an expert-review queue and stay out of training until resolved.
* `resolve_expert_reviews`: merges expert decisions back; the label's source becomes
  "expert" (lineage), unresolved review items stay "pending" and out of training.
* `difficulty`: posterior entropy normalised by log K, in [0, 1].
* `assign_hard_items`: hard comparisons go to the most skilled annotators, easy ones to
  the others, with balanced loads.
* `price_items` and `simulate_budget`: dynamic pricing (hard items cost more) and what a
  labelling budget buys: how many items, at what expected accuracy.

Inputs are the per-item outputs of an aggregation method (`AggregationResult`:
`posteriors` [num_items, K], `labels`, `confidence`).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from rlhf_jax._checks import as_float, check_choice, check_rank, check_scalar_range

__all__ = [
    "BudgetSimulation",
    "HardItemAssignment",
    "LABEL_SOURCES",
    "ResolvedLabels",
    "assign_hard_items",
    "difficulty",
    "majority_vote_accuracy",
    "price_items",
    "resolve_expert_reviews",
    "route_items",
    "simulate_budget",
]

# Lineage of a label: codes of `ResolvedLabels.source`.
LABEL_SOURCES = ("crowd", "expert", "pending")
CROWD, EXPERT, PENDING = range(len(LABEL_SOURCES))


def _posteriors(posteriors: Any) -> jax.Array:
  posteriors = as_float(posteriors, "posteriors")
  check_rank(posteriors, "posteriors", 2)
  if posteriors.shape[1] < 2:
    raise ValueError(f"`posteriors` must have at least 2 classes, got shape {posteriors.shape}.")
  return posteriors


def route_items(
    posteriors: Any,
    *,
    agreement: Any = None,
    confidence_threshold: float = 0.7,
    agreement_threshold: float | None = None,
    confidence: Any = None,
) -> jax.Array:
  """Expert-review mask: true for items that need an expert before training.

    review = (confidence[i] < confidence_threshold)
             or (agreement[i] < agreement_threshold)      (when a threshold is given)

  with `confidence[i] = max_k posteriors[i, k]` unless given. Give the method's own
  `AggregationResult.confidence` for the votes (`majority_vote`, `weighted_vote`): their
  posteriors are the one-hot decision, so their maximum is 1 for every item and no item
  would ever be routed, while their confidence is the vote share of the label.

  An item whose confidence or agreement is NaN (e.g. no annotations) is routed to
  review: only items that pass every check are kept for training. Use the mask with
  `resolve_expert_reviews`, whose `train_mask` keeps routed items out of training until
  an expert label arrives.

  Args:
    posteriors: [num_items, K] posterior class probabilities.
    agreement: [num_items] per-item agreement score (e.g. share of agreeing votes), or
      None.
    confidence_threshold: items with confidence strictly below go to review.
    agreement_threshold: items with agreement strictly below go to review; requires
      `agreement` (and `agreement` requires a threshold, so it is never silently unused).
    confidence: [num_items] the confidence of each item's label to compare with
      `confidence_threshold` (e.g. the vote share), or None for the largest posterior.

  Returns:
    bool [num_items], true = send to expert review.
  """
  posteriors = _posteriors(posteriors)
  check_scalar_range(confidence_threshold, "confidence_threshold", low=0.0, high=1.0, high_inclusive=True)
  if (agreement is None) != (agreement_threshold is None):
    raise ValueError(
        "`agreement` and `agreement_threshold` go together: got "
        f"agreement={'None' if agreement is None else 'an array'}, agreement_threshold={agreement_threshold!r}."
    )
  if agreement is not None:
    agreement = as_float(agreement, "agreement")
    if agreement.shape != posteriors.shape[:1]:
      raise ValueError(
          f"`agreement` must have shape (num_items,) = {posteriors.shape[:1]}, got {agreement.shape}."
      )
  if confidence is not None:
    confidence = as_float(confidence, "confidence")
    if confidence.shape != posteriors.shape[:1]:
      raise ValueError(
          f"`confidence` must have shape (num_items,) = {posteriors.shape[:1]}, got {confidence.shape}."
      )
  return _route(posteriors, agreement, confidence, confidence_threshold, agreement_threshold)


@jax.jit
def _route(posteriors, agreement, confidence, confidence_threshold, agreement_threshold):
  if confidence is None:
    confidence = jnp.max(posteriors, axis=1)
  # `~(x >= t)` rather than `x < t`: NaN (no evidence) goes to review.
  review = ~(confidence >= confidence_threshold)
  if agreement is not None:
    review = review | ~(agreement >= agreement_threshold)
  return review


def difficulty(posteriors: Any) -> jax.Array:
  """Posterior entropy normalised to [0, 1]: H(p) / log K = -sum_k p_k log p_k / log K.

  0 for a certain item, 1 for a uniform posterior (the hardest). Zero probabilities
  contribute 0 (`xlogy`).

  Args:
    posteriors: [num_items, K] with K >= 2.

  Returns:
    float [num_items].
  """
  return _difficulty(_posteriors(posteriors))


@jax.jit
def _difficulty(posteriors):
  entropy = -jnp.sum(xlogy(posteriors, posteriors), axis=1)
  return entropy / math.log(posteriors.shape[1])


class HardItemAssignment(NamedTuple):
  """Attributes:
    annotators: [num_items, num_per_item] int32 annotators asked to label each item.
    is_hard: [num_items] bool, difficulty >= hard_threshold.
    skilled: [num_annotators] bool, the annotators in the skilled pool.
  """

  annotators: jax.Array
  is_hard: jax.Array
  skilled: jax.Array


def assign_hard_items(
    difficulty: Any,
    annotator_skill: Any,
    *,
    hard_threshold: float = 0.5,
    skilled_share: float = 0.25,
    num_per_item: int = 1,
    key: jax.Array | None = None,
) -> HardItemAssignment:
  """Routes hard comparisons to high-skill annotators, easy ones to the others.

  The skilled pool is the top `ceil(skilled_share * M)` annotators by skill (at least
  `num_per_item`; NaN skill counts as lowest). Hard items (difficulty >=
  `hard_threshold`) are sorted hardest first and dealt to the pool in skill order,
  round robin, `num_per_item` distinct annotators each: the hardest item goes to the
  most skilled annotators and every pool member gets the same load within one item.
  Easy items are dealt round robin to the annotators outside the pool (to everyone when
  fewer than `num_per_item` remain), in a random order when `key` is given.

  Args:
    difficulty: [num_items] difficulty in [0, 1] (see `difficulty`).
    annotator_skill: [num_annotators] higher is better (e.g. `annotator_weights` or an
      aggregation method's `reliability`).
    hard_threshold: difficulty from which an item is hard.
    skilled_share: share of annotators in the skilled pool, in (0, 1].
    num_per_item: annotators per item (distinct within an item).
    key: optional PRNG key that shuffles the order of easy items and of the easy pool.

  Returns:
    `HardItemAssignment`.
  """
  difficulty = as_float(difficulty, "difficulty")
  skill = as_float(annotator_skill, "annotator_skill")
  check_rank(difficulty, "difficulty", 1)
  check_rank(skill, "annotator_skill", 1)
  check_scalar_range(skilled_share, "skilled_share", low=0.0, high=1.0, low_inclusive=False, high_inclusive=True)
  num_annotators = skill.shape[0]
  r = int(num_per_item)
  if not 1 <= r <= num_annotators:
    raise ValueError(f"`num_per_item` must lie in [1, num_annotators={num_annotators}], got {num_per_item}.")
  pool_size = min(max(math.ceil(skilled_share * num_annotators), r), num_annotators)
  rest_size = num_annotators - pool_size
  return _assign(difficulty, skill, key, hard_threshold, r=r, pool_size=pool_size, use_rest=rest_size >= r)


@functools.partial(jax.jit, static_argnames=("r", "pool_size", "use_rest"))
def _assign(difficulty, skill, key, hard_threshold, *, r: int, pool_size: int, use_rest: bool):
  num_items = difficulty.shape[0]
  num_annotators = skill.shape[0]
  by_skill = jnp.argsort(-jnp.where(jnp.isnan(skill), -jnp.inf, skill), stable=True)
  pool = by_skill[:pool_size]
  easy_pool = by_skill[pool_size:] if use_rest else by_skill
  is_hard = difficulty >= hard_threshold

  # Rank of each item among the hard ones (hardest first) and among the easy ones.
  hard_order = jnp.argsort(jnp.where(is_hard, -difficulty, jnp.inf), stable=True)
  easy_key = jnp.where(is_hard, jnp.inf, jnp.arange(num_items, dtype=jnp.float32))
  if key is not None:
    order_key, pool_key = jax.random.split(key)
    easy_key = jnp.where(is_hard, jnp.inf, jax.random.uniform(order_key, (num_items,)))
    easy_pool = jax.random.permutation(pool_key, easy_pool)
  easy_order = jnp.argsort(easy_key, stable=True)
  rank_hard = jnp.zeros(num_items, jnp.int32).at[hard_order].set(jnp.arange(num_items, dtype=jnp.int32))
  rank_easy = jnp.zeros(num_items, jnp.int32).at[easy_order].set(jnp.arange(num_items, dtype=jnp.int32))
  slots = jnp.arange(r, dtype=jnp.int32)[None, :]
  hard_choice = pool[(rank_hard[:, None] * r + slots) % pool_size]
  easy_choice = easy_pool[(rank_easy[:, None] * r + slots) % easy_pool.shape[0]]
  chosen = jnp.where(is_hard[:, None], hard_choice, easy_choice).astype(jnp.int32)
  skilled = jnp.zeros(num_annotators, bool).at[pool].set(True)
  return HardItemAssignment(chosen, is_hard, skilled)


def price_items(
    difficulty: Any,
    *,
    base_price: float = 1.0,
    hard_multiplier: float = 2.0,
    hard_threshold: float | None = None,
) -> jax.Array:
  """Price of one annotation of each item (dynamic pricing: hard items cost more).

    linear (hard_threshold None):  price = base_price * (1 + (hard_multiplier - 1) * d)
    step:                           price = base_price * (hard_multiplier if d >= hard_threshold else 1)

  so the easiest item costs `base_price` and the hardest (d = 1) `hard_multiplier`
  times as much.

  Args:
    difficulty: [num_items] in [0, 1].
    base_price: price of an easy annotation, > 0.
    hard_multiplier: >= 1.
    hard_threshold: None for the linear schedule, else the step threshold.

  Returns:
    float [num_items] per-annotation prices.
  """
  difficulty = as_float(difficulty, "difficulty")
  check_scalar_range(base_price, "base_price", low=0.0, low_inclusive=False)
  check_scalar_range(hard_multiplier, "hard_multiplier", low=1.0)
  return _price(difficulty, base_price, hard_multiplier, hard_threshold)


@jax.jit
def _price(difficulty, base_price, hard_multiplier, hard_threshold):
  if hard_threshold is None:
    return base_price * (1.0 + (hard_multiplier - 1.0) * jnp.clip(difficulty, 0.0, 1.0))
  return base_price * jnp.where(difficulty >= hard_threshold, hard_multiplier, 1.0)


def _compositions(total: int, parts: int) -> np.ndarray:
  """All vectors of `parts` non-negative integers summing to `total` ([C, parts])."""
  rows = []
  for cuts in itertools.combinations(range(total + parts - 1), parts - 1):
    bounds = (-1,) + cuts + (total + parts - 1,)
    rows.append([bounds[i + 1] - bounds[i] - 1 for i in range(parts)])
  return np.asarray(rows, np.int32)


def majority_vote_accuracy(accuracy: Any, *, num_votes: int, num_classes: int) -> jax.Array:
  """P(majority vote of `num_votes` independent votes is correct), ties broken at random.

  Each vote is the true class with probability `accuracy` and each of the K - 1 other
  classes with probability (1 - accuracy) / (K - 1). Exact, by summing the multinomial
  over all vote-count vectors (n_true, n_1, ..., n_{K-1}): the vote is correct with
  probability 1 / (number of classes tied at the top) when the true class is among
  them.

  Args:
    accuracy: float array (any shape) of per-vote accuracies in [0, 1].
    num_votes: r >= 1 (static; the enumeration has C(r + K - 1, K - 1) terms).
    num_classes: K >= 2.

  Returns:
    float array shaped like `accuracy`.
  """
  accuracy = as_float(accuracy, "accuracy")
  num_votes, num_classes = int(num_votes), int(num_classes)
  if num_votes < 1 or num_classes < 2:
    raise ValueError(f"need num_votes >= 1 and num_classes >= 2, got {num_votes} and {num_classes}.")
  if math.comb(num_votes + num_classes - 1, num_classes - 1) > 200_000:
    raise ValueError(f"num_votes={num_votes} with num_classes={num_classes} has too many vote-count vectors.")
  return _majority_vote_accuracy(accuracy, num_votes=num_votes, num_classes=num_classes)


@functools.partial(jax.jit, static_argnames=("num_votes", "num_classes"))
def _majority_vote_accuracy(accuracy, *, num_votes: int, num_classes: int):
  counts = _compositions(num_votes, num_classes)  # column 0: votes for the true class
  top = counts.max(axis=1)
  win_share = (counts[:, 0] == top) / (counts == top[:, None]).sum(axis=1)
  # Multinomial coefficients in float64 on the host: exact, so that accuracy 1 gives 1.
  log_coeff = jnp.asarray(
      [math.lgamma(num_votes + 1) - sum(math.lgamma(c + 1) for c in row) for row in counts.tolist()], jnp.float32
  )
  n_true = jnp.asarray(counts[:, 0], jnp.float32)
  n_wrong = num_votes - n_true
  p = accuracy[..., None]
  log_prob = log_coeff + xlogy(n_true, p) + xlogy(n_wrong, (1.0 - p) / (num_classes - 1))
  return jnp.sum(jnp.exp(log_prob) * jnp.asarray(win_share, jnp.float32), axis=-1)


class BudgetSimulation(NamedTuple):
  """What a labelling budget buys (see `simulate_budget`).

  Attributes:
    num_labelled: number of items labelled within the budget.
    total_cost: cost of the labelled items.
    expected_accuracy: mean expected majority-vote accuracy over the labelled items
      (NaN when none).
    labelled: [num_items] bool.
    price: [num_items] per-annotation price.
    item_cost: [num_items] price * annotations_per_item.
    item_accuracy: [num_items] expected majority-vote accuracy of each item.
  """

  num_labelled: jax.Array
  total_cost: jax.Array
  expected_accuracy: jax.Array
  labelled: jax.Array
  price: jax.Array
  item_cost: jax.Array
  item_accuracy: jax.Array


BUDGET_ORDERS = ("given", "easiest_first", "hardest_first")


def simulate_budget(
    difficulty: Any,
    *,
    budget: float,
    annotations_per_item: int = 3,
    annotator_accuracy: float = 0.8,
    num_classes: int = 3,
    base_price: float = 1.0,
    hard_multiplier: float = 2.0,
    hard_threshold: float | None = None,
    order: str = "given",
) -> BudgetSimulation:
  """How many items a budget labels, and to what expected accuracy.

  Model: items are labelled in `order` ("given", "easiest_first", "hardest_first")
  until the next item no longer fits in the budget (a prefix, no skipping). Each item
  gets `annotations_per_item` annotations at `price_items(difficulty)` each. An
  annotator's accuracy on an item of difficulty d falls linearly from
  `annotator_accuracy` (d = 0) to chance 1/K (d = 1):

    accuracy(d) = annotator_accuracy - (annotator_accuracy - 1/K) * d

  and the item's expected label accuracy is that of a majority vote of independent
  votes (`majority_vote_accuracy`). Call it over a grid of budgets, prices or
  `annotations_per_item` to trade coverage against quality.

  Returns:
    `BudgetSimulation`.
  """
  difficulty = as_float(difficulty, "difficulty")
  check_rank(difficulty, "difficulty", 1)
  check_scalar_range(budget, "budget", low=0.0)
  check_scalar_range(annotator_accuracy, "annotator_accuracy", low=0.0, high=1.0, high_inclusive=True)
  check_choice(order, "order", BUDGET_ORDERS)
  price = price_items(difficulty, base_price=base_price, hard_multiplier=hard_multiplier, hard_threshold=hard_threshold)
  if int(annotations_per_item) < 1 or int(num_classes) < 2:
    raise ValueError(
        f"need annotations_per_item >= 1 and num_classes >= 2, got {annotations_per_item} and {num_classes}."
    )
  return _budget(difficulty, price, budget, annotator_accuracy, annotations_per_item=int(annotations_per_item),
                 num_classes=int(num_classes), order=order)


@functools.partial(jax.jit, static_argnames=("annotations_per_item", "num_classes", "order"))
def _budget(difficulty, price, budget, annotator_accuracy, *, annotations_per_item: int, num_classes: int,
            order: str) -> BudgetSimulation:
  item_cost = price * annotations_per_item
  d = jnp.clip(difficulty, 0.0, 1.0)
  vote_accuracy = annotator_accuracy - (annotator_accuracy - 1.0 / num_classes) * d
  item_accuracy = _majority_vote_accuracy(vote_accuracy, num_votes=annotations_per_item, num_classes=num_classes)
  if order == "given":
    sequence = jnp.arange(difficulty.shape[0])
  else:
    sequence = jnp.argsort(d if order == "easiest_first" else -d, stable=True)
  cumulative = jnp.cumsum(item_cost[sequence])
  within = cumulative <= budget * (1.0 + 1e-6)  # cumsum rounding must not drop an exact fit
  labelled = jnp.zeros(difficulty.shape[0], bool).at[sequence].set(within)
  num_labelled = jnp.sum(labelled)
  total_cost = jnp.sum(jnp.where(labelled, item_cost, 0.0))
  expected_accuracy = jnp.where(
      num_labelled > 0, jnp.sum(jnp.where(labelled, item_accuracy, 0.0)) / jnp.maximum(num_labelled, 1), jnp.nan
  )
  return BudgetSimulation(num_labelled, total_cost, expected_accuracy, labelled, price, item_cost, item_accuracy)


class ResolvedLabels(NamedTuple):
  """Crowd labels with expert decisions merged in.

  Attributes:
    labels: [num_items] int32 final labels (the expert's where resolved).
    confidence: [num_items] float (expert_confidence where resolved).
    posteriors: [num_items, K] soft labels (expert rows: expert_confidence on the
      expert label, the rest spread evenly), or None when none were given.
    source: [num_items] int32 code into `LABEL_SOURCES`: "crowd", "expert", "pending"
      (routed to review, no expert decision yet).
    train_mask: [num_items] bool, false for pending items (kept out of training).
  """

  labels: np.ndarray
  confidence: np.ndarray
  posteriors: np.ndarray | None
  source: np.ndarray
  train_mask: np.ndarray

  def source_names(self) -> list[str]:
    return [LABEL_SOURCES[s] for s in self.source]


def resolve_expert_reviews(
    labels: Any,
    confidence: Any,
    review_mask: Any,
    expert_items: Any,
    expert_labels: Any,
    *,
    posteriors: Any = None,
    num_classes: int | None = None,
    expert_confidence: float = 1.0,
) -> ResolvedLabels:
  """Merges expert decisions into aggregated labels, recording each label's source.

  An item with an expert decision takes the expert's label and source "expert" (also
  when it had not been routed: the expert overrides the crowd). A routed item without a
  decision is "pending" and `train_mask` keeps it out of training; every other item
  keeps its crowd label, source "crowd". Input validation happens on the host (this is
  bookkeeping, not a hot loop): expert item indices must be in range and unique, expert
  labels in [0, K).

  Args:
    labels: [num_items] int crowd labels.
    confidence: [num_items] crowd confidence.
    review_mask: [num_items] bool from `route_items`.
    expert_items: [E] int item indices with an expert decision.
    expert_labels: [E] int expert labels.
    posteriors: optional [num_items, K] crowd posteriors to update.
    num_classes: K when `posteriors` is not given (for the label range check).
    expert_confidence: confidence given to expert labels, in (0, 1].

  Returns:
    `ResolvedLabels` (NumPy arrays).
  """
  labels = np.asarray(labels).astype(np.int32)
  confidence = np.asarray(confidence, np.float32)
  review_mask = np.asarray(review_mask, bool)
  num_items = labels.shape[0]
  for name, arr in (("confidence", confidence), ("review_mask", review_mask)):
    if arr.shape != (num_items,):
      raise ValueError(f"`{name}` must have shape (num_items,) = ({num_items},) like `labels`, got {arr.shape}.")
  expert_items = np.asarray(expert_items).astype(np.int64).reshape(-1)
  expert_labels = np.asarray(expert_labels).astype(np.int64).reshape(-1)
  if expert_items.shape != expert_labels.shape:
    raise ValueError(
        f"`expert_items` and `expert_labels` must have one length, got {expert_items.shape[0]} and "
        f"{expert_labels.shape[0]}."
    )
  check_scalar_range(expert_confidence, "expert_confidence", low=0.0, high=1.0, low_inclusive=False,
                     high_inclusive=True)
  if posteriors is not None:
    posteriors = np.array(posteriors, np.float32)
    if posteriors.ndim != 2 or posteriors.shape[0] != num_items:
      raise ValueError(f"`posteriors` must have shape ({num_items}, K), got {posteriors.shape}.")
    num_classes = posteriors.shape[1]
  if expert_items.size:
    bad = (expert_items < 0) | (expert_items >= num_items)
    if bad.any():
      raise ValueError(f"`expert_items` must lie in [0, num_items={num_items}), found {int(expert_items[bad][0])}.")
    unique, counts = np.unique(expert_items, return_counts=True)
    if (counts > 1).any():
      raise ValueError(
          f"`expert_items` must be unique (one decision per item), item {int(unique[counts > 1][0])} appears "
          f"{int(counts[counts > 1][0])} times."
      )
    upper = num_classes if num_classes is not None else np.iinfo(np.int32).max
    bad = (expert_labels < 0) | (expert_labels >= upper)
    if bad.any():
      raise ValueError(
          f"`expert_labels` must lie in [0, {num_classes if num_classes is not None else 'K'}), found "
          f"{int(expert_labels[bad][0])} for item {int(expert_items[bad][0])}."
      )
  resolved = np.zeros(num_items, bool)
  resolved[expert_items] = True
  out_labels = labels.copy()
  out_labels[expert_items] = expert_labels
  out_confidence = confidence.copy()
  out_confidence[expert_items] = expert_confidence
  source = np.where(resolved, EXPERT, np.where(review_mask, PENDING, CROWD)).astype(np.int32)
  if posteriors is not None and expert_items.size:
    k = posteriors.shape[1]
    rows = np.full((expert_items.size, k), (1.0 - expert_confidence) / (k - 1), np.float32)
    rows[np.arange(expert_items.size), expert_labels] = expert_confidence
    posteriors[expert_items] = rows
  train_mask = source != PENDING
  return ResolvedLabels(out_labels, out_confidence, posteriors, source, train_mask)
