"""Tests for rlhf_jax.feedback.metrics.calibration: annotator metrics and weights, against
hand-computed examples, NumPy (numpy.nanmedian) and simulated annotators of known accuracy."""

import math

import jax
import numpy as np
import pytest

from rlhf_jax.feedback.metrics import calibration as annotators
from rlhf_jax.feedback import simulate

DAY = 86400.0
T0 = 1_700_000_000.0 - (1_700_000_000.0 % DAY)  # midnight UTC


# ------------------------------------------------------------------------------------
# Metrics on a hand example.

# n: item, annotator, label, time, response_ms, golden, golden label
HAND = [
    (0, 0, 0, T0 + 0 * DAY + 10, 1000, True, 0),  # golden right
    (1, 0, 1, T0 + 0 * DAY + 20, 2000, True, 0),  # golden wrong
    (2, 0, 2, T0 + 1 * DAY + 30, 4000, False, -1),
    (2, 0, 2, T0 + 3 * DAY + 40, 3000, False, -1),  # repeat on another day, consistent
    (3, 0, 1, T0 + 0 * DAY + 100, np.nan, False, -1),
    (3, 0, 0, T0 + 0 * DAY + 200, 5000, False, -1),  # repeat on the same day: not a pair
    (0, 1, 1, T0 + 2 * DAY, 8000, True, 0),  # golden wrong
    (2, 1, 0, T0 + 2 * DAY + 5, 6000, False, -1),
    (2, 1, 1, T0 + 4 * DAY, 7000, False, -1),  # pair 1: inconsistent
    (2, 1, 1, T0 + 5 * DAY, 9000, False, -1),  # pair 2: consistent
]
EXPERT = np.array([-1, -1, 2, 0])


def hand_arrays(permutation=None):
  cols = list(zip(*HAND))
  arrays = dict(
      items=np.array(cols[0]), annotators=np.array(cols[1]), labels=np.array(cols[2]),
      timestamps=np.array(cols[3], np.float64), response_ms=np.array(cols[4], np.float64),
      is_golden=np.array(cols[5]), golden_labels=np.array(cols[6]),
  )
  if permutation is not None:
    arrays = {k: v[permutation] for k, v in arrays.items()}
  return arrays


@pytest.mark.parametrize("shuffle", [False, True])
def test_metrics_hand_example(shuffle):
  perm = np.random.default_rng(0).permutation(len(HAND)) if shuffle else None
  m = annotators.annotator_metrics(
      **hand_arrays(perm), expert_labels=EXPERT, num_annotators=3, num_items=4
  )
  m = jax.tree.map(np.asarray, m)
  np.testing.assert_allclose(m.golden_accuracy[:2], [0.5, 0.0])
  np.testing.assert_allclose(m.expert_agreement[:2], [0.75, 0.0])
  np.testing.assert_allclose(m.temporal_consistency[:2], [1.0, 0.5])
  np.testing.assert_allclose(m.median_response_ms[:2], [3000.0, 7500.0])
  np.testing.assert_array_equal(m.num_annotations, [6, 4, 0])
  np.testing.assert_array_equal(m.num_golden, [2, 1, 0])
  np.testing.assert_array_equal(m.num_expert, [4, 3, 0])
  np.testing.assert_array_equal(m.num_repeat_pairs, [1, 2, 0])
  np.testing.assert_array_equal(m.num_timed, [5, 4, 0])
  # An annotator without data has NaN rates.
  assert np.all(np.isnan([m.golden_accuracy[2], m.expert_agreement[2], m.temporal_consistency[2],
                          m.median_response_ms[2]]))


def test_weights_hand_example():
  m = annotators.annotator_metrics(**hand_arrays(), expert_labels=EXPERT, num_annotators=3, num_items=4)
  weights = np.asarray(annotators.annotator_weights(m))
  # 0.4 * 0.5 + 0.4 * 0.75 + 0.2 * 1 = 0.7 (median 3000 ms is not under 3 s);
  # 0.4 * 0 + 0.4 * 0 + 0.2 * 0.5 = 0.1; no evidence -> mean of the others = 0.4.
  np.testing.assert_allclose(weights, [0.7, 0.1, 0.4], rtol=1e-6)
  weights = np.asarray(annotators.annotator_weights(m, fast_threshold_ms=3500.0, no_evidence_weight=0.25))
  np.testing.assert_allclose(weights, [0.7 * 0.7, 0.1, 0.25], rtol=1e-6)
  weights = np.asarray(annotators.annotator_weights(m, golden_coef=1.0, expert_coef=0.0, temporal_coef=0.0))
  np.testing.assert_allclose(weights[:2], [0.5, 0.0], atol=1e-7)


