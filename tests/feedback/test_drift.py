"""Tests for rlhf_jax.feedback.drift against plain-Python detectors written here, Page's
max-window form of the CUSUM, an exact Markov-chain average run length (Brook & Evans
1972), and simulated drift with known change points."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from rlhf_jax.feedback import drift
from rlhf_jax.feedback import simulate


# ------------------------------------------------------------------------------------
# Plain-Python references.


def ref_cusum(correct, p0, p1, h):
  """Bernoulli CUSUM, restart after each alarm. Returns (path, alarms, first, change)."""
  up, down = math.log((1 - p1) / (1 - p0)), math.log(p1 / p0)
  s, last_zero, first, change = 0.0, -1, -1, -1
  path, alarms = [], []
  for t, x in enumerate(correct):
    s = max(0.0, s + (down if x else up))
    alarm = s >= h
    if alarm:
      if first < 0:
        first, change = t, last_zero + 1
      s = 0.0
    if s == 0.0:
      last_zero = t
    path.append(s)
    alarms.append(alarm)
  return np.array(path), np.array(alarms), first, change


def ref_page_hinkley(x, delta, lam, direction="decrease", min_samples=1):
  """Page-Hinkley with the running mean, restart after each alarm."""
  n, mean, m, extreme, extreme_at = 0, 0.0, 0.0, 0.0, -1
  first, change = -1, -1
  path, alarms = [], []
  for t, v in enumerate(x):
    n += 1
    mean += (v - mean) / n
    if direction == "decrease":
      m += v - mean + delta
      if m >= extreme:
        extreme, extreme_at = m, t
      ph = extreme - m
    else:
      m += v - mean - delta
      if m <= extreme:
        extreme, extreme_at = m, t
      ph = m - extreme
    alarm = ph > lam and n >= min_samples
    if alarm:
      if first < 0:
        first, change = t, extreme_at + 1
      n, mean, m, extreme, extreme_at, ph = 0, 0.0, 0.0, 0.0, t, 0.0
    path.append(ph)
    alarms.append(alarm)
  return np.array(path), np.array(alarms), first, change


# ------------------------------------------------------------------------------------
# Bernoulli CUSUM.


def test_cusum_hand_example():
  # p0 = 0.9, p1 = 0.5: a wrong answer adds log(0.5/0.1) = 1.609, a right one
  # log(0.5/0.9) = -0.588. S: 0, 0, 0, 1.609, 1.021, 2.631, 4.240 >= 3 -> alarm at 6,
  # last zero at 2 -> change estimate 3. Then restart: 1 1 0 0 -> 0, 0, 1.609, 3.219 -> alarm at 10.
  correct = [1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1]
  result = drift.bernoulli_cusum(jnp.array(correct), p0=0.9, p1=0.5, threshold=3.0)
  assert int(result.alarm_index) == 6
  assert int(result.change_index) == 3
  assert int(result.num_alarms) == 2
  np.testing.assert_array_equal(np.flatnonzero(result.alarms), [6, 10])
  path, alarms, first, change = ref_cusum(correct, 0.9, 0.5, 3.0)
  np.testing.assert_allclose(result.statistic, path, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(result.alarms, alarms)
  assert (first, change) == (6, 3)
  # Accuracy before the change: 3/3; from the change to the end: 4/9 correct.
  np.testing.assert_allclose(result.mean_before, 1.0)
  np.testing.assert_allclose(result.mean_after, 4 / 9, rtol=1e-6)
  np.testing.assert_allclose(result.magnitude, 1 - 4 / 9, rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_cusum_matches_python_loop_on_random_streams(seed):
  rng = np.random.default_rng(seed)
  correct = rng.random(400) < np.where(np.arange(400) < 200, 0.9, 0.65)
  p0, p1, h = 0.9, 0.7, 2.5
  result = drift.bernoulli_cusum(correct, p0=p0, p1=p1, threshold=h)
  path, alarms, first, change = ref_cusum(correct.tolist(), p0, p1, h)
  np.testing.assert_allclose(result.statistic, path, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(result.alarms, alarms)
  assert int(result.alarm_index) == first
  assert int(result.change_index) == change


def test_cusum_equals_page_max_window_form():
  # Without alarms, S_t = max(0, max_{k <= t} sum_{i=k}^t z_i) (Page 1954).
  rng = np.random.default_rng(7)
  correct = rng.random(300) < 0.8
  p0, p1 = 0.9, 0.6
  z = np.where(correct, math.log(p1 / p0), math.log((1 - p1) / (1 - p0)))
  prefix = np.concatenate([[0.0], np.cumsum(z)])
  expected = np.array([max(0.0, prefix[t + 1] - prefix[: t + 1].min()) for t in range(len(z))])
  result = drift.bernoulli_cusum(correct, p0=p0, p1=p1, threshold=1e9)
  np.testing.assert_allclose(result.statistic, expected, rtol=1e-4, atol=1e-3)
  assert int(result.alarm_index) == -1 and int(result.num_alarms) == 0
  assert np.isnan(result.magnitude)


def test_cusum_in_control_average_run_length_matches_markov_chain():
  # Choose p1 so that a wrong answer adds exactly 3 units u = log(p0 / p1): the
  # statistic then lives on the grid {0, u, 2u, ...} and its run length is the
  # absorption time of a Markov chain (Brook & Evans 1972), solved exactly here.
  p0 = 0.9
  p1 = optimize.brentq(lambda p: math.log((1 - p) / (1 - p0)) - 3 * math.log(p0 / p), 0.3, 0.89)
  unit = math.log(p0 / p1)
  grid_threshold = 8  # alarm when S >= 8 u (ARL ~ 312)
  states = grid_threshold
  transition = np.zeros((states, states))
  for n in range(states):
    transition[n, max(n - 1, 0)] += p0  # correct
    if n + 3 < grid_threshold:
      transition[n, n + 3] += 1 - p0  # wrong, no alarm
  arl = np.linalg.solve(np.eye(states) - transition, np.ones(states))[0]
  assert 100 < arl < 2000, arl  # sanity of the chosen design

  streams, length = 2, 200_000
  correct = jax.random.bernoulli(jax.random.key(0), p0, (streams, length))
  run = jax.vmap(lambda c: drift.bernoulli_cusum(c, p0=p0, p1=p1, threshold=(grid_threshold - 0.5) * unit))
  alarms = int(jnp.sum(run(correct).num_alarms))
  empirical_arl = streams * length / alarms
  # Run lengths are roughly geometric: relative standard error ~ 1 / sqrt(alarms).
  assert abs(empirical_arl / arl - 1) < 5 / math.sqrt(alarms), (empirical_arl, arl, alarms)


def test_cusum_rejects_bad_parameters():
  with pytest.raises(ValueError, match="p1"):
    drift.bernoulli_cusum(jnp.ones(3), p0=0.8, p1=0.8, threshold=1.0)
  with pytest.raises(ValueError, match="p0"):
    drift.bernoulli_cusum(jnp.ones(3), p0=1.0, p1=0.8, threshold=1.0)
  with pytest.raises(ValueError, match="threshold"):
    drift.bernoulli_cusum(jnp.ones(3), p0=0.9, p1=0.8, threshold=0.0)
  with pytest.raises(ValueError, match="rank 1"):
    drift.bernoulli_cusum(jnp.ones((2, 3)), p0=0.9, p1=0.8, threshold=1.0)


# ------------------------------------------------------------------------------------
# Page-Hinkley.


def test_page_hinkley_hand_example():
  # delta = 0: running means 1, 1, 1, 1, .8, .667, .571; m_t = 0, 0, 0, 0, -.8,
  # -1.467, ...; max 0 last attained at t = 3 -> change 4; PH = 1.467 > 1 at t = 5.
  values = [1, 1, 1, 1, 0, 0, 0]
  result = drift.page_hinkley(jnp.array(values, jnp.float32), delta=0.0, threshold=1.0)
  assert int(result.alarm_index) == 5
  assert int(result.change_index) == 4
  np.testing.assert_allclose(result.statistic[:5], [0, 0, 0, 0, 0.8], atol=1e-6)
  np.testing.assert_allclose(result.mean_before, 1.0)
  np.testing.assert_allclose(result.mean_after, 0.0)


@pytest.mark.parametrize("direction", ["decrease", "increase"])
@pytest.mark.parametrize("seed", range(3))
def test_page_hinkley_matches_python_loop(direction, seed):
  rng = np.random.default_rng(seed)
  shift = -0.3 if direction == "decrease" else 0.3
  values = (rng.random(500) < 0.6 + np.where(np.arange(500) < 250, 0.0, shift)).astype(np.float32)
  delta, lam, min_samples = 0.02, 4.0, 20
  result = drift.page_hinkley(values, delta=delta, threshold=lam, direction=direction, min_samples=min_samples)
  path, alarms, first, change = ref_page_hinkley(values.tolist(), delta, lam, direction, min_samples)
  np.testing.assert_allclose(result.statistic, path, rtol=1e-4, atol=1e-3)
  np.testing.assert_array_equal(result.alarms, alarms)
  assert int(result.alarm_index) == first
  assert int(result.change_index) == change
  assert alarms.sum() >= 1  # the alarm and restart paths are exercised


def test_page_hinkley_statistic_equals_direct_formula():
  rng = np.random.default_rng(3)
  x = rng.normal(size=200).astype(np.float32)
  delta = 0.1
  running_mean = np.cumsum(x) / np.arange(1, 201)
  m = np.cumsum(x - running_mean + delta)
  expected = np.maximum.accumulate(np.maximum(m, 0.0)) - m
  result = drift.page_hinkley(x, delta=delta, threshold=1e9)
  np.testing.assert_allclose(result.statistic, expected, rtol=1e-4, atol=1e-4)


def test_masked_padding_and_vmap_agree_with_unpadded_streams():
  rng = np.random.default_rng(11)
  lengths = [120, 300, 40]
  streams = [(rng.random(n) < np.where(np.arange(n) < n // 2, 0.9, 0.5)).astype(np.float32) for n in lengths]
  width = max(lengths) + 17
  padded = np.zeros((3, width), np.float32)
  mask = np.zeros((3, width), bool)
  for i, s in enumerate(streams):
    padded[i, : len(s)] = s
    mask[i, : len(s)] = True
  padded[~mask] = 0.0  # padding of wrong answers must not raise alarms
  batched = jax.vmap(lambda v, m: drift.bernoulli_cusum(v, p0=0.9, p1=0.6, threshold=3.0, mask=m))(padded, mask)
  for i, s in enumerate(streams):
    single = drift.bernoulli_cusum(s, p0=0.9, p1=0.6, threshold=3.0)
    assert int(batched.alarm_index[i]) == int(single.alarm_index)
    assert int(batched.num_alarms[i]) == int(single.num_alarms)
    np.testing.assert_allclose(batched.statistic[i, : len(s)], single.statistic, rtol=1e-6)
    np.testing.assert_allclose(batched.magnitude[i], single.magnitude, rtol=1e-6)
  # A mask with holes: the skipped entries do not count.
  holes = np.ones(width, bool)
  holes[::3] = False
  values = padded[1]
  masked = drift.page_hinkley(values, delta=0.01, threshold=3.0, mask=holes)
  dense = drift.page_hinkley(values[holes], delta=0.01, threshold=3.0)
  kept = np.flatnonzero(holes)
  assert int(masked.num_alarms) == int(dense.num_alarms)
  if int(dense.alarm_index) >= 0:
    assert int(masked.alarm_index) == kept[int(dense.alarm_index)]


def test_annotator_streams_orders_by_time_within_annotator():
  annotators = np.array([1, 0, 1, 1, 0, 2])
  values = np.array([10, 20, 30, 40, 50, 60], np.float32)
  times = np.array([5.0, 3.0, 1.0, 9.0, 2.0, 4.0]) + 1.7e9
  streams = drift.annotator_streams(annotators, values, times, num_annotators=4)
  np.testing.assert_array_equal(streams.values, [[50, 20, 0], [30, 10, 40], [60, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(streams.mask.sum(1), [2, 3, 1, 0])
  np.testing.assert_array_equal(streams.index[1], [2, 0, 3])
  assert streams.times[1, 0] == 1.7e9 + 1.0


# ------------------------------------------------------------------------------------
# Detection on simulated drift.


def test_evaluate_cusum_on_simulated_drift():
  p0, p1, h = 0.9, 0.6, 5.0
  result = drift.evaluate_detector(
      jax.random.key(1), method="cusum", num_streams=200, stream_length=600, change_index=300,
      rate_before=0.9, rate_after=0.6, p0=p0, p1=p1, threshold=h,
  )
  # Wald: the mean delay from S = 0 is at most (h + largest increment) / KL(p1 || p0).
  kl = p1 * math.log(p1 / p0) + (1 - p1) * math.log((1 - p1) / (1 - p0))
  bound = (h + math.log((1 - p1) / (1 - p0))) / kl
  assert result.detection_rate >= 0.99
  assert 1 <= result.median_delay <= bound
  assert result.mean_delay <= bound
  assert result.false_alarms_per_1000 < 2.0
  assert abs(result.median_magnitude - 0.3) < 0.05
  assert result.median_change_error <= 10


def test_evaluate_page_hinkley_on_simulated_drift():
  result = drift.evaluate_detector(
      jax.random.key(2), method="page_hinkley", num_streams=200, stream_length=600, change_index=300,
      rate_before=0.85, rate_after=0.55, delta=0.05, threshold=5.0, min_samples=30,
  )
  assert result.detection_rate >= 0.99
  assert 1 <= result.median_delay <= 40
  assert result.false_alarms_per_1000 < 1.0
  assert abs(result.median_magnitude - 0.3) < 0.05


def test_detect_drift_on_simulated_annotators():
  config = simulate.SimulationConfig(
      num_items=3000, num_annotators=20, annotations_per_item=5, good_share=0.5, drifting_share=0.5,
      position_biased_share=0.0, length_biased_share=0.0, spammer_share=0.0, adversary_share=0.0,
      fast_share=0.0, golden_rate=0.3, good_accuracy=(0.85, 0.95),
  )
  sim = simulate.simulate_annotations(jax.random.key(3), config)
  drifting = sim.annotator_types == simulate.ANNOTATOR_TYPES.index("drifting")

  # Page-Hinkley on agreement with the true label, every annotation.
  agree = (sim.labels == sim.true_labels[sim.items]).astype(np.float32)
  result, streams = drift.detect_annotator_drift(
      sim.annotators, agree, sim.timestamps, num_annotators=20, method="page_hinkley",
      delta=0.05, threshold=8.0, min_samples=30,
  )
  assert np.all(result.alarm_index[drifting] >= 0)
  # The estimated change point is near the simulated one (750 annotations per annotator).
  error = np.abs(result.change_index[drifting] - sim.change_index[drifting])
  assert np.median(error) <= 30, error
  # Alarm times are epoch seconds, mostly after the true change (a first alarm may be false).
  assert np.mean(result.alarm_time[drifting] >= sim.change_times[drifting]) >= 0.8
  estimated_times = drift.change_times(result, streams)
  assert np.all(np.isfinite(estimated_times[drifting]))
  true_drop = sim.accuracy[drifting] - sim.accuracy_after_drift[drifting]
  np.testing.assert_allclose(result.magnitude[drifting], true_drop, atol=0.12)
  false_per_1000 = result.num_alarms[~drifting].sum() / (~drifting * np.bincount(sim.annotators)).sum() * 1000
  assert false_per_1000 < 1.0

  # Bernoulli CUSUM on golden-item correctness only.
  golden = sim.is_golden
  correct = (sim.labels[golden] == sim.golden_labels[golden]).astype(np.float32)
  cusum, _ = drift.detect_annotator_drift(
      sim.annotators[golden], correct, sim.timestamps[golden], num_annotators=20, method="cusum",
      p0=0.9, p1=0.5, threshold=6.0,
  )
  assert np.all(cusum.alarm_index[drifting] >= 0)
  assert np.mean(cusum.alarm_time[drifting] >= sim.change_times[drifting]) >= 0.8
  assert np.mean(cusum.alarm_index[~drifting] >= 0) <= 0.3


def test_detect_annotator_drift_rejects_unknown_method():
  with pytest.raises(ValueError, match="method"):
    drift.detect_annotator_drift(np.zeros(2, int), np.ones(2), np.ones(2), num_annotators=1, method="adwin")
