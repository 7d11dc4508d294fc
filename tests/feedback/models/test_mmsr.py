"""Tests for rlhf_jax.feedback.models.mmsr: the agreement matrix and the trimmed (MSR) means
against Python loops written here (the trimming rule as crowd-kit states it), and the
skills of simulated one-coin annotators, adversaries included."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.feedback.models import mmsr, voting


def test_agreement_matrix_against_loops():
  rng = np.random.default_rng(0)
  items = rng.integers(0, 15, 120)
  annotators = rng.integers(0, 6, 120)
  labels = rng.integers(0, 3, 120)
  centred, shared, used = mmsr.agreement_matrix(items, annotators, labels, num_items=15, num_annotators=6)
  last = {}
  for i, a, l in zip(items, annotators, labels):
    last[(a, i)] = l  # the last answer counts
  assert used == 3
  for a in range(6):
    for b in range(6):
      common = [i for i in range(15) if (a, i) in last and (b, i) in last] if a != b else []
      assert shared[a, b] == len(common)
      agree = np.mean([last[(a, i)] == last[(b, i)] for i in common]) if common else 0.0
      assert centred[a, b] == pytest.approx(agree * 3 / 2 - 1 / 2)


def np_msr_mean(x, trim, current, num_items):
  """crowd-kit's `_remove_largest_and_smallest_F_value`, then the mean (or `current`)."""
  y = sorted(x)
  y = [v for v in y if v >= current] if sum(v < current for v in y) < trim else y[trim:]
  m = len(y)
  y = [v for v in y if v <= current] if sum(v > current for v in y) < trim else y[:m - trim] + y[m:]
  if len(y) == 1 and y[0] == 0:
    y = [1 / np.sqrt(num_items)]
  return np.mean(y) if y else current


@pytest.mark.parametrize("trim", [-1, 0, 1, 2])
def test_trimmed_means_follow_the_msr_rule(trim):
  rng = np.random.default_rng(trim + 5)
  ratios = rng.uniform(0, 2, (9, 7))
  ratios[0, 3] = 0.0
  observed = rng.random((9, 7)) < 0.6
  observed[:, 6] = False
  observed[0, 5], observed[1:, 5] = True, False  # a column whose one value is 0
  ratios[0, 5] = 0.0
  current = rng.uniform(0, 2, 7)
  got = mmsr._trimmed_means(jnp.asarray(ratios, jnp.float32), jnp.asarray(observed), jnp.asarray(current, jnp.float32),
                            jnp.int32(trim), 1 / np.sqrt(40.0))
  expected = [np_msr_mean(list(ratios[observed[:, j], j]), trim, current[j], 40) for j in range(7)]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_mmsr_recovers_one_coin_skills_and_flags_adversaries():
  rng = np.random.default_rng(1)
  num_items, num_annotators, k = 400, 15, 3
  truth = rng.integers(0, k, num_items)
  accuracy = np.concatenate([rng.uniform(0.6, 0.95, num_annotators - 3), [0.1, 0.1, 0.1]])
  items, annotators, labels = [], [], []
  for i in range(num_items):
    for a in rng.choice(num_annotators, 6, replace=False):
      right = rng.random() < accuracy[a]
      items.append(i), annotators.append(a)
      labels.append(truth[i] if right else rng.choice([c for c in range(k) if c != truth[i]]))
  items, annotators, labels = np.array(items), np.array(annotators), np.array(labels)
  result = mmsr.mmsr(items, annotators, labels, num_classes=k, num_iters=300)
  estimated = np.asarray(result.annotator_params["reliability"])
  assert np.corrcoef(estimated, accuracy)[0, 1] > 0.9
  assert np.max(np.abs(estimated[:-3] - accuracy[:-3])) < 0.12
  # Adversaries below chance (1/3) get negative weights: their answers count against.
  assert np.all(np.asarray(result.annotator_params["weight"])[-3:] < 0)
  majority = voting.majority_vote(items, annotators, labels, num_classes=k)
  assert np.mean(np.asarray(result.labels) == truth) > np.mean(np.asarray(majority.labels) == truth)
  # The posterior is the one-coin posterior of the weights.
  scores = np.zeros((num_items, k))
  np.add.at(scores, (items, labels), np.asarray(result.annotator_params["weight"])[annotators])
  expected = np.exp(scores - scores.max(1, keepdims=True))
  np.testing.assert_allclose(result.posteriors, expected / expected.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