def test_metrics_without_optional_fields():
  arrays = hand_arrays()
  m = annotators.annotator_metrics(arrays["items"], arrays["annotators"], arrays["labels"], num_annotators=3,
                                   num_items=4)
  m = jax.tree.map(np.asarray, m)
  for rate in (m.golden_accuracy, m.expert_agreement, m.temporal_consistency, m.median_response_ms):
    assert np.all(np.isnan(rate))
  np.testing.assert_array_equal(m.num_annotations, [6, 4, 0])
  # No evidence at all: everybody gets the documented fallback of 0.5.
  np.testing.assert_allclose(annotators.annotator_weights(m), 0.5)


def test_median_response_equals_numpy_nanmedian():
  rng = np.random.default_rng(5)
  n, num_annotators = 4000, 41
  # Skewed workloads, including annotators with 0, 1 and 2 annotations.
  weights = np.arange(1, num_annotators - 2, dtype=np.float64)
  annotator = rng.choice(num_annotators - 3, size=n, p=weights / weights.sum())
  annotator = np.concatenate([annotator, [num_annotators - 2, num_annotators - 1, num_annotators - 1]])
  response = rng.lognormal(8.5, 0.7, size=annotator.size)
  response[rng.random(annotator.size) < 0.05] = np.nan
  items = np.zeros(annotator.size, int)
  m = annotators.annotator_metrics(items, annotator, items, response_ms=response, num_annotators=num_annotators,
                                   num_items=1)
  expected = []
  for a in range(num_annotators):
    values = response[annotator == a]
    expected.append(np.nanmedian(values) if np.isfinite(values).any() else np.nan)
  np.testing.assert_allclose(m.median_response_ms, expected, rtol=1e-6)
  timed = [np.isfinite(response[annotator == a]).sum() for a in range(num_annotators)]
  np.testing.assert_array_equal(m.num_timed, timed)


# ------------------------------------------------------------------------------------
# Weights: the formula and the missing-metric rule.


def np_weights(golden, expert, temporal, counts, median, coefs=(0.4, 0.4, 0.2), fast=3000.0, penalty=0.7,
               min_count=1, fallback=None):
  out = []
  for a in range(len(golden)):
    num = den = 0.0
    for coef, value, count in zip(coefs, (golden[a], expert[a], temporal[a]), counts[a]):
      if count >= min_count and np.isfinite(value):
        num += coef * value
        den += coef
    out.append(num / den if den > 0 else np.nan)
  out = np.array(out)
  has = np.isfinite(out)
  fill = (out[has].mean() if has.any() else 0.5) if fallback is None else fallback
  out = np.where(has, out, fill)
  return np.where(np.isfinite(median) & (median < fast), penalty * out, out)


def make_metrics(golden, expert, temporal, counts, median):
  counts = np.asarray(counts, np.int32)
  return annotators.AnnotatorMetrics(
      golden_accuracy=np.asarray(golden, np.float32), expert_agreement=np.asarray(expert, np.float32),
      temporal_consistency=np.asarray(temporal, np.float32), median_response_ms=np.asarray(median, np.float32),
      num_annotations=counts.sum(1), num_golden=counts[:, 0], num_expert=counts[:, 1],
      num_repeat_pairs=counts[:, 2], num_timed=counts.sum(1),
  )


def test_weights_formula_against_numpy():
  rng = np.random.default_rng(9)
  size = 200
  golden, expert, temporal = rng.random((3, size))
  counts = rng.integers(0, 4, size=(size, 3))
  golden[counts[:, 0] == 0] = np.nan
  expert[counts[:, 1] == 0] = np.nan
  temporal[counts[:, 2] == 0] = np.nan
  median = rng.lognormal(8.3, 0.6, size)
  median[::17] = np.nan
  metrics = make_metrics(golden, expert, temporal, counts, median)
  expected = np_weights(golden, expert, temporal, counts, median)
  np.testing.assert_allclose(annotators.annotator_weights(metrics), expected, rtol=1e-5)
  kwargs = dict(golden_coef=0.5, expert_coef=0.2, temporal_coef=0.3, fast_threshold_ms=5000.0, fast_penalty=0.5,
                min_count=2, no_evidence_weight=0.1)
  expected = np_weights(golden, expert, temporal, counts, median, coefs=(0.5, 0.2, 0.3), fast=5000.0, penalty=0.5,
                        min_count=2, fallback=0.1)
  np.testing.assert_allclose(annotators.annotator_weights(metrics, **kwargs), expected, rtol=1e-5)


