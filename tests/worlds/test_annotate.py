"""Simulated annotators: the Bradley-Terry noise model per type, in NumPy, and its draws."""
import numpy as np
import pytest

from rlhf_jax import feedback
from rlhf_jax.worlds import annotate

TYPES = {name: i for i, name in enumerate(feedback.ANNOTATOR_TYPES)}


def _bt(d, tau):
  return 1.0 / (1.0 + np.exp(-d / tau))


def test_label_probability_matches_the_formula_per_type():
  config = annotate.CrowdConfig(position_bias=0.3, length_bias=0.4, adversary_flip=0.8)
  d = np.array([1.2, -0.4, 0.0, 2.5])
  tau = np.array([0.5, 0.3, 1.0, 2.0])
  longer = np.array([1.0, 0.0, 0.5, 1.0])
  for name, expected in {
      "good": _bt(d, tau), "fast": _bt(d, tau), "drifting": _bt(d, tau),
      "position_biased": 0.3 + 0.7 * _bt(d, tau),
      "length_biased": 0.4 * longer + 0.6 * _bt(d, tau),
      "spammer": np.full(4, 0.5),
      "adversary": 0.8 * _bt(-d, tau) + 0.1,
  }.items():
    got = annotate.label_probability(d, np.full(4, TYPES[name]), tau, longer, config)
    np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=name)


def test_simulated_labels_follow_the_model():
  rng = np.random.default_rng(0)
  num_items = 3000
  difference = rng.normal(size=num_items)
  lengths = rng.integers(5, 30, size=(num_items, 2))
  config = annotate.CrowdConfig(num_annotators=30, annotations_per_item=5)
  crowd = annotate.simulate_crowd(7, difference, lengths, config)
  # The per-annotation probability is the formula at the annotator's temperature (after
  # its change point for drifting annotators).
  tau = np.where(crowd.after_drift, crowd.temperature_after[crowd.annotators], crowd.temperature[crowd.annotators])
  a_longer = np.sign(lengths[:, 0] - lengths[:, 1]) * 0.5 + 0.5
  expected = annotate.label_probability(difference[crowd.items], crowd.types[crowd.annotators], tau,
                                        a_longer[crowd.items], config)
  np.testing.assert_allclose(crowd.probability_a, expected)
  good = crowd.types[crowd.annotators] == TYPES["good"]
  np.testing.assert_allclose(crowd.probability_a[good], _bt(difference[crowd.items][good], tau[good]))
  # Draws: observed share of "a" within 4 binomial standard errors of the mean probability,
  # in bins of the probability.
  is_a = crowd.labels == feedback.A_PREFERRED
  for low in np.arange(0.0, 1.0, 0.2):
    in_bin = (crowd.probability_a >= low) & (crowd.probability_a < low + 0.2)
    p = crowd.probability_a[in_bin]
    se = np.sqrt(np.sum(p * (1 - p))) / p.size
    assert abs(is_a[in_bin].mean() - p.mean()) < 4 * se + 1e-9
  # Golden answers are the gold preference; the truth is d > 0.
  np.testing.assert_array_equal(crowd.truth, np.where(difference > 0, 0, 1))
  golden = crowd.is_golden
  np.testing.assert_array_equal(crowd.golden_labels[golden], crowd.truth[crowd.items[golden]])
  assert np.all(crowd.golden_labels[~golden] == -1)
  assert crowd.cost(annotate.Costs(crowd=0.5)) == pytest.approx(0.5 * crowd.num_annotations)


def test_expert_is_more_accurate_than_the_crowd():
  rng = np.random.default_rng(1)
  difference = rng.normal(size=4000)
  expert = annotate.expert_labels(3, difference, temperature=0.05)
  np.testing.assert_array_equal(expert, annotate.expert_labels(3, difference, temperature=0.05))
  truth = np.where(difference > 0, 0, 1)
  expert_accuracy = np.mean(expert == truth)
  # E[accuracy] of a BT judge = mean of sigmoid(|d| / tau).
  assert expert_accuracy == pytest.approx(np.mean(_bt(np.abs(difference), 0.05)), abs=0.015)
  crowd = annotate.simulate_crowd(3, difference, rng.integers(5, 30, (4000, 2)), annotate.CrowdConfig())
  good = crowd.types[crowd.annotators] == TYPES["good"]
  crowd_accuracy = np.mean(crowd.labels[good] == truth[crowd.items[good]])
  assert expert_accuracy > crowd_accuracy + 0.1
