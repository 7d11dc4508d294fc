"""Tests for rlhf_jax.feedback.workflow.routing against hand examples and NumPy references."""

import itertools
import math

import jax
import numpy as np
import pytest

from rlhf_jax.feedback.workflow import routing

POSTERIORS = np.array(
    [
        [0.90, 0.05, 0.05],  # confident
        [0.40, 0.40, 0.20],  # unsure
        [1 / 3, 1 / 3, 1 / 3],  # uniform: hardest
        [0.70, 0.20, 0.10],  # exactly at the default threshold: kept
        [1.00, 0.00, 0.00],  # certain, with zeros
        [0.69, 0.30, 0.01],  # just below
    ],
    np.float32,
)


def np_entropy(p):
  p = np.asarray(p, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p > 0, -p * np.log(p), 0.0)
  return terms.sum(1) / np.log(p.shape[1])


def test_difficulty_is_normalised_entropy():
  np.testing.assert_allclose(routing.difficulty(POSTERIORS), np_entropy(POSTERIORS), rtol=1e-5, atol=1e-6)
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(4), size=50)
  np.testing.assert_allclose(routing.difficulty(p.astype(np.float32)), np_entropy(p), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(routing.difficulty(POSTERIORS))[[2, 4]], [1.0, 0.0], atol=1e-6)


def test_route_items_hand_example():
  review = routing.route_items(POSTERIORS)
  np.testing.assert_array_equal(review, [False, True, True, False, False, True])
  review = routing.route_items(POSTERIORS, confidence_threshold=0.95)
  np.testing.assert_array_equal(review, [True, True, True, True, False, True])
  agreement = np.array([1.0, 0.5, 0.4, 0.55, 1.0, 0.9], np.float32)
  review = routing.route_items(POSTERIORS, agreement=agreement, agreement_threshold=0.6)
  # Item 3 passes the confidence check but not the agreement one.
  np.testing.assert_array_equal(review, [False, True, True, True, False, True])


def test_route_items_on_vote_shares_for_majority_vote():
  # Majority vote's posterior is the one-hot decision: its maximum is 1 on every item,
  # so routing on it never routes. Its confidence is the vote share, computed here from
  # the votes: 3/5, 4/5, 2/2 and a 2-2 tie broken toward the lowest class (1/2).
  from rlhf_jax.feedback.models import voting as aggregation  # pylint: disable=g-import-not-at-top
  items = np.array([0] * 5 + [1] * 5 + [2] * 2 + [3] * 4)
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0])
  annotators = np.r_[np.arange(5), np.arange(5), np.arange(2), np.arange(4)]
  votes = aggregation.majority_vote(items, annotators, labels, num_classes=2, num_items=4)
  shares = np.array([3 / 5, 4 / 5, 1.0, 1 / 2])
  np.testing.assert_allclose(votes.confidence, shares, rtol=1e-6)
  np.testing.assert_array_equal(routing.route_items(votes.posteriors), [False] * 4)
  review = routing.route_items(votes.posteriors, confidence=votes.confidence)
  np.testing.assert_array_equal(review, shares < 0.7)
  # The same rule as max-posterior routing whenever the confidence is the max posterior.
  np.testing.assert_array_equal(
      routing.route_items(POSTERIORS, confidence=POSTERIORS.max(axis=1)),
      routing.route_items(POSTERIORS))
  with pytest.raises(ValueError, match="`confidence` must have shape"):
    routing.route_items(POSTERIORS, confidence=np.ones(5, np.float32))


def test_route_items_sends_unknown_items_to_review():
  posteriors = np.array([[np.nan, np.nan], [0.9, 0.1]], np.float32)
  np.testing.assert_array_equal(routing.route_items(posteriors), [True, False])
  review = routing.route_items(
      np.array([[0.9, 0.1], [0.9, 0.1]], np.float32), agreement=np.array([np.nan, 0.8], np.float32),
      agreement_threshold=0.5,
  )
  np.testing.assert_array_equal(review, [True, False])


