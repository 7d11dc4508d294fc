"""Tests for rlhf_jax.feedback.models.kos against the unscaled message passing of Karger,
Oh & Shah written here with Python loops over the edges in float64."""

import jax
import numpy as np
import pytest

from rlhf_jax.feedback.models import kos, voting


def binary_crowd(seed=0, num_items=80, num_annotators=10, per_item=5):
  rng = np.random.default_rng(seed)
  truth = rng.integers(0, 2, num_items)
  # Two adversaries (accuracy 0.2) among reliable annotators.
  accuracy = np.concatenate([rng.uniform(0.65, 0.9, num_annotators - 2), [0.2, 0.2]])
  items, annotators, labels = [], [], []
  for i in range(num_items):
    for a in rng.choice(num_annotators, per_item, replace=False):
      items.append(i), annotators.append(a), labels.append(truth[i] if rng.random() < accuracy[a] else 1 - truth[i])
  return np.array(items), np.array(annotators), np.array(labels), truth


def np_kos(items, annotators, labels, y0, num_iters):
  """The recursion of the paper, unscaled: x_{i->j} and y_{j->i} per edge."""
  sign = np.where(labels == 0, 1.0, -1.0)
  y = y0.astype(np.float64).copy()
  edges = range(len(items))
  for _ in range(num_iters):
    x = np.array([sum(sign[m] * y[m] for m in edges if items[m] == items[n] and m != n) for n in edges])
    y = np.array([sum(sign[m] * x[m] for m in edges if annotators[m] == annotators[n] and m != n) for n in edges])
  score = np.zeros(items.max() + 1)
  for n in edges:
    score[items[n]] += sign[n] * y[n]
  return score


@pytest.mark.parametrize("num_iters", [1, 4])
def test_kos_matches_the_unscaled_recursion(num_iters):
  items, annotators, labels, _ = binary_crowd()
  key = jax.random.key(3)
  result = kos.kos(items, annotators, labels, num_iters=num_iters, key=key)
  y0 = 1.0 + np.asarray(jax.random.normal(key, items.shape))
  score = np_kos(items, annotators, labels, y0, num_iters)
  np.testing.assert_array_equal(result.labels, np.where(score < 0, 1, 0))
  np.testing.assert_allclose(result.extras["score"], score / np.abs(score).max(), rtol=1e-4, atol=1e-6)


def test_kos_discounts_adversaries_and_does_not_depend_on_class_codes():
  items, annotators, labels, truth = binary_crowd(seed=1, num_items=300)
  result = kos.kos(items, annotators, labels, key=jax.random.key(0))
  majority = voting.majority_vote(items, annotators, labels, num_classes=2)
  assert np.mean(np.asarray(result.labels) == truth) >= np.mean(np.asarray(majority.labels) == truth)
  # The adversaries (the last two annotators) agree least with the decision.
  reliability = np.asarray(result.annotator_params["reliability"])
  assert set(np.argsort(reliability)[:2]) == {8, 9}
  swapped = kos.kos(items, annotators, 1 - labels, key=jax.random.key(0))
  np.testing.assert_array_equal(swapped.labels, 1 - np.asarray(result.labels))


def test_kos_needs_two_classes():
  with pytest.raises(ValueError, match="KOS is defined for two classes"):
    kos.kos([0, 1], [0, 0], [0, 2], num_classes=3)
