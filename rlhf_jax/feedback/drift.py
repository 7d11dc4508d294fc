"""Per-annotator drift detection on time-ordered streams.

* `bernoulli_cusum`: the Bernoulli CUSUM of Reynolds & Stoumbos (1999) on golden-item
  correctness (1 = the annotator gave the known answer), detecting a drop of accuracy
  from `p0` to `p1`.
* `page_hinkley`: the Page-Hinkley test (Page 1954; Hinkley 1971) on a stream of real
  values, by default agreement with the consensus, detecting a drop of its mean.
* `annotator_streams`: flat annotations -> one padded, time-ordered stream per
  annotator ([num_annotators, T] values, mask, times, annotation index).
* `detect_annotator_drift`: both detectors vmapped over annotators, alarms in epoch
  seconds.
* `evaluate_detector`: median detection delay, detection rate and false alarms per
  1,000 annotations on simulated streams with a known change point.

Both detectors are one `lax.scan` over a 1-D stream with a validity mask (padding is
skipped: it changes no state and raises no alarm), so `jax.vmap` runs them over padded
[num_annotators, T] streams. After an alarm the detector restarts from its initial
state, so `num_alarms` counts every alarm in the stream (false alarms on a stream with
no change); `alarm_index` and the change-point estimate refer to the first alarm.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax._checks import check_choice, check_scalar_range

__all__ = [
    "DETECTORS",
    "AnnotatorStreams",
    "DetectorEvaluation",
    "DriftResult",
    "annotator_streams",
    "change_times",
    "bernoulli_cusum",
    "detect_annotator_drift",
    "evaluate_detector",
    "page_hinkley",
]

DETECTORS = ("cusum", "page_hinkley")


class DriftResult(NamedTuple):
  """What a detector reports for one stream (leading [num_streams] axis under vmap).

  Attributes:
    statistic: [T] float32 detector statistic after each step (CUSUM S_t; Page-Hinkley
      the distance of the cumulative sum from its running extreme).
    alarms: [T] bool, an alarm was raised at step t (the detector then restarts).
    alarm_index: int32 index of the first alarm, -1 when none.
    alarm_time: `times[alarm_index]` (NaN when no alarm or no `times`).
    change_index: int32 estimated change point of the first alarm (first index of the
      changed regime), -1 when none.
    mean_before: mean of the valid values in [0, change_index) (for CUSUM on
      correctness: the accuracy before the change); NaN when there are none.
    mean_after: mean of the valid values from change_index to the end of the stream
      (the whole post-change regime; the window up to the alarm alone is biased toward
      a larger drop, since the alarm fires on an unlucky run).
    magnitude: mean_before - mean_after (how much accuracy / agreement dropped).
    num_alarms: int32 number of alarms over the whole stream, with restarts.
  """

  statistic: jax.Array
  alarms: jax.Array
  alarm_index: jax.Array
  alarm_time: jax.Array
  change_index: jax.Array
  mean_before: jax.Array
  mean_after: jax.Array
  magnitude: jax.Array
  num_alarms: jax.Array


def _stream(values: Any, mask: Any, name: str) -> tuple[jax.Array, jax.Array]:
  values = jnp.asarray(values)
  if values.ndim != 1:
    raise ValueError(
        f"`{name}` must be one stream of rank 1, got shape {values.shape}; use jax.vmap for "
        "[num_streams, T] (see `detect_annotator_drift`)."
    )
  values = values.astype(jnp.float32)
  if mask is None:
    mask = jnp.ones(values.shape, bool)
  else:
    mask = jnp.asarray(mask)
    if mask.shape != values.shape:
      raise ValueError(f"`mask` must have the shape of `{name}` {values.shape}, got {mask.shape}.")
    mask = mask.astype(bool)
  return values, mask


def _times(times: Any, values: jax.Array) -> jax.Array | None:
  if times is None:
    return None
  times = jnp.asarray(times)
  if times.shape != values.shape:
    raise ValueError(f"`times` must have the shape of the stream {values.shape}, got {times.shape}.")
  return times


def _summarise(values, mask, times, statistic, alarms, first_alarm, first_change, num_alarms) -> DriftResult:
  index = jnp.arange(values.shape[0])
  has_alarm = first_alarm >= 0
  before = mask & (index < first_change) & has_alarm
  # All data from the estimated change on, not only up to the alarm: the detection
  # window ends on the unlucky run that crossed the threshold, so its mean overstates
  # the drop (on simulated 0.9 -> 0.6 drift the CUSUM window alone reads ~0.47).
  after = mask & (index >= first_change) & has_alarm

  def mean(selected):
    count = jnp.sum(selected)
    return jnp.where(count > 0, jnp.sum(jnp.where(selected, values, 0.0)) / jnp.maximum(count, 1), jnp.nan)

  mean_before, mean_after = mean(before), mean(after)
  if times is None:
    alarm_time = jnp.float32(jnp.nan)
  else:
    alarm_time = jnp.where(has_alarm, times[jnp.maximum(first_alarm, 0)], jnp.nan)
  return DriftResult(
      statistic=statistic,
      alarms=alarms,
      alarm_index=first_alarm,
      alarm_time=alarm_time,
      change_index=first_change,
      mean_before=mean_before,
      mean_after=mean_after,
      magnitude=mean_before - mean_after,
      num_alarms=num_alarms,
  )


def bernoulli_cusum(
    correct: Any,
    *,
    p0: float,
    p1: float,
    threshold: float,
    mask: Any = None,
    times: Any = None,
) -> DriftResult:
  """Bernoulli CUSUM on a stream of 0/1 correctness, detecting accuracy p0 -> p1.

  With x_t = 1 when the answer was correct, the log-likelihood-ratio increment of the
  out-of-control accuracy p1 against the in-control accuracy p0 is

    z_t = x_t log(p1 / p0) + (1 - x_t) log((1 - p1) / (1 - p0))

  and the statistic S_t = max(0, S_{t-1} + z_t), S_{-1} = 0, alarms when
  S_t >= threshold (then restarts at 0). This is the Bernoulli CUSUM of Reynolds &
  Stoumbos (1999, J. Quality Technology 31(1):87-108) written for correctness (their
  x_t is a nonconforming item with rates 1 - p0 -> 1 - p1; the increments are the same).
  Its in-control average run length can be computed exactly by a Markov chain (Brook &
  Evans 1972) when the two increments are commensurate; the tests do so.

  Change-point estimate: the step after the last time S was 0 before the first alarm
  (the maximum-likelihood change point under the two-rate model, Page 1954).

  Args:
    correct: [T] 0/1 (bool, int or float) correctness, in time order.
    p0: in-control accuracy in (0, 1).
    p1: out-of-control accuracy in (0, 1), p1 != p0 (p1 < p0 detects a drop).
    threshold: decision interval h > 0 on the log-likelihood-ratio scale.
    mask: [T] bool, false on padding (skipped), or None.
    times: [T] times of the entries (any unit), for `alarm_time`, or None.

  Returns:
    `DriftResult`; `mean_before` / `mean_after` are accuracies.
  """
  for name, value in (("p0", p0), ("p1", p1)):
    check_scalar_range(value, name, low=0.0, high=1.0, low_inclusive=False)
  if not isinstance(p0, jax.core.Tracer) and not isinstance(p1, jax.core.Tracer) and p0 == p1:
    raise ValueError(f"`p1` must differ from `p0`, got p0 = p1 = {p0}.")
  check_scalar_range(threshold, "threshold", low=0.0, low_inclusive=False)
  values, mask = _stream(correct, mask, "correct")
  times = _times(times, values)
  return _cusum_scan(values, mask, times, p0, p1, threshold)


@jax.jit
def _cusum_scan(values, mask, times, p0, p1, threshold) -> DriftResult:
  # Parameters are traced (not static), so one compilation serves every p0, p1, h.
  correct_step = jnp.log(p1) - jnp.log(p0)
  wrong_step = jnp.log1p(-p1) - jnp.log1p(-p0)

  def step(carry, inputs):
    s, last_zero, first_alarm, first_change, num_alarms = carry
    t, x, valid = inputs
    s_new = jnp.maximum(0.0, s + jnp.where(x > 0.5, correct_step, wrong_step))
    alarm = valid & (s_new >= threshold)
    s_new = jnp.where(valid, jnp.where(alarm, 0.0, s_new), s)
    new_first = (first_alarm < 0) & alarm
    first_change = jnp.where(new_first, last_zero + 1, first_change)
    first_alarm = jnp.where(new_first, t, first_alarm)
    last_zero = jnp.where(valid & (s_new <= 0.0), t, last_zero)
    return (s_new, last_zero, first_alarm, first_change, num_alarms + alarm), (s_new, alarm)

  minus_one = jnp.int32(-1)
  init = (jnp.float32(0.0), minus_one, minus_one, minus_one, jnp.int32(0))
  index = jnp.arange(values.shape[0], dtype=jnp.int32)
  (_, _, first_alarm, first_change, num_alarms), (statistic, alarms) = jax.lax.scan(
      step, init, (index, values, mask)
  )
  return _summarise(values, mask, times, statistic, alarms, first_alarm, first_change, num_alarms)


def page_hinkley(
    values: Any,
    *,
    delta: float,
    threshold: float,
    direction: str = "decrease",
    min_samples: int = 1,
    mask: Any = None,
    times: Any = None,
) -> DriftResult:
  """Page-Hinkley test for a change in the mean of a stream.

  With the running mean xbar_t = mean(x_1..x_t), for a decrease of the mean:

    m_t = sum_{i<=t} (x_i - xbar_i + delta),   M_t = max(0, m_1, ..., m_t),
    PH_t = M_t - m_t,   alarm when PH_t > threshold and at least `min_samples` values
    were seen since the (re)start;

  for an increase, `m_t` uses `- delta`, `M_t` is the running minimum and
  PH_t = m_t - M_t. Page (1954, Biometrika 41:100-115), Hinkley (1971, Biometrika
  58:509-523), in the streaming form with the running mean used by Gama et al. (2013,
  "On evaluating stream learning algorithms", Machine Learning 90:317-346). `delta` is
  the size of change tolerated; `threshold` (lambda) trades delay for false alarms.
  After an alarm every quantity restarts.

  Change-point estimate: the step after the extreme M was last attained (the start of
  the stretch that drove PH up), 0 when only the initial m_0 = 0 attains it.

  Args:
    values: [T] real values in time order (e.g. 1 when the annotator agreed with the
      consensus).
    delta: tolerance >= 0.
    threshold: lambda > 0.
    direction: "decrease" (default: agreement dropping) or "increase".
    min_samples: no alarm before this many values since the (re)start.
    mask: [T] bool, false on padding, or None.
    times: [T] times of the entries, for `alarm_time`, or None.

  Returns:
    `DriftResult`; `magnitude` = mean before - mean after the estimated change.
  """
  check_scalar_range(delta, "delta", low=0.0)
  check_scalar_range(threshold, "threshold", low=0.0, low_inclusive=False)
  check_choice(direction, "direction", ("decrease", "increase"))
  if not isinstance(min_samples, jax.core.Tracer) and int(min_samples) < 1:
    raise ValueError(f"`min_samples` must be >= 1, got {min_samples}.")
  values, mask = _stream(values, mask, "values")
  times = _times(times, values)
  return _page_hinkley_scan(values, mask, times, delta, threshold, min_samples, direction=direction)


@functools.partial(jax.jit, static_argnames=("direction",))
def _page_hinkley_scan(values, mask, times, delta, threshold, min_samples, *, direction: str) -> DriftResult:
  sign = 1.0 if direction == "decrease" else -1.0

  def step(carry, inputs):
    count, mean, cum, extreme, extreme_at, first_alarm, first_change, num_alarms = carry
    t, x, valid = inputs
    count_new = count + 1
    mean_new = mean + (x - mean) / count_new
    # Work on sign * m so that both directions track a running maximum.
    cum_new = cum + sign * (x - mean_new) + delta
    # >=: the change starts after the LAST time the extreme was attained.
    moved_up = cum_new >= extreme
    extreme_new = jnp.where(moved_up, cum_new, extreme)
    extreme_at_new = jnp.where(moved_up, t, extreme_at)
    ph = extreme_new - cum_new
    alarm = valid & (ph > threshold) & (count_new >= min_samples)
    new_first = (first_alarm < 0) & alarm
    first_change = jnp.where(new_first, extreme_at_new + 1, first_change)
    first_alarm = jnp.where(new_first, t, first_alarm)
    # Restart after an alarm; skip padding.
    keep = valid & ~alarm
    reset = valid & alarm
    count_out = jnp.where(keep, count_new, jnp.where(reset, 0, count))
    mean_out = jnp.where(keep, mean_new, jnp.where(reset, 0.0, mean))
    cum_out = jnp.where(keep, cum_new, jnp.where(reset, 0.0, cum))
    extreme_out = jnp.where(keep, extreme_new, jnp.where(reset, 0.0, extreme))
    extreme_at_out = jnp.where(keep, extreme_at_new, jnp.where(reset, t, extreme_at))
    ph_out = jnp.where(valid, jnp.where(alarm, 0.0, ph), extreme - cum)
    carry = (count_out, mean_out, cum_out, extreme_out, extreme_at_out, first_alarm, first_change, num_alarms + alarm)
    return carry, (ph_out, alarm)

  minus_one = jnp.int32(-1)
  zero = jnp.float32(0.0)
  init = (jnp.int32(0), zero, zero, zero, minus_one, minus_one, minus_one, jnp.int32(0))
  index = jnp.arange(values.shape[0], dtype=jnp.int32)
  carry, (statistic, alarms) = jax.lax.scan(step, init, (index, values, mask))
  first_alarm, first_change, num_alarms = carry[5], carry[6], carry[7]
  return _summarise(values, mask, times, statistic, alarms, first_alarm, first_change, num_alarms)


# ----------------------------------------------------------------------------------------
# Per-annotator streams.


class AnnotatorStreams(NamedTuple):
  """Flat annotations rearranged as one padded, time-ordered stream per annotator.

  Attributes:
    values: [num_annotators, T] float32 values (0 on padding).
    mask: [num_annotators, T] bool, true on real entries (a prefix of each row).
    times: [num_annotators, T] float64 timestamps (NaN on padding), NumPy.
    index: [num_annotators, T] int32 position of the entry in the flat input (-1 on
      padding), NumPy, to map alarms back to annotation ids.
  """

  values: jax.Array
  mask: jax.Array
  times: np.ndarray
  index: np.ndarray


def annotator_streams(annotators: Any, values: Any, timestamps: Any, *, num_annotators: int) -> AnnotatorStreams:
  """Groups flat per-annotation values into per-annotator streams ordered by time.

  T is the largest number of entries of one annotator. Ties in time keep input order.
  The grouping is a NumPy lexsort in float64 (epoch seconds need float64); no Python
  loop over annotations or annotators.

  Args:
    annotators: [N] int annotator index in [0, num_annotators).
    values: [N] per-annotation values (e.g. golden correctness 0/1).
    timestamps: [N] epoch seconds.
    num_annotators: number of annotators (rows of the output).
  """
  annotators = np.asarray(annotators)
  values = np.asarray(values, np.float32)
  timestamps = np.asarray(timestamps, np.float64)
  n = annotators.shape[0]
  if annotators.ndim != 1 or values.shape != (n,) or timestamps.shape != (n,):
    raise ValueError(
        f"`annotators`, `values`, `timestamps` must be 1-D of one length, got shapes {annotators.shape}, "
        f"{values.shape}, {timestamps.shape}."
    )
  if n and (annotators.min() < 0 or annotators.max() >= num_annotators):
    raise ValueError(f"`annotators` must lie in [0, num_annotators={num_annotators}).")
  order = np.lexsort((np.arange(n), timestamps, annotators))
  counts = np.bincount(annotators, minlength=num_annotators)
  length = int(counts.max()) if n else 0
  start = np.cumsum(counts) - counts
  sorted_annotators = annotators[order]
  position = np.arange(n) - start[sorted_annotators]
  out_values = np.zeros((num_annotators, length), np.float32)
  out_mask = np.zeros((num_annotators, length), bool)
  out_times = np.full((num_annotators, length), np.nan)
  out_index = np.full((num_annotators, length), -1, np.int32)
  out_values[sorted_annotators, position] = values[order]
  out_mask[sorted_annotators, position] = True
  out_times[sorted_annotators, position] = timestamps[order]
  out_index[sorted_annotators, position] = order
  return AnnotatorStreams(jnp.asarray(out_values), jnp.asarray(out_mask), out_times, out_index)


def _batched(values, mask, *, method: str, params: dict[str, Any]) -> DriftResult:
  """The detector vmapped over rows of [num_streams, T] values and mask."""
  if method == "cusum":
    fn = lambda v, m: bernoulli_cusum(v, mask=m, **params)  # noqa: E731
  else:
    fn = lambda v, m: page_hinkley(v, mask=m, **params)  # noqa: E731
  return jax.vmap(fn)(values, mask)


def detect_annotator_drift(
    annotators: Any,
    values: Any,
    timestamps: Any,
    *,
    num_annotators: int,
    method: str = "cusum",
    **params: Any,
) -> tuple[DriftResult, AnnotatorStreams]:
  """Runs a detector on every annotator's time-ordered stream (one vmapped scan).

  For the Bernoulli CUSUM pass golden annotations only, with `values` = 1 when the
  label equals the known answer, and `p0`, `p1`, `threshold`; for Page-Hinkley pass
  e.g. agreement with the (leave-one-out) consensus and `delta`, `threshold`.

  Returns:
    (result, streams): `DriftResult` (NumPy) with a leading [num_annotators] axis whose
    `alarm_time` is float64 epoch seconds (NaN when no alarm), and the
    `AnnotatorStreams` the detector ran on (`change_times(result, streams)` gives the
    estimated change points in epoch seconds). `result.change_index` and
    `alarm_index` are positions in each annotator's stream; `streams.index` maps them to
    flat annotation positions.
  """
  check_choice(method, "method", DETECTORS)
  streams = annotator_streams(annotators, values, timestamps, num_annotators=num_annotators)
  result = _batched(streams.values, streams.mask, method=method, params=params)
  result = jax.device_get(result)
  rows = np.arange(num_annotators)
  length = streams.times.shape[1]

  def time_at(index):
    index = np.asarray(index)
    if length == 0:
      return np.full(num_annotators, np.nan)
    return np.where(index >= 0, streams.times[rows, np.clip(index, 0, length - 1)], np.nan)

  result = result._replace(alarm_time=time_at(result.alarm_index))
  return result, streams


def change_times(result: DriftResult, streams: AnnotatorStreams) -> np.ndarray:
  """Epoch seconds of each annotator's estimated change point (NaN when no alarm)."""
  index = np.asarray(result.change_index)
  length = streams.times.shape[1]
  rows = np.arange(index.shape[0])
  if length == 0:
    return np.full(index.shape[0], np.nan)
  return np.where(index >= 0, streams.times[rows, np.clip(index, 0, length - 1)], np.nan)