def test_route_items_errors():
  with pytest.raises(ValueError, match="agreement_threshold"):
    routing.route_items(POSTERIORS, agreement=np.ones(6, np.float32))
  with pytest.raises(ValueError, match="agreement"):
    routing.route_items(POSTERIORS, agreement_threshold=0.5)
  with pytest.raises(ValueError, match="shape"):
    routing.route_items(POSTERIORS, agreement=np.ones(5, np.float32), agreement_threshold=0.5)
  with pytest.raises(ValueError, match="confidence_threshold"):
    routing.route_items(POSTERIORS, confidence_threshold=1.5)
  with pytest.raises(ValueError, match="floating"):
    routing.route_items(np.ones((3, 2), np.int32))


def test_assign_hard_items_hand_example():
  difficulty = np.array([0.1, 0.9, 1.0, 0.7, 0.2, 0.3], np.float32)
  skill = np.array([0.5, 0.9, 0.7, 0.1, 0.3, 0.8], np.float32)
  out = routing.assign_hard_items(difficulty, skill, hard_threshold=0.6, skilled_share=0.5, num_per_item=2)
  out = jax.tree.map(np.asarray, out)
  # Pool = 3 most skilled, in skill order: 1 (0.9), 5 (0.8), 2 (0.7). Hard items hardest
  # first: 2 (1.0) -> (1, 5); 1 (0.9) -> (2, 1); 3 (0.7) -> (5, 2).
  np.testing.assert_array_equal(out.is_hard, difficulty >= 0.6)
  np.testing.assert_array_equal(out.skilled, [False, True, True, False, False, True])
  np.testing.assert_array_equal(out.annotators[[2, 1, 3]], [[1, 5], [2, 1], [5, 2]])
  # Easy items (0, 4, 5 in input order) go round robin to the rest in skill order: 0, 4, 3.
  np.testing.assert_array_equal(out.annotators[[0, 4, 5]], [[0, 4], [3, 0], [4, 3]])


def test_assign_hard_items_balances_load_and_keeps_annotators_distinct():
  rng = np.random.default_rng(1)
  difficulty = rng.random(1000).astype(np.float32)
  skill = rng.random(40).astype(np.float32)
  out = routing.assign_hard_items(
      difficulty, skill, hard_threshold=0.7, skilled_share=0.2, num_per_item=3, key=jax.random.key(0)
  )
  annotators = np.asarray(out.annotators)
  assert all(len(set(row)) == 3 for row in annotators.tolist())
  top = np.argsort(-skill)[:8]
  hard = difficulty >= 0.7
  assert set(annotators[hard].ravel()) == set(top)
  assert not set(annotators[~hard].ravel()) & set(top)
  load = np.bincount(annotators[hard].ravel(), minlength=40)[top]
  assert load.max() - load.min() <= 1
  easy_load = np.bincount(annotators[~hard].ravel(), minlength=40)
  easy_load = np.delete(easy_load, top)
  assert easy_load.max() - easy_load.min() <= 1


def test_price_items_linear_and_step():
  d = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
  np.testing.assert_allclose(routing.price_items(d, base_price=0.2, hard_multiplier=3.0), [0.2, 0.3, 0.4, 0.6],
                             rtol=1e-6)
  np.testing.assert_allclose(
      routing.price_items(d, base_price=0.2, hard_multiplier=3.0, hard_threshold=0.5), [0.2, 0.2, 0.6, 0.6], rtol=1e-6
  )
  with pytest.raises(ValueError, match="hard_multiplier"):
    routing.price_items(d, hard_multiplier=0.5)


def brute_force_majority_accuracy(p, r, k):
  """Enumerates all k**r label vectors (true class 0), random tie-breaking."""
  total = 0.0
  for votes in itertools.product(range(k), repeat=r):
    prob = math.prod(p if v == 0 else (1 - p) / (k - 1) for v in votes)
    counts = np.bincount(votes, minlength=k)
    top = counts.max()
    if counts[0] == top:
      total += prob / np.sum(counts == top)
  return total


