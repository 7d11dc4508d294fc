"""Tests for rlhf_jax.feedback.models.voting: majority and weighted votes on hand-counted
examples (every tie-break)."""

import jax
import numpy as np

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