# ----------------------------------------------------------------------------------------
# Evaluation on simulated drift.


class DetectorEvaluation(NamedTuple):
  """Detector quality on simulated streams with a known change point.

  Attributes:
    median_delay: median over detected drift streams of (first alarm at or after the
      change) - change_index, in annotations (NaN when nothing was detected).
    mean_delay: the mean of the same delays.
    detection_rate: share of drift streams with an alarm at or after the change.
    false_alarms_per_1000: alarms per 1,000 annotations on streams without a change.
    early_alarms_per_1000: alarms per 1,000 pre-change annotations on drift streams.
    median_change_error: median |estimated change index - true change index| for
      detected streams whose first alarm came after the change.
    median_magnitude: median estimated drop (mean before - mean after) on those streams.
    true_magnitude: rate_before - rate_after.
  """

  median_delay: float
  mean_delay: float
  detection_rate: float
  false_alarms_per_1000: float
  early_alarms_per_1000: float
  median_change_error: float
  median_magnitude: float
  true_magnitude: float


def evaluate_detector(
    key: jax.Array,
    *,
    method: str = "cusum",
    num_streams: int = 500,
    stream_length: int = 1000,
    change_index: int = 500,
    rate_before: float = 0.9,
    rate_after: float = 0.6,
    **params: Any,
) -> DetectorEvaluation:
  """Measures a detector on Bernoulli streams whose rate drops at `change_index`.

  Draws `num_streams` drift streams (values ~ Bernoulli(rate_before) before
  `change_index`, Bernoulli(rate_after) from it on) and as many no-drift streams
  (Bernoulli(rate_before) throughout), runs the detector on both (vmapped), and reports
  the median detection delay and false alarms per 1,000 annotations. The values stand
  for golden correctness (CUSUM) or agreement with the consensus (Page-Hinkley).

  Args:
    key: a JAX PRNG key.
    method: "cusum" or "page_hinkley".
    num_streams, stream_length, change_index: simulation sizes.
    rate_before, rate_after: the rate of 1s before and after the change.
    **params: the detector's parameters (`p0`, `p1`, `threshold` or `delta`,
      `threshold`, `direction`, `min_samples`).
  """
  check_choice(method, "method", DETECTORS)
  if not 0 < change_index < stream_length:
    raise ValueError(f"`change_index` must lie in (0, stream_length={stream_length}), got {change_index}.")
  for name, value in (("rate_before", rate_before), ("rate_after", rate_after)):
    check_scalar_range(value, name, low=0.0, high=1.0, high_inclusive=True)
  drift_key, null_key = jax.random.split(key)
  index = jnp.arange(stream_length)
  rate = jnp.where(index < change_index, rate_before, rate_after)
  drift = jax.random.bernoulli(drift_key, rate, (num_streams, stream_length)).astype(jnp.float32)
  null = jax.random.bernoulli(null_key, rate_before, (num_streams, stream_length)).astype(jnp.float32)
  mask = jnp.ones((num_streams, stream_length), bool)
  drift_result = jax.device_get(_batched(drift, mask, method=method, params=params))
  null_result = jax.device_get(_batched(null, mask, method=method, params=params))

  alarms = np.asarray(drift_result.alarms)
  after = alarms[:, change_index:]
  detected = after.any(axis=1)
  delays = np.argmax(after, axis=1)[detected].astype(np.float64)
  early = alarms[:, :change_index].sum()
  first_after = (np.asarray(drift_result.alarm_index) >= change_index) & detected
  change_error = np.abs(np.asarray(drift_result.change_index)[first_after] - change_index)
  magnitudes = np.asarray(drift_result.magnitude)[first_after]

  def median(x):
    return float(np.median(x)) if x.size else math.nan

  return DetectorEvaluation(
      median_delay=median(delays),
      mean_delay=float(delays.mean()) if delays.size else math.nan,
      detection_rate=float(detected.mean()),
      false_alarms_per_1000=float(np.asarray(null_result.num_alarms).sum()) / (num_streams * stream_length) * 1000,
      early_alarms_per_1000=float(early) / (num_streams * change_index) * 1000,
      median_change_error=median(change_error),
      median_magnitude=median(magnitudes),
      true_magnitude=float(rate_before - rate_after),
  )