@pytest.mark.parametrize("r,k", [(1, 3), (2, 3), (3, 3), (4, 3), (5, 2), (5, 3), (4, 4)])
def test_majority_vote_accuracy_matches_brute_force(r, k):
  ps = np.array([0.0, 0.2, 1 / k, 0.55, 0.8, 1.0])
  expected = [brute_force_majority_accuracy(p, r, k) for p in ps]
  got = routing.majority_vote_accuracy(ps.astype(np.float32), num_votes=r, num_classes=k)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_simulate_budget_hand_example():
  d = np.array([0.0, 0.5, 1.0, 0.0], np.float32)
  # Linear prices 1, 1.5, 2, 1; 3 annotations: item costs 3, 4.5, 6, 3.
  out = routing.simulate_budget(d, budget=8.0, annotations_per_item=3, annotator_accuracy=0.8, num_classes=3)
  np.testing.assert_allclose(out.item_cost, [3.0, 4.5, 6.0, 3.0], rtol=1e-6)
  np.testing.assert_array_equal(out.labelled, [True, True, False, False])  # 3 + 4.5 <= 8 < 3 + 4.5 + 6
  assert int(out.num_labelled) == 2
  np.testing.assert_allclose(out.total_cost, 7.5, rtol=1e-6)
  # Per-vote accuracy 0.8 at d = 0 and 0.8 - (0.8 - 1/3) / 2 at d = 0.5.
  expected = [brute_force_majority_accuracy(0.8, 3, 3), brute_force_majority_accuracy(0.8 - (0.8 - 1 / 3) / 2, 3, 3)]
  np.testing.assert_allclose(out.expected_accuracy, np.mean(expected), rtol=1e-5)
  easiest = routing.simulate_budget(d, budget=8.0, order="easiest_first")
  np.testing.assert_array_equal(easiest.labelled, [True, False, False, True])
  hardest = routing.simulate_budget(d, budget=8.0, order="hardest_first")
  np.testing.assert_array_equal(hardest.labelled, [False, False, True, False])  # 6 fits, 6 + 4.5 does not
  nothing = routing.simulate_budget(d, budget=1.0)
  assert int(nothing.num_labelled) == 0 and np.isnan(nothing.expected_accuracy)
  with pytest.raises(ValueError, match="order"):
    routing.simulate_budget(d, budget=1.0, order="random")


def test_resolve_expert_reviews_lineage_and_training_mask():
  labels = np.array([0, 1, 2, 0, 1])
  confidence = np.array([0.9, 0.5, 0.4, 0.8, 0.6], np.float32)
  review = np.array([False, True, True, False, True])
  posteriors = np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4], [0.8, 0.1, 0.1], [0.2, 0.6, 0.2]],
                        np.float32)
  out = routing.resolve_expert_reviews(labels, confidence, review, [2, 3], [1, 2], posteriors=posteriors,
                                       expert_confidence=0.9)
  np.testing.assert_array_equal(out.labels, [0, 1, 1, 2, 1])
  np.testing.assert_allclose(out.confidence, [0.9, 0.5, 0.9, 0.9, 0.6])
  assert out.source_names() == ["crowd", "pending", "expert", "expert", "pending"]
  np.testing.assert_array_equal(out.train_mask, [True, False, True, True, False])
  np.testing.assert_allclose(out.posteriors[2], [0.05, 0.9, 0.05], rtol=1e-6)
  np.testing.assert_allclose(out.posteriors[0], posteriors[0])
  np.testing.assert_allclose(posteriors[2], [0.3, 0.3, 0.4])  # the input is not modified


def test_resolve_expert_reviews_errors():
  labels, confidence, review = np.zeros(3, int), np.ones(3, np.float32), np.zeros(3, bool)
  with pytest.raises(ValueError, match="unique"):
    routing.resolve_expert_reviews(labels, confidence, review, [1, 1], [0, 1], num_classes=2)
  with pytest.raises(ValueError, match="expert_items"):
    routing.resolve_expert_reviews(labels, confidence, review, [3], [0], num_classes=2)
  with pytest.raises(ValueError, match="expert_labels"):
    routing.resolve_expert_reviews(labels, confidence, review, [0], [2], num_classes=2)
  with pytest.raises(ValueError, match="one length"):
    routing.resolve_expert_reviews(labels, confidence, review, [0, 1], [0], num_classes=2)
  with pytest.raises(ValueError, match="review_mask"):
    routing.resolve_expert_reviews(labels, confidence, np.zeros(2, bool), [0], [0])
