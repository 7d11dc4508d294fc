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
* `change_point_test`: a retrospective test of "this annotator was good and became
  worse" against "this annotator's rate never changed" (a generalized likelihood ratio
  for one drop in a Bernoulli rate, with a permutation p-value), and the first point in
  the stream at which the evidence crossed the test's critical value (the alarm, for
  detection delays). `detect_change_points` runs it on every annotator's stream,
  `classify_drift` separates annotators who drifted from annotators who were always
  bad, and `evaluate_change_point_test` measures detection rate, delay and false alarms
  on simulated streams with a known change point.

Why both kinds. The CUSUM and Page-Hinkley are sequential monitors: the CUSUM asks
"is the accuracy now at the out-of-control level p1 rather than p0?", so an annotator
who was at p1 (or worse) from the first answer alarms as soon as there is evidence,
although nothing changed. A drifting annotator is one whose own rate dropped: the
change-point test compares each annotator with itself (the null hypothesis is a
constant rate, whatever its level), so an annotator who was always bad is not drift;
`classify_drift` reports it as "always_bad" from its level instead.

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
from jax.scipy.special import xlogy

from rlhf_jax._checks import check_choice, check_scalar_range

__all__ = [
    "DETECTORS",
    "DRIFT_STATUSES",
    "AnnotatorStreams",
    "ChangePointEvaluation",
    "ChangePointResult",
    "DetectorEvaluation",
    "DriftResult",
    "annotator_streams",
    "bernoulli_cusum",
    "change_point_test",
    "change_times",
    "classify_drift",
    "detect_annotator_drift",
    "detect_change_points",
    "evaluate_change_point_test",
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


# ----------------------------------------------------------------------------------------
# Change points: did this annotator's own rate drop?

# Verdicts of `classify_drift`, by code.
DRIFT_STATUSES = ("ok", "drift", "always_bad", "too_few")
STATUS_OK, STATUS_DRIFT, STATUS_ALWAYS_BAD, STATUS_TOO_FEW = range(len(DRIFT_STATUSES))


class ChangePointResult(NamedTuple):
  """What `change_point_test` reports for one stream (leading [num_streams] axis under vmap).

  Attributes:
    statistic: the generalized likelihood ratio of one drop in the stream's rate against
      a constant rate, maximised over the candidate change points (0 when no candidate
      shows a drop).
    p_value: permutation p-value (1 + #{permuted statistics >= statistic}) /
      (num_permutations + 1); NaN when the stream has fewer than 2 * min_segment values.
    critical_value: the floor(alpha * (num_permutations + 1))-th largest permuted
      statistic: `detected` is `statistic > critical_value`, i.e. `p_value <= alpha`.
    detected: bool, the constant-rate hypothesis is rejected at level alpha.
    change_index: int32 index of the first value of the lower-rate segment at the
      maximum (-1 when no candidate shows a drop).
    mean: mean of the valid values.
    mean_before: mean of the valid values before `change_index` (NaN when -1).
    mean_after: mean from `change_index` to the end (NaN when -1).
    magnitude: mean_before - mean_after.
    count: int32 number of valid values.
    prefix_statistic: [T] the GLR of the drop at `change_index` computed from the values
      up to and including each entry (the evidence for this change as it accumulated; 0
      before min_segment values after the change, on padding, and without a change).
    alarm_index: int32 first index whose prefix statistic exceeds `critical_value`, when
      `detected` (-1 otherwise): the point at which the drop became evident.
    alarm_time: `times[alarm_index]` (NaN when no alarm or no `times`).
  """

  statistic: jax.Array
  p_value: jax.Array
  critical_value: jax.Array
  detected: jax.Array
  change_index: jax.Array
  mean: jax.Array
  mean_before: jax.Array
  mean_after: jax.Array
  magnitude: jax.Array
  count: jax.Array
  prefix_statistic: jax.Array
  alarm_index: jax.Array
  alarm_time: jax.Array


def _drop_glr(before_sum, before_n, total_sum, total_n, min_segment):
  """GLR of "rate r1 on the first before_n values, r2 < r1 after" against one rate r.

  log sup L(r1, r2) - log sup L(r) = n1 KL(r1_hat || r_hat) + n2 KL(r2_hat || r_hat),
  the difference of the two maximised Bernoulli log-likelihoods written as KL terms so
  that no large log-likelihoods cancel in float32 (with 0 log 0 = 0; log r and
  log(1 - r) are computed once per total). 0 where a segment is shorter than
  `min_segment` or the rate does not drop.
  """
  after_sum = total_sum - before_sum
  after_n = total_n - before_n
  rate = jnp.clip(total_sum / jnp.maximum(total_n, 1), 0.0, 1.0)
  log_rate, log_miss = jnp.log(rate), jnp.log1p(-rate)

  def n_kl(q, n):  # n KL(Bernoulli(q) || Bernoulli(rate))
    cross = jnp.where(q > 0, q * log_rate, 0.0) + jnp.where(q < 1, (1 - q) * log_miss, 0.0)
    return n * (xlogy(q, q) + xlogy(1 - q, 1 - q) - cross)

  rate_before = jnp.clip(before_sum / jnp.maximum(before_n, 1), 0.0, 1.0)
  rate_after = jnp.clip(after_sum / jnp.maximum(after_n, 1), 0.0, 1.0)
  usable = (before_n >= min_segment) & (after_n >= min_segment) & (rate_before > rate_after)
  glr = n_kl(rate_before, before_n) + n_kl(rate_after, after_n)
  return jnp.where(usable, jnp.maximum(glr, 0.0), 0.0)


def _stream_statistic(cumulative, count, min_segment):
  """(max GLR, first index of the after segment or -1) from the running sums of a stream
  of `count` values (constant beyond)."""
  before_n = jnp.arange(1, cumulative.shape[0] + 1, dtype=jnp.float32)
  total = cumulative[jnp.maximum(count - 1, 0)]
  glr = _drop_glr(cumulative, before_n, total, count.astype(jnp.float32), min_segment)
  best = jnp.argmax(glr)
  statistic = glr[best]
  return statistic, jnp.where(statistic > 0, best + 1, -1).astype(jnp.int32)


def _evidence_over_time(cumulative, count, change, min_segment):
  """[T] the GLR of the drop at `change` computed from the first t + 1 values, for every t
  (0 before change + min_segment values, from `count` on, and when change is -1)."""
  length = cumulative.shape[0]
  before_n = jnp.maximum(change, 0).astype(jnp.float32)
  before_sum = cumulative[jnp.maximum(change - 1, 0)]
  t = jnp.arange(length)
  evidence = _drop_glr(before_sum, before_n, cumulative, (t + 1).astype(jnp.float32), min_segment)
  return jnp.where((t < count) & (change >= min_segment), evidence, 0.0)


def _permuted_cumulative(key, ones, count, length: int, num_permutations: int):
  """[B, T] running sums of B random orders of `count` 0/1 values holding `ones` ones.

  A uniformly random order of a 0/1 stream is an urn drawn without replacement: the
  value at t is 1 with probability (ones left) / (values left). One scan over t draws
  all B orders at once, without the [B, T] sort that a general permutation needs (XLA's
  CPU sort is the slow part otherwise).
  """
  uniforms = jax.random.uniform(key, (length, num_permutations))
  ones = ones.astype(jnp.float32)

  def step(drawn, inputs):
    t, u = inputs
    left = (count - t).astype(jnp.float32)
    one = (t < count) & (u * jnp.maximum(left, 1.0) < ones - drawn)
    drawn = drawn + one
    return drawn, drawn

  _, cumulative = jax.lax.scan(step, jnp.zeros(num_permutations, jnp.float32),
                               (jnp.arange(length), uniforms))
  return cumulative.T


def _change_point_core(values, mask, key, min_segment, *, num_permutations: int,
                       num_extreme: int):
  length = values.shape[0]
  index = jnp.arange(length)
  # Valid values first, in order: the test sees the stream without its padding.
  order = jnp.argsort(jnp.where(mask, index, length + index))
  count = jnp.sum(mask).astype(jnp.int32)
  valid = index < count
  stream = jnp.where(valid, values[order], 0.0)
  cumulative = jnp.cumsum(stream)

  # Random orders of the same values: under a constant rate every order is equally
  # likely, so their statistics are draws from the null distribution given the values
  # (an exact level whatever the rate or the length of the stream). The observed stream
  # is row 0 of the same batch: the statistic is discrete (many orders tie with it), and
  # a tie must compare equal, not differ in the last bit between two compiled paths.
  null_cumulative = _permuted_cumulative(key, cumulative[-1], count, length, num_permutations)
  statistics, changes = jax.vmap(lambda c: _stream_statistic(c, count, min_segment))(
      jnp.concatenate([cumulative[None], null_cumulative]))
  statistic, change, null = statistics[0], changes[0], statistics[1:]
  critical = jnp.sort(null)[num_permutations - num_extreme]
  testable = count >= 2 * min_segment
  p_value = jnp.where(testable, (1.0 + jnp.sum(null >= statistic)) / (num_permutations + 1.0),
                      jnp.nan)
  detected = testable & (statistic > critical)

  # When the drop became evident: the first t at which the values up to t, split at the
  # estimated change, beat the critical value. (The first t at which any split of the
  # prefix did would look at every prefix with the whole stream's threshold and alarm
  # early on chance streaks before the change.)
  prefix = _evidence_over_time(cumulative, count, change, min_segment)
  crossed = (prefix > critical) & valid & detected
  alarm = jnp.where(crossed.any(), jnp.argmax(crossed), -1).astype(jnp.int32)

  def mean(selected):
    total = jnp.sum(selected)
    return jnp.where(total > 0, jnp.sum(jnp.where(selected, stream, 0.0)) / jnp.maximum(total, 1),
                     jnp.nan)

  has_change = change >= 0
  mean_before = jnp.where(has_change, mean(valid & (index < change)), jnp.nan)
  mean_after = jnp.where(has_change, mean(valid & (index >= change)), jnp.nan)
  # Positions in the compacted stream -> positions in the input.
  to_input = lambda i: jnp.where(i >= 0, order[jnp.maximum(i, 0)], -1).astype(jnp.int32)  # noqa: E731
  prefix_input = jnp.zeros(length, jnp.float32).at[order].set(jnp.where(valid, prefix, 0.0))
  return dict(
      statistic=statistic, p_value=p_value, critical_value=critical, detected=detected,
      change_index=to_input(change), mean=mean(valid), mean_before=mean_before,
      mean_after=mean_after, magnitude=mean_before - mean_after, count=count,
      prefix_statistic=prefix_input, alarm_index=to_input(alarm))


_change_point_single = jax.jit(_change_point_core, static_argnames=("num_permutations", "num_extreme"))


@functools.partial(jax.jit, static_argnames=("num_permutations", "num_extreme"))
def _change_point_batch(values, mask, keys, min_segment, *, num_permutations: int,
                        num_extreme: int):
  """`_change_point_core` over rows; a few rows at a time hold their [B, T] permutations."""
  core = functools.partial(_change_point_core, min_segment=min_segment,
                           num_permutations=num_permutations, num_extreme=num_extreme)
  return jax.lax.map(lambda args: core(*args), (values, mask, keys), batch_size=8)


def _padded_rows(values: Any, mask: Any, keys: Any, *, length_multiple: int = 64,
                 row_multiple: int = 8):
  """Pads [R, T] streams to multiples of (row_multiple, length_multiple): one compiled
  batch serves populations of similar size (padding is masked out)."""
  rows, length = values.shape
  new_rows = -(-max(rows, 1) // row_multiple) * row_multiple
  new_length = -(-max(length, 1) // length_multiple) * length_multiple
  values = jnp.pad(jnp.asarray(values, jnp.float32), ((0, new_rows - rows), (0, new_length - length)))
  mask = jnp.pad(jnp.asarray(mask, bool), ((0, new_rows - rows), (0, new_length - length)))
  # Padding rows reuse the first key (typed or raw keys alike); their results are dropped.
  keys = keys[jnp.minimum(jnp.arange(new_rows), rows - 1) * (jnp.arange(new_rows) < rows)]
  return values, mask, keys


def _unpad(out: dict[str, Any], rows: int, length: int) -> dict[str, np.ndarray]:
  out = jax.device_get(out)
  result = {k: np.asarray(v)[:rows] for k, v in out.items()}
  result["prefix_statistic"] = result["prefix_statistic"][:, :length]
  return result


def _num_extreme(alpha: float, num_permutations: int) -> int:
  """floor(alpha (B + 1)): how many permuted statistics may reach the observed one."""
  check_scalar_range(alpha, "alpha", low=0.0, high=1.0, low_inclusive=False)
  if isinstance(num_permutations, bool) or int(num_permutations) != num_permutations or (
      num_permutations < 1):
    raise ValueError(f"`num_permutations` must be a positive integer, got {num_permutations!r}.")
  extreme = int(math.floor(alpha * (num_permutations + 1) + 1e-9))
  if extreme < 1:
    raise ValueError(
        f"`num_permutations` = {num_permutations} cannot reach a p-value of alpha = {alpha}: "
        f"the smallest permutation p-value is 1 / (num_permutations + 1); use at least "
        f"{math.ceil(1 / alpha - 1)} permutations.")
  return min(extreme, int(num_permutations))


def _check_binary(values: np.ndarray) -> None:
  if values.size and not np.isin(values, (0, 1)).all():
    bad = values[~np.isin(values, (0, 1))][:3]
    raise ValueError(f"`values` must be 0/1 (the answer agreed with the reference or not), got "
                     f"{', '.join(map(str, bad.tolist()))}.")


def _check_min_segment(min_segment: Any) -> int:
  if isinstance(min_segment, bool) or int(min_segment) != min_segment or min_segment < 1:
    raise ValueError(f"`min_segment` must be a positive integer, got {min_segment!r}.")
  return int(min_segment)


def change_point_test(
    values: Any,
    *,
    key: jax.Array,
    min_segment: int = 10,
    num_permutations: int = 999,
    alpha: float = 0.01,
    mask: Any = None,
    times: Any = None,
) -> ChangePointResult:
  """Tests one stream for a single drop of its rate, against a constant rate.

  With x_1..x_n in {0, 1} (1 = the annotator gave the reference answer) and
  S_tau = x_1 + ... + x_tau, the statistic is the generalized likelihood ratio of a
  Bernoulli rate that drops once,

    G = max_{tau} [tau KL(r1 || r) + (n - tau) KL(r2 || r)],
    r1 = S_tau / tau > r2 = (S_n - S_tau) / (n - tau),  r = S_n / n,

  over the change points tau with at least `min_segment` values on each side (Worsley
  1983, "The power of likelihood ratio and cumulative sum tests for a change in a
  binomial probability", Biometrika 70:455-464; one-sided: only drops count). Its
  null distribution is that of G over random orders of the same values (Antoch &
  Huskova 2001, "Permutation tests in change point analysis", Statistics & Probability
  Letters 53:37-46): exact under a constant rate whatever the rate, so an annotator who
  was always bad at any level is rejected no more often than an always-good one, with
  probability at most `alpha`.

  The alarm is the first entry t at which the values x_1..x_t, split at the estimated
  change, give a GLR above the critical value (the permutation threshold of the whole
  stream): the number of values after the change that made the drop evident. It is set
  only when the whole stream is significant, and never before min_segment values after
  the estimated change.

  Args:
    values: [T] 0/1 values in time order (1 = the answer was correct, or agreed with
      the reference answer).
    key: PRNG key of the permutations.
    min_segment: fewest values on each side of a change point; streams with fewer than
      2 * min_segment values are not tested (NaN p-value).
    num_permutations: B, the permutations of the null distribution (B + 1 >= 1/alpha).
    alpha: the level.
    mask: [T] bool, false on padding (skipped), or None.
    times: [T] times of the entries, for `alarm_time`, or None.

  Returns:
    `ChangePointResult`.
  """
  values, mask = _stream(values, mask, "values")
  times = _times(times, values)
  num_extreme = _num_extreme(alpha, num_permutations)
  min_segment = _check_min_segment(min_segment)
  if not isinstance(values, jax.core.Tracer):
    _check_binary(np.asarray(values)[np.asarray(mask)])
  length = values.shape[0]
  padding = -length % 64  # one compilation serves streams of similar length
  out = _change_point_single(jnp.pad(values, (0, padding)), jnp.pad(mask, (0, padding)), key,
                             min_segment, num_permutations=int(num_permutations),
                             num_extreme=num_extreme)
  out["prefix_statistic"] = out["prefix_statistic"][:length]
  if times is None:
    alarm_time = jnp.float32(jnp.nan)
  else:
    alarm_time = jnp.where(out["alarm_index"] >= 0, times[jnp.maximum(out["alarm_index"], 0)],
                           jnp.nan)
  return ChangePointResult(alarm_time=alarm_time, **out)


def detect_change_points(
    annotators: Any,
    values: Any,
    timestamps: Any,
    *,
    num_annotators: int,
    key: jax.Array,
    min_segment: int = 10,
    num_permutations: int = 999,
    alpha: float = 0.01,
) -> tuple[ChangePointResult, AnnotatorStreams]:
  """Runs `change_point_test` on every annotator's time-ordered stream.

  Annotator a's permutations use `jax.random.fold_in(key, a)`, so its result does not
  depend on the other annotators.

  Returns:
    (result, streams): `ChangePointResult` (NumPy) with a leading [num_annotators] axis,
    `alarm_time` in float64 epoch seconds (NaN without an alarm), and the
    `AnnotatorStreams` it ran on (`change_index` and `alarm_index` are positions in each
    annotator's stream; `streams.times` gives their times).
  """
  num_extreme = _num_extreme(alpha, num_permutations)
  min_segment = _check_min_segment(min_segment)
  streams = annotator_streams(annotators, values, timestamps, num_annotators=num_annotators)
  _check_binary(np.asarray(values))
  keys = jax.vmap(lambda a: jax.random.fold_in(key, a))(jnp.arange(num_annotators))
  length = streams.times.shape[1]
  out = _unpad(_change_point_batch(*_padded_rows(streams.values, streams.mask, keys), min_segment,
                                   num_permutations=int(num_permutations),
                                   num_extreme=num_extreme), num_annotators, length)
  rows = np.arange(num_annotators)
  alarm = np.asarray(out["alarm_index"])
  if length:
    alarm_time = np.where(alarm >= 0, streams.times[rows, np.clip(alarm, 0, length - 1)], np.nan)
  else:
    alarm_time = np.full(num_annotators, np.nan)
  result = ChangePointResult(alarm_time=alarm_time, **{k: np.asarray(v) for k, v in out.items()})
  return result, streams


def classify_drift(result: ChangePointResult, *, min_rate: float) -> np.ndarray:
  """Per stream a code into `DRIFT_STATUSES`: who drifted, who was always bad.

  * "drift": the rate dropped (`result.detected`) from a level at or above `min_rate`
    before the change: a good annotator who became worse.
  * "always_bad": no significant drop and a mean below `min_rate`, or a drop from a
    level already below `min_rate`: an annotator who was bad from the start (spammers,
    adversaries), not drift.
  * "ok": no significant drop and a mean at or above `min_rate`.
  * "too_few": fewer values than the test needs (NaN p-value).

  Args:
    result: `change_point_test` or `detect_change_points` output ([num_streams] fields).
    min_rate: the rate (e.g. agreement with the reference answers) an acceptable
      annotator reaches.

  Returns:
    int32 [num_streams] codes (`DRIFT_STATUSES[code]` is the name).
  """
  check_scalar_range(min_rate, "min_rate", low=0.0, high=1.0, high_inclusive=True)
  p_value = np.asarray(result.p_value, np.float64)
  detected = np.asarray(result.detected, bool)
  before = np.asarray(result.mean_before, np.float64)
  mean = np.asarray(result.mean, np.float64)
  after = np.asarray(result.mean_after, np.float64)
  status = np.full(p_value.shape, STATUS_OK, np.int32)
  status[~detected & (mean < min_rate)] = STATUS_ALWAYS_BAD
  status[detected & (before >= min_rate) & (after < min_rate)] = STATUS_DRIFT
  status[detected & ~(before >= min_rate)] = STATUS_ALWAYS_BAD
  status[np.isnan(p_value)] = STATUS_TOO_FEW
  return status


class ChangePointEvaluation(NamedTuple):
  """`change_point_test` with `classify_drift` on simulated streams of known truth.

  Attributes:
    detection_rate: share of drift streams (rate_before, then rate_after from
      change_index on) classified "drift".
    median_delay: median over those of alarm_index - change_index, in values (negative
      when the alarm came before the change).
    mean_delay: the mean of the same delays.
    early_alarm_rate: share of detected drift streams whose alarm came before the change.
    false_alarm_rate_good: share of streams at rate_before throughout classified "drift".
    false_alarm_rate_bad: share of streams at rate_after throughout classified "drift".
    always_bad_rate: share of streams at rate_after throughout classified "always_bad".
    good_called_bad_rate: share of streams at rate_before throughout classified
      "always_bad".
    median_change_error: median |estimated - true change index| over detected streams.
    median_magnitude: median estimated drop over detected streams.
    true_magnitude: rate_before - rate_after.
  """

  detection_rate: float
  median_delay: float
  mean_delay: float
  early_alarm_rate: float
  false_alarm_rate_good: float
  false_alarm_rate_bad: float
  always_bad_rate: float
  good_called_bad_rate: float
  median_change_error: float
  median_magnitude: float
  true_magnitude: float


def evaluate_change_point_test(
    key: jax.Array,
    *,
    num_streams: int = 200,
    stream_length: int = 100,
    change_index: int = 50,
    rate_before: float = 0.8,
    rate_after: float = 0.45,
    min_rate: float = 0.6,
    min_segment: int = 10,
    num_permutations: int = 999,
    alpha: float = 0.01,
) -> ChangePointEvaluation:
  """Detection rate, delay and false alarms of the change-point test on Bernoulli streams.

  Draws `num_streams` streams of each kind: drift (Bernoulli(rate_before) before
  `change_index`, Bernoulli(rate_after) from it on), always good (rate_before
  throughout) and always bad (rate_after throughout); tests and classifies all of them.
  """
  if not 0 < change_index < stream_length:
    raise ValueError(f"`change_index` must lie in (0, stream_length={stream_length}), got {change_index}.")
  for name, value in (("rate_before", rate_before), ("rate_after", rate_after)):
    check_scalar_range(value, name, low=0.0, high=1.0, high_inclusive=True)
  num_extreme = _num_extreme(alpha, num_permutations)
  min_segment = _check_min_segment(min_segment)
  data_key, test_key = jax.random.split(key)
  index = jnp.arange(stream_length)
  rates = jnp.stack([jnp.where(index < change_index, rate_before, rate_after),
                     jnp.full(stream_length, rate_before), jnp.full(stream_length, rate_after)])
  draws = jax.random.bernoulli(data_key, rates[:, None, :], (3, num_streams, stream_length))
  values = draws.astype(jnp.float32).reshape(3 * num_streams, stream_length)
  mask = jnp.ones_like(values, bool)
  keys = jax.random.split(test_key, 3 * num_streams)
  out = _unpad(_change_point_batch(*_padded_rows(values, mask, keys), min_segment,
                                   num_permutations=int(num_permutations),
                                   num_extreme=num_extreme), 3 * num_streams, stream_length)
  result = ChangePointResult(alarm_time=np.full(3 * num_streams, np.nan), **out)
  status = classify_drift(result, min_rate=min_rate).reshape(3, num_streams)
  drift_found = status[0] == STATUS_DRIFT
  alarm = np.asarray(result.alarm_index).reshape(3, num_streams)[0][drift_found]
  delays = (alarm - change_index).astype(np.float64)
  estimated = np.asarray(result.change_index).reshape(3, num_streams)[0][drift_found]
  magnitudes = np.asarray(result.magnitude).reshape(3, num_streams)[0][drift_found]

  def median(x):
    return float(np.median(x)) if x.size else math.nan

  return ChangePointEvaluation(
      detection_rate=float(drift_found.mean()),
      median_delay=median(delays),
      mean_delay=float(delays.mean()) if delays.size else math.nan,
      early_alarm_rate=float((delays < 0).mean()) if delays.size else math.nan,
      false_alarm_rate_good=float((status[1] == STATUS_DRIFT).mean()),
      false_alarm_rate_bad=float((status[2] == STATUS_DRIFT).mean()),
      always_bad_rate=float((status[2] == STATUS_ALWAYS_BAD).mean()),
      good_called_bad_rate=float((status[1] == STATUS_ALWAYS_BAD).mean()),
      median_change_error=median(np.abs(estimated - change_index).astype(np.float64)),
      median_magnitude=median(magnitudes),
      true_magnitude=float(rate_before - rate_after),
  )