def test_missing_metrics_renormalise_the_remaining_coefficients():
  metrics = make_metrics(
      golden=[0.9, 0.9, np.nan], expert=[np.nan, 0.6, np.nan], temporal=[np.nan, np.nan, 0.8],
      counts=[[5, 0, 0], [5, 5, 0], [0, 0, 3]], median=[9000, 9000, 9000],
  )
  weights = np.asarray(annotators.annotator_weights(metrics))
  # Only golden -> the golden accuracy itself; golden + expert -> (0.4*0.9 + 0.4*0.6) / 0.8.
  np.testing.assert_allclose(weights, [0.9, 0.75, 0.8], rtol=1e-6)


def test_weights_reject_bad_coefficients():
  metrics = make_metrics([0.9], [0.9], [0.9], [[1, 1, 1]], [9000])
  with pytest.raises(ValueError, match="golden_coef"):
    annotators.annotator_weights(metrics, golden_coef=-0.1)
  with pytest.raises(ValueError, match="positive"):
    annotators.annotator_weights(metrics, golden_coef=0.0, expert_coef=0.0, temporal_coef=0.0)
  with pytest.raises(ValueError, match="fast_penalty"):
    annotators.annotator_weights(metrics, fast_penalty=1.5)


def test_metrics_input_errors():
  arrays = hand_arrays()
  with pytest.raises(ValueError, match="num_items"):
    annotators.annotator_metrics(arrays["items"], arrays["annotators"], arrays["labels"], num_annotators=3, num_items=3)
  with pytest.raises(ValueError, match="annotators"):
    annotators.annotator_metrics(arrays["items"], arrays["annotators"][:-1], arrays["labels"], num_annotators=3,
                                 num_items=4)
  with pytest.raises(ValueError, match="golden_labels"):
    annotators.annotator_metrics(arrays["items"], arrays["annotators"], arrays["labels"], is_golden=arrays["is_golden"],
                                 num_annotators=3, num_items=4)
  with pytest.raises(ValueError, match="timestamps"):
    annotators.annotator_metrics(arrays["items"], arrays["annotators"], arrays["labels"], timestamps=np.ones(3),
                                 num_annotators=3, num_items=4)


# ------------------------------------------------------------------------------------
# Metrics on simulated annotators of known accuracy.


def test_metrics_recover_simulated_annotators():
  config = simulate.SimulationConfig(
      num_items=6000, num_annotators=40, annotations_per_item=5, golden_rate=0.2, expert_rate=0.3,
      repeat_rate=0.1, drifting_share=0.0, good_share=0.65,
  )
  sim = simulate.simulate_annotations(jax.random.key(4), config)
  m = annotators.annotator_metrics(
      sim.items, sim.annotators, sim.labels, timestamps=sim.timestamps, response_ms=sim.response_ms,
      is_golden=sim.is_golden, golden_labels=sim.golden_labels, expert_labels=sim.expert_labels,
      num_annotators=40, num_items=6000,
  )
  m = jax.tree.map(np.asarray, m)
  # Golden accuracy: per annotator Binomial(num_golden, accuracy), pooled as a chi-square.
  p = sim.accuracy.astype(np.float64)
  z = (m.golden_accuracy - p) * np.sqrt(m.num_golden / (p * (1 - p)))
  assert abs(np.sum(z**2) - 40) < 5 * math.sqrt(2 * 40)
  # Expert labels are the truth here (expert_accuracy = 1), so agreement estimates accuracy too.
  z = (m.expert_agreement - p) * np.sqrt(m.num_expert / (p * (1 - p)))
  assert abs(np.sum(z**2) - 40) < 5 * math.sqrt(2 * 40)
  # Temporal consistency: two independent draws from the annotator's confusion rows agree
  # with probability sum_c prior_c sum_k confusion[c, k]^2.
  prior = np.array([0.45, 0.45, 0.10])
  same = np.einsum("c,mck->m", prior, sim.confusion.astype(np.float64) ** 2)
  expected = np.sum(same * m.num_repeat_pairs)
  observed = np.sum(m.temporal_consistency * m.num_repeat_pairs)
  sd = math.sqrt(np.sum(same * (1 - same) * m.num_repeat_pairs))
  assert abs(observed - expected) < 4 * sd
  # Fast annotators are penalised, spammers and adversaries weigh least.
  weights = np.asarray(annotators.annotator_weights(jax.tree.map(np.asarray, m)))
  types = np.array(sim.type_names())
  assert np.all(m.median_response_ms[types == "fast"] < 3000) and np.all(m.median_response_ms[types != "fast"] > 3000)
  assert weights[types == "good"].min() > weights[np.isin(types, ["spammer", "adversary"])].max()
