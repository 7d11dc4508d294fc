"""Tests for rlhf_jax.feedback.metrics.drift against plain-Python detectors written here, Page's
max-window form of the CUSUM, an exact Markov-chain average run length (Brook & Evans
1972), and simulated drift with known change points."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from rlhf_jax.feedback.metrics import drift
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


# ------------------------------------------------------------------------------------
# Change points: good and became bad, against always bad.


def ref_drop_glr(x, min_segment):
  """Plain-Python one-sided GLR of one drop in a Bernoulli rate: (statistic, change index).

  Written as a difference of maximised log-likelihoods (not the KL form of the library).
  """
  def loglik(k, n):
    total = 0.0
    if k > 0:
      total += k * math.log(k / n)
    if n - k > 0:
      total += (n - k) * math.log((n - k) / n)
    return total

  n, ones = len(x), sum(x)
  best, change = 0.0, -1
  for tau in range(min_segment, n - min_segment + 1):
    k1 = sum(x[:tau])
    if k1 / tau <= (ones - k1) / (n - tau):
      continue
    glr = loglik(k1, tau) + loglik(ones - k1, n - tau) - loglik(ones, n)
    if glr > best:
      best, change = glr, tau
  return best, change


def _loglik_split(before, after):
  """log L(r1 on before, r2 on after) - log L(r on both), maximised rates (plain Python)."""
  def loglik(k, n):
    return sum(c * math.log(c / n) for c in (k, n - k) if c > 0)
  k1, k2 = float(np.sum(before)), float(np.sum(after))
  n1, n2 = len(before), len(after)
  return loglik(k1, n1) + loglik(k2, n2) - loglik(k1 + k2, n1 + n2)


@pytest.mark.parametrize("seed", range(4))
def test_change_point_statistic_and_prefixes_match_python(seed):
  rng = np.random.default_rng(seed)
  n = 90
  x = (rng.random(n) < np.where(np.arange(n) < 50, 0.85, 0.5)).astype(np.float32)
  result = drift.change_point_test(x, key=jax.random.key(seed), min_segment=8,
                                   num_permutations=199, alpha=0.05)
  statistic, change = ref_drop_glr(x.tolist(), 8)
  np.testing.assert_allclose(result.statistic, statistic, rtol=1e-4, atol=1e-4)
  assert int(result.change_index) == change
  np.testing.assert_allclose(result.mean_before, x[:change].mean(), rtol=1e-6)
  np.testing.assert_allclose(result.mean_after, x[change:].mean(), rtol=1e-6)
  np.testing.assert_allclose(result.mean, x.mean(), rtol=1e-6)
  # The evidence over time: the split at the estimated change, from the first t + 1 values.
  def split_glr(t):
    before, after = x[:change], x[change:t + 1]
    if len(after) < 8 or before.mean() <= after.mean():
      return 0.0
    return _loglik_split(before, after)
  evidence = [split_glr(t) for t in range(n)]
  np.testing.assert_allclose(result.prefix_statistic, evidence, rtol=1e-4, atol=1e-4)
  # The alarm is the first time that evidence beats the critical value, when the test rejects.
  if bool(result.detected):
    assert int(result.alarm_index) == int(np.argmax(np.array(evidence) > float(result.critical_value)))
    assert int(result.alarm_index) >= change + 8 - 1
  else:
    assert int(result.alarm_index) == -1


def test_change_point_hand_example():
  # 20 correct then 20 wrong: r1 = 1, r2 = 0, r = 1/2, G = 40 log 2 at tau = 20. No other
  # order of 20 ones and 20 zeros reaches it except this one (probability 1 / C(40, 20)),
  # so the p-value is 1 / (B + 1).
  x = np.r_[np.ones(20), np.zeros(20)].astype(np.float32)
  result = drift.change_point_test(x, key=jax.random.key(0), min_segment=5,
                                   num_permutations=199, alpha=0.05, times=np.arange(40.0) * 10)
  np.testing.assert_allclose(result.statistic, 40 * math.log(2), rtol=1e-5)
  assert int(result.change_index) == 20
  np.testing.assert_allclose(result.p_value, 1 / 200)
  assert bool(result.detected)
  assert float(result.mean_before) == 1.0 and float(result.mean_after) == 0.0
  # The first t + 1 >= 25 values split at 20: 20 ones, then t - 19 >= 5 zeros, a perfect
  # split whose GLR is t + 1 times the entropy (nats) of the rate 20 / (t + 1); before
  # 5 values after the change there is no evidence yet.
  def evidence(t):
    ones, n = 20, t + 1
    if n - ones < 5:
      return 0.0
    p = ones / n
    return -n * (p * math.log(p) + (1 - p) * math.log(1 - p))
  expected = [evidence(t) for t in range(40)]
  np.testing.assert_allclose(result.prefix_statistic, expected, rtol=1e-5, atol=1e-6)
  alarm = int(np.argmax(np.array(expected) > float(result.critical_value)))
  assert int(result.alarm_index) == alarm
  assert float(result.alarm_time) == alarm * 10.0


def test_change_point_permutation_p_value_matches_exact_enumeration():
  # 12 values, 7 ones: the exact permutation p-value enumerates all C(12, 7) = 792 orders
  # (plain Python). The library draws random orders (an urn without replacement); 100
  # copies of the stream with 199 orders each estimate the same p-value from 19,900.
  import itertools  # pylint: disable=g-import-not-at-top
  x = [1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0]
  observed, _ = ref_drop_glr(x, 3)
  null = []
  for ones in itertools.combinations(range(12), 7):
    order = [0] * 12
    for i in ones:
      order[i] = 1
    null.append(ref_drop_glr(order, 3)[0])
  exact = np.mean(np.array(null) >= observed - 1e-9)
  copies, num_permutations = 100, 199
  result, _ = drift.detect_change_points(
      np.repeat(np.arange(copies), 12), np.tile(np.array(x, np.float32), copies),
      np.tile(np.arange(12.0), copies), num_annotators=copies, key=jax.random.key(5),
      min_segment=3, num_permutations=num_permutations, alpha=0.05)
  np.testing.assert_allclose(result.statistic, observed, rtol=1e-5)
  counts = np.asarray(result.p_value) * (num_permutations + 1) - 1  # null draws >= observed
  monte_carlo = counts.sum() / (copies * num_permutations)
  standard_error = math.sqrt(exact * (1 - exact) / (copies * num_permutations))
  assert 0.05 < exact < 0.95  # an informative case
  assert abs(monte_carlo - exact) < 4 * standard_error, (monte_carlo, exact)


@pytest.mark.parametrize("rate", [0.9, 0.5, 0.05])
def test_change_point_level_on_constant_streams(rate):
  # Under a constant rate (always good, a spammer, an adversary) the test rejects with
  # probability at most alpha: the number of rejections among 600 streams is at most
  # Binomial(600, alpha). Each stream is one "annotator" of `detect_change_points`.
  alpha, num_streams, length = 0.05, 600, 60
  values = np.asarray(jax.random.bernoulli(jax.random.key(int(rate * 100)), rate,
                                           (num_streams * length,)), np.float32)
  annotators = np.repeat(np.arange(num_streams), length)
  times = np.tile(np.arange(length, dtype=np.float64), num_streams)
  result, _ = drift.detect_change_points(annotators, values, times, num_annotators=num_streams,
                                         key=jax.random.key(1), min_segment=8,
                                         num_permutations=199, alpha=alpha)
  rejected = np.asarray(result.detected).mean()
  assert rejected <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / num_streams), rejected
  # p <= alpha and statistic > critical value are the same decision.
  np.testing.assert_array_equal(result.detected, np.asarray(result.p_value) <= alpha)


def test_classify_drift_rules():
  nan = float("nan")
  result = drift.ChangePointResult(
      statistic=None, p_value=np.array([0.01, 0.01, 0.01, 0.5, 0.5, nan]),
      critical_value=None, detected=np.array([True, True, True, False, False, False]),
      change_index=None, mean=np.array([0.7, 0.4, 0.8, 0.3, 0.9, 0.1]),
      mean_before=np.array([0.9, 0.5, 0.95, nan, nan, nan]),
      mean_after=np.array([0.4, 0.2, 0.7, nan, nan, nan]), magnitude=None, count=None,
      prefix_statistic=None, alarm_index=None, alarm_time=None)
  status = drift.classify_drift(result, min_rate=0.6)
  names = [drift.DRIFT_STATUSES[s] for s in status]
  # good -> bad; bad -> worse (was never good); good -> less good but still acceptable;
  # constant and low; constant and high; too short to test.
  assert names == ["drift", "always_bad", "ok", "always_bad", "ok", "too_few"]


def test_change_point_rejects_bad_arguments():
  with pytest.raises(ValueError, match="0/1"):
    drift.change_point_test(np.array([0.5, 1.0]), key=jax.random.key(0))
  with pytest.raises(ValueError, match="at least 19 permutations"):
    drift.change_point_test(np.ones(30), key=jax.random.key(0), num_permutations=10, alpha=0.05)
  with pytest.raises(ValueError, match="min_segment"):
    drift.change_point_test(np.ones(30), key=jax.random.key(0), min_segment=0)
  short = drift.change_point_test(np.ones(9, np.float32), key=jax.random.key(0), min_segment=5,
                                  num_permutations=199)
  assert np.isnan(float(short.p_value)) and not bool(short.detected)


def test_change_points_separate_drift_from_always_bad_on_simulated_populations():
  # Populations with known change points: good, spammers, adversaries and drifting
  # annotators (about 375 annotations each), checked against the truth (reference
  # answers: the true labels).
  config = simulate.SimulationConfig(
      num_items=1500, num_annotators=20, annotations_per_item=5, num_classes=2,
      good_share=0.4, drifting_share=0.3, spammer_share=0.15, adversary_share=0.15,
      position_biased_share=0.0, length_biased_share=0.0, fast_share=0.0)
  kinds = {name: [] for name in ("good", "drifting", "spammer", "adversary")}
  delays = []
  for seed in range(3):
    sim = simulate.simulate_annotations(jax.random.key(seed), config)
    agree = (sim.labels == sim.true_labels[sim.items]).astype(np.float32)
    result, streams = drift.detect_change_points(
        sim.annotators, agree, sim.timestamps, num_annotators=20, key=jax.random.key(seed),
        min_segment=10, num_permutations=199, alpha=0.05)
    status = drift.classify_drift(result, min_rate=0.6)
    for a, name in enumerate(sim.type_names()):
      kinds[name].append(drift.DRIFT_STATUSES[status[a]])
      if name == "drifting" and status[a] == drift.STATUS_DRIFT:
        true_index = int(np.sum(streams.mask[a] & (streams.times[a] < sim.change_times[a])))
        assert true_index == sim.change_index[a]  # the stream holds every annotation
        delays.append(int(result.alarm_index[a]) - true_index)
  assert len(kinds["drifting"]) == 18
  # Detection rate: a drop from 0.7-0.95 to 0.35-0.5 over ~150 annotations is found.
  assert kinds["drifting"].count("drift") >= 17, kinds["drifting"]
  # Delay: the alarm follows the change within a few dozen annotations.
  assert 0 < np.median(delays) <= 40, delays
  # Always-bad annotators are reported as such, never as drift.
  assert kinds["spammer"].count("always_bad") == len(kinds["spammer"]) == 9
  assert kinds["adversary"].count("always_bad") == len(kinds["adversary"]) == 9
  # Always-good annotators: no verdict but "ok", up to chance (alpha = 0.05 of 24).
  assert kinds["good"].count("ok") >= len(kinds["good"]) - 2, kinds["good"]


def test_evaluate_change_point_test_on_simulated_drift():
  evaluation = drift.evaluate_change_point_test(
      jax.random.key(3), num_streams=150, stream_length=300, change_index=150,
      rate_before=0.85, rate_after=0.45, min_rate=0.6, num_permutations=199, alpha=0.05)
  assert evaluation.detection_rate >= 0.97
  assert 0 < evaluation.median_delay <= 30
  assert evaluation.early_alarm_rate <= 0.1
  assert evaluation.median_change_error <= 10
  assert abs(evaluation.median_magnitude - 0.4) < 0.08
  bound = 0.05 + 3 * math.sqrt(0.05 * 0.95 / 150)
  assert evaluation.false_alarm_rate_good <= bound
  # At 0.45 throughout a "drift" verdict needs a chance drop that starts at 0.6 or more.
  assert evaluation.false_alarm_rate_bad <= bound
  assert evaluation.always_bad_rate >= 0.97
  assert evaluation.good_called_bad_rate == 0.0
