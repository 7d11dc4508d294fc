"""Tests for rlhf_jax.feedback.models.voting: majority and weighted votes on hand-counted
examples (every tie-break); Wawa, zero-based skill and GoldMV against NumPy references and
crowd-kit's worked example."""

import jax
import numpy as np
import pytest

from rlhf_jax.feedback.models import voting as agg


# item 0: 0, 0, 1        -> 0 with 2/3 of the votes
# item 1: 1, 2           -> tie between 1 and 2
# item 2: 0, 1, 2        -> three-way tie
# item 3: no annotations
# items 4..43: 0, 2      -> ties between 0 and 2 (for the random tie-break)
HAND_ITEMS = np.array([0, 0, 0, 1, 1, 2, 2, 2] + [i for i in range(4, 44) for _ in range(2)])
HAND_ANNOTATORS = np.array([0, 1, 2, 0, 1, 0, 1, 2] + [0, 1] * 40)
HAND_LABELS = np.array([0, 0, 1, 1, 2, 0, 1, 2] + [0, 2] * 40)


def hand_vote(**kwargs):
  return agg.majority_vote(HAND_ITEMS, HAND_ANNOTATORS, HAND_LABELS, num_classes=3, num_items=44, **kwargs)


def test_majority_vote_lowest_tie_break():
  result = hand_vote()
  np.testing.assert_array_equal(result.labels[:5], [0, 1, 0, 0, 0])
  np.testing.assert_allclose(result.confidence[:4], [2 / 3, 1 / 2, 1 / 3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(result.posteriors[0], [1, 0, 0])
  np.testing.assert_allclose(result.posteriors[1], [0, 1, 0])
  np.testing.assert_allclose(result.posteriors[3], [1 / 3] * 3, rtol=1e-6)
  np.testing.assert_allclose(result.extras["vote_shares"][0], [2 / 3, 1 / 3, 0], rtol=1e-6)
  np.testing.assert_array_equal(result.extras["is_tie"][:5], [False, True, True, False, True])
  np.testing.assert_array_equal(result.extras["num_annotations"][:5], [3, 2, 3, 0, 2])
  # Agreement with the voted labels 0, 1, 0, -, 0...: annotator 0 answered 0, 1, 0 and 0
  # on every tie (43 / 43); annotator 1 answered 0, 2, 1 and 2 on every tie (1 / 43);
  # annotator 2 answered 1 and 2 on items 0 and 2 (0 / 2).
  np.testing.assert_allclose(result.annotator_params["reliability"], [1.0, 1 / 43, 0.0], rtol=1e-6)


def test_majority_vote_uniform_tie_break():
  result = hand_vote(tie_break="uniform")
  np.testing.assert_allclose(result.posteriors[1], [0, 0.5, 0.5])
  np.testing.assert_allclose(result.posteriors[2], [1 / 3] * 3, rtol=1e-6)
  np.testing.assert_allclose(result.posteriors[4:], np.tile([0.5, 0, 0.5], (40, 1)))
  np.testing.assert_allclose(result.confidence[:3], [2 / 3, 1 / 2, 1 / 3], rtol=1e-6)
  # Annotator 1 answered 0, 2, 1 on items 0..2 and 2 on every 0/2 tie.
  expected = (1 + 0.5 + 1 / 3 + 40 * 0.5) / 43
  np.testing.assert_allclose(result.annotator_params["reliability"][1], expected, rtol=1e-6)


def test_majority_vote_random_tie_break():
  result = hand_vote(tie_break="random", key=jax.random.key(0))
  picks = np.asarray(result.labels[4:])
  assert set(picks) <= {0, 2} and 10 <= np.sum(picks == 0) <= 30
  assert int(result.labels[0]) == 0 and int(result.labels[1]) in (1, 2)
  np.testing.assert_allclose(result.posteriors[4:], np.eye(3)[picks])
  again = hand_vote(tie_break="random", key=jax.random.key(0))
  np.testing.assert_array_equal(again.labels, result.labels)  # reproducible from the key
  other = hand_vote(tie_break="random", key=jax.random.key(1))
  assert np.any(np.asarray(other.labels[4:]) != picks)


def test_weighted_vote_hand_example():
  # Annotator 2 weighs 3: item 0 (0, 0, 1) -> 1 wins 3 to 2.
  weights = np.array([1.0, 1.0, 3.0])
  result = agg.weighted_vote(
      HAND_ITEMS, HAND_ANNOTATORS, HAND_LABELS, num_classes=3, num_items=44,
      annotator_weights=weights,
  )
  np.testing.assert_array_equal(result.labels[:3], [1, 1, 2])
  np.testing.assert_allclose(result.confidence[:3], [3 / 5, 1 / 2, 3 / 5], rtol=1e-6)
  np.testing.assert_allclose(result.annotator_params["weight"], weights)
  # All-ones weights give the majority vote.
  ones = agg.weighted_vote(
      HAND_ITEMS, HAND_ANNOTATORS, HAND_LABELS, num_classes=3, num_items=44,
      annotator_weights=np.ones(3),
  )
  np.testing.assert_array_equal(ones.labels[:5], [0, 1, 0, 0, 0])


# ----------------------------------------------------------------------------------
# Wawa, zero-based skill and GoldMV against NumPy references written here.
# ----------------------------------------------------------------------------------


def simulated_crowd(seed=0, num_items=120, num_annotators=12, num_classes=3, per_item=5):
  rng = np.random.default_rng(seed)
  truth = rng.integers(0, num_classes, num_items)
  accuracy = rng.uniform(0.3, 0.95, num_annotators)
  items, annotators, labels = [], [], []
  for i in range(num_items):
    for a in rng.choice(num_annotators, per_item, replace=False):
      correct = rng.random() < accuracy[a]
      label = truth[i] if correct else rng.choice([k for k in range(num_classes) if k != truth[i]])
      items.append(i), annotators.append(a), labels.append(label)
  return np.array(items), np.array(annotators), np.array(labels), truth


def np_weighted_vote(items, annotators, labels, weights, num_items, num_classes):
  """Skill-weighted plurality with float64 sums; ties to the lowest class (crowd-kit's idxmax)."""
  scores = np.zeros((num_items, num_classes))
  for i, a, l in zip(items, annotators, labels):
    scores[i, l] += weights[a]
  return scores.argmax(axis=1), scores / scores.sum(axis=1, keepdims=True)


def np_agreement(items, annotators, labels, voted, num_annotators):
  hits, counts = np.zeros(num_annotators), np.zeros(num_annotators)
  for i, a, l in zip(items, annotators, labels):
    hits[a] += l == voted[i]
    counts[a] += 1
  return hits / counts


def test_wawa_matches_numpy_reference():
  items, annotators, labels, _ = simulated_crowd()
  result = agg.wawa(items, annotators, labels, num_classes=3)
  majority, _ = np_weighted_vote(items, annotators, labels, np.ones(12), 120, 3)
  skill = np_agreement(items, annotators, labels, majority, 12)
  expected, shares = np_weighted_vote(items, annotators, labels, skill, 120, 3)
  np.testing.assert_allclose(result.annotator_params["skill"], skill, rtol=1e-6)
  np.testing.assert_array_equal(result.labels, expected)
  np.testing.assert_allclose(result.extras["vote_shares"], shares, rtol=1e-5)


def np_zero_based_skill(items, annotators, labels, num_items, num_annotators, num_classes, num_iters=100,
                        lr_init=1.0, lr_steps_to_reduce=20, lr_reduce_factor=0.5, eps=1e-5):
  skill = np.full(num_annotators, 1.0 / len(np.unique(labels)) + eps)
  rate = lr_init
  for iteration in range(1, num_iters + 1):
    if iteration % lr_steps_to_reduce == 0:
      rate *= lr_reduce_factor
    voted, _ = np_weighted_vote(items, annotators, labels, skill, num_items, num_classes)
    skill = skill + rate * (np_agreement(items, annotators, labels, voted, num_annotators) - skill)
  return np_weighted_vote(items, annotators, labels, skill, num_items, num_classes)[0], skill


def test_zero_based_skill_matches_numpy_reference():
  items, annotators, labels, truth = simulated_crowd(seed=1)
  result = agg.zero_based_skill(items, annotators, labels, num_classes=3, num_iters=45)
  expected, skill = np_zero_based_skill(items, annotators, labels, 120, 12, 3, num_iters=45)
  np.testing.assert_allclose(result.annotator_params["skill"], skill, rtol=1e-5)
  np.testing.assert_array_equal(result.labels, expected)
  # Skilled annotators outweigh the poor ones: no worse than the plain vote.
  majority = agg.majority_vote(items, annotators, labels, num_classes=3).labels
  assert np.mean(np.asarray(result.labels) == truth) >= np.mean(np.asarray(majority) == truth)


def test_gold_majority_vote_worked_example():
  # crowd-kit's docstring example: t1 = (0, 0, 1), t2 = (1, 0, 1), gold t1 = 0.
  # p1 and p2 answered t1 right (accuracy 1), p3 wrong (0): t1 -> 0 by 2 to 0; on t2,
  # label 1 gets p1 + p3 = 1 and label 0 gets p2 = 1, a tie: the lowest class, 0.
  result = agg.gold_majority_vote([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], [0, 0, 1, 1, 0, 1], num_classes=2,
                                  gold_labels=[0, -1])
  np.testing.assert_array_equal(result.labels, [0, 0])
  np.testing.assert_allclose(result.annotator_params["golden_accuracy"], [1.0, 1.0, 0.0])
  np.testing.assert_array_equal(result.annotator_params["num_golden"], [1, 1, 1])
  np.testing.assert_allclose(result.extras["vote_shares"], [[1.0, 0.0], [0.5, 0.5]])


def test_gold_majority_vote_matches_numpy_and_names_missing_gold():
  items, annotators, labels, truth = simulated_crowd(seed=2)
  gold = np.where(np.arange(120) % 4 == 0, truth, -1)
  result = agg.gold_majority_vote(items, annotators, labels, num_classes=3, gold_labels=gold)
  on_gold = gold[items] >= 0
  accuracy = np.array([np.mean(labels[on_gold & (annotators == a)] == gold[items][on_gold & (annotators == a)])
                       for a in range(12)])
  expected, _ = np_weighted_vote(items, annotators, labels, accuracy, 120, 3)
  np.testing.assert_allclose(result.annotator_params["golden_accuracy"], accuracy, rtol=1e-6)
  np.testing.assert_array_equal(result.labels, expected)
  with pytest.raises(ValueError, match=r"annotator 2 \(and 0 more\) answered no item with a gold label"):
    agg.gold_majority_vote([0, 0, 1], [0, 1, 2], [0, 1, 1], num_classes=2, gold_labels=[0, -1])
  lenient = agg.gold_majority_vote([0, 0, 1], [0, 1, 2], [0, 1, 1], num_classes=2, gold_labels=[0, -1],
                                   missing_accuracy=0.5)
  np.testing.assert_allclose(lenient.annotator_params["golden_accuracy"], [1.0, 0.0, 0.5])
