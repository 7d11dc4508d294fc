"""Tests for rlhf_jax.feedback.simulate: the simulated statistics match the configured
values (expectations written out here from the config, binomial tolerances), the truth
it reports is consistent with the labels, and the records follow the schema."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from rlhf_jax.feedback import simulate
from rlhf_jax.feedback.simulate import ANNOTATOR_TYPES

CONFIG = simulate.SimulationConfig(
    num_items=20000, num_annotators=200, annotations_per_item=5, longer_preferred=0.7, repeat_rate=0.05,
    expert_rate=0.1, expert_accuracy=0.9, golden_rate=0.07,
)
PRIOR = np.array([0.45, 0.45, 0.10])
SMALL = simulate.SimulationConfig(num_items=40, num_annotators=6, annotations_per_item=3, golden_rate=0.25,
                                  repeat_rate=0.1)


@pytest.fixture(scope="module")
def sim():
  return simulate.simulate_annotations(jax.random.key(0), CONFIG)


def type_mask(sim, name):
  return sim.annotator_types == ANNOTATOR_TYPES.index(name)


def check_pooled_accuracy(sim, selected, mean, spread_var):
  """Pooled accuracy over `selected` annotations is `mean` within 4.5 standard errors.

  The variance has a between-annotator part (each annotator's accuracy is a random draw
  with variance `spread_var`, weighted by its share of the annotations) and a binomial part.
  """
  correct = sim.labels[selected] == sim.true_labels[sim.items[selected]]
  n = selected.sum()
  per_annotator = np.bincount(sim.annotators[selected], minlength=CONFIG.num_annotators)
  var = spread_var * np.sum(per_annotator.astype(np.float64) ** 2) / n**2 + mean * (1 - mean) / n
  assert abs(correct.mean() - mean) < 4.5 * math.sqrt(var), (correct.mean(), mean, math.sqrt(var))


def uniform_var(bounds):
  return (bounds[1] - bounds[0]) ** 2 / 12


def test_type_counts_follow_shares(sim):
  counts = np.bincount(sim.annotator_types, minlength=len(ANNOTATOR_TYPES))
  np.testing.assert_array_equal(counts, [120, 20, 20, 10, 10, 10, 10])


def test_accuracy_per_type_matches_configuration(sim):
  c = CONFIG
  a_type = sim.annotator_types[sim.annotators]
  good_mean = np.mean(c.good_accuracy)
  s_pos, s_len, q = c.position_bias, c.length_bias, c.longer_preferred
  expected = {
      "good": (good_mean, uniform_var(c.good_accuracy)),
      # Biased answers are right when the truth is "a" (position) / the longer response is
      # the preferred one (length: only for a or b truths).
      "position_biased": ((1 - s_pos) * good_mean + s_pos * PRIOR[0], (1 - s_pos) ** 2 * uniform_var(c.good_accuracy)),
      "length_biased": ((1 - s_len) * good_mean + s_len * (PRIOR[0] + PRIOR[1]) * q,
                        (1 - s_len) ** 2 * uniform_var(c.good_accuracy)),
      "spammer": (1 / 3, 0.0),
      # Inversion is never right (a <-> b, tie -> a or b); the uniform part is right 1/3 of the time.
      "adversary": ((1 - c.adversary_flip) / 3, 0.0),
      "fast": (np.mean(c.fast_accuracy), uniform_var(c.fast_accuracy)),
  }
  for name, (mean, var) in expected.items():
    check_pooled_accuracy(sim, a_type == ANNOTATOR_TYPES.index(name), mean, var)
  # Drifting annotators: good before their change time, worse after.
  drifting = a_type == ANNOTATOR_TYPES.index("drifting")
  after = sim.timestamps >= np.nan_to_num(sim.change_times[sim.annotators], nan=np.inf)
  np.testing.assert_array_equal(after & drifting, sim.after_drift)
  check_pooled_accuracy(sim, drifting & ~after, good_mean, uniform_var(c.good_accuracy))
  check_pooled_accuracy(sim, drifting & after, np.mean(c.drift_accuracy_after), uniform_var(c.drift_accuracy_after))


def test_reported_confusions_match_the_labels(sim):
  # Per annotator, the number of correct labels is a sum of Bernoullis with probability
  # confusion[a, truth, truth] (after-drift matrix after the change): pooled chi-square.
  truth = sim.true_labels[sim.items]
  confusion = np.where(sim.after_drift[:, None, None], sim.confusion_after_drift[sim.annotators],
                       sim.confusion[sim.annotators])
  p = confusion[np.arange(truth.size), truth, truth].astype(np.float64)
  correct = sim.labels == truth
  m = CONFIG.num_annotators
  expected = np.bincount(sim.annotators, weights=p, minlength=m)
  var = np.bincount(sim.annotators, weights=p * (1 - p), minlength=m)
  observed = np.bincount(sim.annotators, weights=correct, minlength=m)
  chi2 = np.sum((observed - expected) ** 2 / var)
  assert abs(chi2 - m) < 5 * math.sqrt(2 * m), chi2
  # Pooled confusion counts of all annotations, cell by cell.
  k = CONFIG.num_classes
  probs = confusion[np.arange(truth.size), truth].astype(np.float64)  # [N, K]
  for t in range(k):
    rows = truth == t
    expected_counts = probs[rows].sum(0)
    observed_counts = np.bincount(sim.labels[rows], minlength=k)
    sd = np.sqrt((probs[rows] * (1 - probs[rows])).sum(0))
    assert np.all(np.abs(observed_counts - expected_counts) < 5 * sd + 1)


def test_confusion_matrices_follow_the_type_formulas(sim):
  c = CONFIG
  s, q = c.position_bias, c.longer_preferred
  for a in np.flatnonzero(type_mask(sim, "position_biased"))[:3]:
    acc = sim.confusion[a, 1, 1] / (1 - s)
    sym = np.full((3, 3), (1 - acc) / 2) + np.eye(3) * (acc - (1 - acc) / 2)
    np.testing.assert_allclose(sim.confusion[a], (1 - s) * sym + s * np.array([[1, 0, 0]] * 3), atol=1e-6)
    assert c.good_accuracy[0] <= acc <= c.good_accuracy[1]
  for a in np.flatnonzero(type_mask(sim, "length_biased"))[:3]:
    acc = sim.confusion[a, 2, 2] / (1 - c.length_bias)
    sym = np.full((3, 3), (1 - acc) / 2) + np.eye(3) * (acc - (1 - acc) / 2)
    longer = np.array([[q, 1 - q, 0], [1 - q, q, 0], [0.5, 0.5, 0]])
    np.testing.assert_allclose(sim.confusion[a], (1 - c.length_bias) * sym + c.length_bias * longer, atol=1e-6)
  adversary = (1 - c.adversary_flip) / 3 + c.adversary_flip * np.array([[0, 1, 0], [1, 0, 0], [0.5, 0.5, 0]])
  for a in np.flatnonzero(type_mask(sim, "adversary")):
    np.testing.assert_allclose(sim.confusion[a], adversary, atol=1e-6)
  np.testing.assert_allclose(sim.confusion[type_mask(sim, "spammer")], 1 / 3, atol=1e-6)
  np.testing.assert_allclose(sim.confusion.sum(-1), 1.0, atol=1e-5)


def test_length_bias_and_longer_preferred(sim):
  c = CONFIG
  truth = sim.true_labels
  longer_is_a = sim.length_a > sim.length_b
  assert np.all(sim.length_a != sim.length_b)
  ab = truth <= 1
  preferred_longer = np.where(truth == 0, longer_is_a, ~longer_is_a)[ab]
  n = preferred_longer.size
  assert abs(preferred_longer.mean() - c.longer_preferred) < 4.5 * math.sqrt(0.21 / n)
  # On tie items, a length-biased annotator picks the longer response with probability
  # s + (1 - s) (1 - acc) / 2; a good one with (1 - acc) / 2.
  tie_items = truth[sim.items] == 2
  picked_longer = sim.labels == np.where(longer_is_a[sim.items], 0, 1)
  a_type = sim.annotator_types[sim.annotators]
  for name, bias in (("length_biased", c.length_bias), ("good", 0.0)):
    sel = tie_items & (a_type == ANNOTATOR_TYPES.index(name))
    expected = bias + (1 - bias) * (1 - np.mean(c.good_accuracy)) / 2
    sd = math.sqrt(expected * (1 - expected) / sel.sum() + (1 - bias) ** 2 * uniform_var(c.good_accuracy) / 4 / 10)
    assert abs(picked_longer[sel].mean() - expected) < 4.5 * sd
  # Lengths are log-normal around the configured median.
  lengths = np.concatenate([sim.length_a, sim.length_b])
  assert abs(np.median(lengths) / c.response_length_median - 1) < 0.05


def test_golden_items_and_expert_labels(sim):
  c = CONFIG
  assert sim.golden_items.sum() == round(c.golden_rate * c.num_items)
  base = ~sim.is_repeat
  # Every item has exactly R base annotations, so the golden share is exact there.
  assert sim.is_golden[base].sum() == c.annotations_per_item * sim.golden_items.sum()
  assert abs(sim.is_golden.mean() - c.golden_rate) < 0.005
  np.testing.assert_array_equal(sim.is_golden, sim.golden_items[sim.items])
  np.testing.assert_array_equal(sim.golden_labels, np.where(sim.is_golden, sim.true_labels[sim.items], -1))
  has_expert = sim.expert_labels >= 0
  n = c.num_items
  assert abs(has_expert.mean() - c.expert_rate) < 4.5 * math.sqrt(c.expert_rate * (1 - c.expert_rate) / n)
  right = (sim.expert_labels == sim.true_labels)[has_expert]
  assert abs(right.mean() - c.expert_accuracy) < 4.5 * math.sqrt(0.09 / has_expert.sum())


def test_class_prior(sim):
  freq = np.bincount(sim.true_labels, minlength=3) / CONFIG.num_items
  assert np.all(np.abs(freq - PRIOR) < 4.5 * np.sqrt(PRIOR * (1 - PRIOR) / CONFIG.num_items))


def test_assignment_distinct_annotators_and_balanced_load(sim):
  c = CONFIG
  base = ~sim.is_repeat
  items, annotators = sim.items[base], sim.annotators[base]
  np.testing.assert_array_equal(np.bincount(items, minlength=c.num_items), c.annotations_per_item)
  pairs = items.astype(np.int64) * c.num_annotators + annotators
  assert np.unique(pairs).size == pairs.size  # distinct annotators within an item
  load = np.bincount(annotators, minlength=c.num_annotators)
  mean = c.num_items * c.annotations_per_item / c.num_annotators
  assert np.all(np.abs(load - mean) < 6 * math.sqrt(mean))


def test_timestamps_repeats_and_response_times(sim):
  c = CONFIG
  base = ~sim.is_repeat
  span = c.num_days * 86400
  assert np.all((sim.timestamps[base] >= c.start_time) & (sim.timestamps[base] < c.start_time + span))
  assert abs(sim.is_repeat.sum() - round(c.repeat_rate * base.sum())) == 0
  # Each repeat follows a base annotation of the same (item, annotator) 1-3 days earlier.
  key = sim.items.astype(np.int64) * c.num_annotators + sim.annotators
  first_time = {}
  for k, t in zip(key[base].tolist(), sim.timestamps[base].tolist()):
    first_time[k] = t
  gaps = np.array([t - first_time[k] for k, t in zip(key[~base].tolist(), sim.timestamps[~base].tolist())]) / 86400
  assert gaps.min() >= c.repeat_gap_days[0] - 1e-6 and gaps.max() <= c.repeat_gap_days[1] + 1e-6
  # Response times: each annotator's empirical median is near its configured median, and
  # fast annotators are under 3 s.
  medians = np.array([np.median(sim.response_ms[sim.annotators == a]) for a in range(c.num_annotators)])
  counts = np.bincount(sim.annotators, minlength=c.num_annotators)
  # Standard error of a sample median of a log-normal, on the log scale: 1.2533 sigma / sqrt(n).
  log_error = np.abs(np.log(medians / sim.median_response_ms))
  assert np.all(log_error < 5 * 1.2533 * c.response_ms_sigma_within / np.sqrt(counts))
  fast = type_mask(sim, "fast")
  assert np.all(medians[fast] < 3000) and np.all(medians[~fast] > 3000)


def test_drift_change_points(sim):
  c = CONFIG
  drifting = type_mask(sim, "drifting")
  span = c.num_days * 86400
  offsets = (sim.change_times[drifting] - c.start_time) / span
  assert np.all((offsets >= c.drift_window[0]) & (offsets <= c.drift_window[1]))
  assert np.all(np.isnan(sim.change_times[~drifting])) and np.all(sim.change_index[~drifting] == -1)
  for a in np.flatnonzero(drifting):
    before = np.sum((sim.annotators == a) & (sim.timestamps < sim.change_times[a]))
    assert sim.change_index[a] == before
  np.testing.assert_allclose(sim.accuracy_after_drift[~drifting], sim.accuracy[~drifting])


def test_reproducible_and_key_dependent():
  first = simulate.simulate_annotations(jax.random.key(5), SMALL)
  again = simulate.simulate_annotations(jax.random.key(5), SMALL)
  other = simulate.simulate_annotations(jax.random.key(6), SMALL)
  np.testing.assert_array_equal(first.labels, again.labels)
  np.testing.assert_array_equal(first.timestamps, again.timestamps)
  assert not np.array_equal(first.labels, other.labels)


def test_two_classes():
  config = simulate.SimulationConfig(num_items=2000, num_annotators=20, annotations_per_item=3, num_classes=2,
                                     good_share=1.0, position_biased_share=0.0, length_biased_share=0.0,
                                     spammer_share=0.0, adversary_share=0.0, fast_share=0.0, drifting_share=0.0)
  sim = simulate.simulate_annotations(jax.random.key(7), config)
  assert set(np.unique(sim.labels)) <= {0, 1} and sim.confusion.shape == (20, 2, 2)
  correct = sim.labels == sim.true_labels[sim.items]
  assert abs(correct.mean() - 0.825) < 4.5 * math.sqrt(uniform_var((0.7, 0.95)) / 20 + 0.15 / correct.size)


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="_share"):
    simulate.SimulationConfig(good_share=0.9)
  with pytest.raises(ValueError, match="annotations_per_item"):
    simulate.SimulationConfig(num_annotators=3, annotations_per_item=4)
  with pytest.raises(ValueError, match="class_prior"):
    simulate.SimulationConfig(class_prior=(0.5, 0.5))
  with pytest.raises(ValueError, match="good_accuracy"):
    simulate.SimulationConfig(good_accuracy=(0.9, 0.8))
  with pytest.raises(ValueError, match="golden_rate"):
    simulate.SimulationConfig(golden_rate=1.5)
  with pytest.raises(TypeError, match="SimulationConfig"):
    simulate.simulate_annotations(jax.random.key(0), {"num_items": 3})


# ------------------------------------------------------------------------------------
# Records.



def test_records_follow_the_schema(tmp_path):
  sim = simulate.simulate_annotations(jax.random.key(1), SMALL)
  records = simulate.to_records(sim)
  assert len(records) == sim.num_annotations
  names = ("a", "b", "tie")
  for n, record in enumerate(records):
    assert record["annotation_id"] == f"sim-{n}"
    assert record["item_id"] == f"item-{sim.items[n]}"
    assert record["annotator_id"] == f"annotator-{sim.annotators[n]}"
    assert record["choice"] == names[sim.labels[n]]
    assert record["timestamp"] == pytest.approx(sim.timestamps[n], abs=1e-3)
    assert record["response_ms"] == pytest.approx(sim.response_ms[n], abs=0.1)
    assert record["is_golden"] == bool(sim.is_golden[n])
    assert ("golden_answer" in record) == bool(sim.is_golden[n])
    if sim.is_golden[n]:
      assert record["golden_answer"] == names[sim.true_labels[sim.items[n]]]
    assert record["guideline_version"] == SMALL.guideline_version
    assert len(record["response_a"].split()) == sim.length_a[sim.items[n]]
    assert len(record["response_b"].split()) == sim.length_b[sim.items[n]]
  schema = {"annotation_id", "item_id", "prompt", "response_a", "response_b", "response_a_id", "response_b_id",
            "annotator_id", "choice", "strength", "timestamp", "response_ms", "is_golden", "golden_answer",
            "guideline_version"}
  assert all(set(r) <= schema for r in records)
  ids_only = simulate.to_records(sim, with_text=False)[0]
  assert "response_a" not in ids_only and ids_only["response_a_id"] == f"item-{sim.items[0]}-a"

  path = tmp_path / "sim.jsonl"
  assert simulate.write_jsonl(sim, path) == len(records)
  lines = path.read_text(encoding="utf-8").splitlines()
  assert [json.loads(line) for line in lines] == records


def test_records_round_trip_through_the_reader(tmp_path):
  from rlhf_jax.feedback.io import records as records_module  # pylint: disable=g-import-not-at-top
  sim = simulate.simulate_annotations(jax.random.key(1), SMALL)
  path = tmp_path / "sim.jsonl"
  simulate.write_jsonl(sim, path)
  report = records_module.read_annotations(path, format="jsonl", duplicate_policy="keep_all")
  encoded = report.annotations
  assert report.num_rejected == 0 and report.num_accepted == sim.num_annotations
  order = np.argsort([int(a.split("-")[1]) for a in encoded.annotation_ids])
  items = np.array([int(encoded.item_ids[i].split("-")[1]) for i in encoded.items])[order]
  annotators = np.array([int(encoded.annotator_ids[a].split("-")[1]) for a in encoded.annotators])[order]
  labels = np.array([("a", "b", "tie").index(encoded.class_names[c]) for c in encoded.labels])[order]
  np.testing.assert_array_equal(items, sim.items)
  np.testing.assert_array_equal(annotators, sim.annotators)
  np.testing.assert_array_equal(labels, sim.labels)


def test_to_encoded_and_non_pairwise_records():
  sim = simulate.simulate_annotations(jax.random.key(1), SMALL)
  encoded = simulate.to_encoded(sim)
  assert encoded.num_items == SMALL.num_items and encoded.num_annotators == SMALL.num_annotators
  assert encoded.class_names == ("a", "b", "tie") and encoded.num_annotations == sim.num_annotations
  np.testing.assert_array_equal(encoded.golden_labels, sim.golden_labels)
  four = dataclasses.replace(sim, config=simulate.SimulationConfig(num_classes=4))
  with pytest.raises(ValueError, match="num_classes=4"):
    simulate.to_records(four)


@pytest.mark.slow
def test_one_million_annotations_at_scale():
  """A million annotations come out whole (speed is measured in benchmarks/, not here)."""
  config = simulate.SimulationConfig(num_items=200_000, num_annotators=2000, annotations_per_item=5)
  sim = simulate.simulate_annotations(jax.random.key(1), config)
  assert sim.num_annotations == 1_000_000
  # Every item gets its five annotations from five distinct annotators.
  np.testing.assert_array_equal(np.bincount(sim.items, minlength=config.num_items), 5)
  assert np.unique(sim.items.astype(np.int64) * config.num_annotators + sim.annotators).size == 1_000_000
  # Labels agree with the truth at about the rate the annotators' confusion matrices imply.
  expected = sim.confusion[sim.annotators, sim.true_labels[sim.items], sim.true_labels[sim.items]]
  observed = sim.labels == sim.true_labels[sim.items]
  assert abs(observed.mean() - expected.mean()) < 0.01
