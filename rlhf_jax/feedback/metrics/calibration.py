"""Annotator calibration: per-annotator metrics and weights.

* `annotator_metrics`: per annotator, from flat annotation arrays: golden-set accuracy,
  agreement with expert labels, temporal consistency (same item labelled again on a
  different day), median response time, and the counts behind each number. One jitted
  pass of segment sums and one sort; no Python loop over annotations or annotators.
* `annotator_weights`: a single weight per annotator,
  `0.4 * golden + 0.4 * expert_agreement + 0.2 * temporal_consistency`, times 0.7 when
  the median response is under 3 s (every coefficient is an argument), with a documented
  rule for metrics an annotator has no data for.

Annotations are the flat arrays of `rlhf_jax.feedback.types`: `items[n]`,
`annotators[n]`, `labels[n]`, plus optional per-annotation fields (timestamps in epoch
seconds, response times in ms, golden flags and known answers).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax._checks import check_scalar_range

__all__ = [
    "AnnotatorMetrics",
    "annotator_metrics",
    "annotator_weights",
]

_SECONDS_PER_DAY = 86400.0


# ----------------------------------------------------------------------------------------
# Argument checks.


def _as_int_array(x: Any, name: str) -> np.ndarray:
  arr = np.asarray(x)
  if arr.ndim != 1:
    raise ValueError(f"`{name}` must be a 1-D array of integer indices, got shape {arr.shape}.")
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"`{name}` must have an integer dtype, got {arr.dtype}.")
  return arr.astype(np.int32, copy=False)


def _check_index_range(arr: np.ndarray, name: str, size: int, size_name: str) -> None:
  if arr.size and (arr.min() < 0 or arr.max() >= size):
    bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
    raise ValueError(f"`{name}` must lie in [0, {size_name}={size}), found {bad}.")


# ----------------------------------------------------------------------------------------
# Per-annotator metrics.


class AnnotatorMetrics(NamedTuple):
  """Per-annotator calibration metrics; every field is [num_annotators].

  A rate is NaN when the annotator has no data for it (its count is 0).

  Attributes:
    golden_accuracy: share of the annotator's golden annotations equal to the known
      answer.
    expert_agreement: share of the annotator's annotations, on items that have an expert
      label, equal to the expert label.
    temporal_consistency: share of repeat pairs with the same label, where a repeat pair
      is two consecutive (in time) annotations of the same item by the same annotator
      on different UTC days.
    median_response_ms: median response time over the annotator's annotations with a
      finite response time (as `numpy.nanmedian`).
    num_annotations, num_golden, num_expert, num_repeat_pairs, num_timed: the counts
      behind each rate (int32).
  """

  golden_accuracy: jax.Array
  expert_agreement: jax.Array
  temporal_consistency: jax.Array
  median_response_ms: jax.Array
  num_annotations: jax.Array
  num_golden: jax.Array
  num_expert: jax.Array
  num_repeat_pairs: jax.Array
  num_timed: jax.Array


def _rate(numerator: jax.Array, count: jax.Array) -> jax.Array:
  return jnp.where(count > 0, numerator / jnp.maximum(count, 1).astype(jnp.float32), jnp.nan)


def _segment_median(values: jax.Array, valid: jax.Array, segments: jax.Array, num_segments: int):
  """Median of `values[valid]` per segment, as numpy.median, by one sort.

  Sorting by (segment, invalid, value) puts each segment's valid values first and in
  order; with the segment's start offset s and valid count c, the median is the mean of
  the sorted values at s + (c - 1) // 2 and s + c // 2.
  """
  invalid = (~valid).astype(jnp.int32)
  safe = jnp.where(valid, values, 0.0)
  sorted_segments, _, sorted_values = jax.lax.sort((segments, invalid, safe), num_keys=3)
  del sorted_segments
  total = jax.ops.segment_sum(jnp.ones_like(segments), segments, num_segments=num_segments)
  count = jax.ops.segment_sum(valid.astype(jnp.int32), segments, num_segments=num_segments)
  start = jnp.cumsum(total) - total
  last = jnp.maximum(values.shape[0] - 1, 0)
  low = sorted_values[jnp.clip(start + (count - 1) // 2, 0, last)]
  high = sorted_values[jnp.clip(start + count // 2, 0, last)]
  return jnp.where(count > 0, 0.5 * (low + high), jnp.nan), count


@functools.partial(jax.jit, static_argnames=("num_annotators", "num_items"))
def _metrics_core(
    items, annotators, labels, order_time, days, response_ms, timed, is_golden, golden_labels,
    expert_labels, *, num_annotators, num_items,
):
  del num_items
  ones = jnp.ones_like(annotators)
  num_annotations = jax.ops.segment_sum(ones, annotators, num_segments=num_annotators)

  golden_hits = is_golden & (labels == golden_labels)
  num_golden = jax.ops.segment_sum(is_golden.astype(jnp.int32), annotators, num_segments=num_annotators)
  golden_correct = jax.ops.segment_sum(golden_hits.astype(jnp.float32), annotators, num_segments=num_annotators)

  item_expert = expert_labels[items]
  has_expert = item_expert >= 0
  num_expert = jax.ops.segment_sum(has_expert.astype(jnp.int32), annotators, num_segments=num_annotators)
  expert_hits = jax.ops.segment_sum(
      (has_expert & (labels == item_expert)).astype(jnp.float32), annotators, num_segments=num_annotators
  )

  # Repeat pairs: sort by (annotator, item, time); neighbours with the same annotator and
  # item but different UTC days form a pair.
  s_annotators, s_items, _, s_days, s_labels = jax.lax.sort(
      (annotators, items, order_time, days, labels), num_keys=3
  )
  same_pair = (s_annotators[1:] == s_annotators[:-1]) & (s_items[1:] == s_items[:-1])
  repeat = same_pair & (s_days[1:] != s_days[:-1])
  consistent = repeat & (s_labels[1:] == s_labels[:-1])
  num_repeat_pairs = jax.ops.segment_sum(repeat.astype(jnp.int32), s_annotators[1:], num_segments=num_annotators)
  consistent_pairs = jax.ops.segment_sum(
      consistent.astype(jnp.float32), s_annotators[1:], num_segments=num_annotators
  )

  median_ms, num_timed = _segment_median(response_ms, timed, annotators, num_annotators)
  return AnnotatorMetrics(
      golden_accuracy=_rate(golden_correct, num_golden),
      expert_agreement=_rate(expert_hits, num_expert),
      temporal_consistency=_rate(consistent_pairs, num_repeat_pairs),
      median_response_ms=median_ms,
      num_annotations=num_annotations,
      num_golden=num_golden,
      num_expert=num_expert,
      num_repeat_pairs=num_repeat_pairs,
      num_timed=num_timed,
  )


def annotator_metrics(
    items: Any,
    annotators: Any,
    labels: Any,
    *,
    timestamps: Any = None,
    response_ms: Any = None,
    is_golden: Any = None,
    golden_labels: Any = None,
    expert_labels: Any = None,
    num_annotators: int,
    num_items: int,
) -> AnnotatorMetrics:
  """Per-annotator golden accuracy, expert agreement, temporal consistency, speed.

  Definitions (per annotator a, over its annotations n):

    golden_accuracy      = #{n golden, labels[n] == golden_labels[n]} / #{n golden}
    expert_agreement     = #{n : expert_labels[items[n]] >= 0, labels[n] == expert} /
                           #{n : expert_labels[items[n]] >= 0}
    temporal_consistency = #{consistent repeat pairs} / #{repeat pairs}
    median_response_ms   = nanmedian(response_ms[n])

  A repeat pair is two consecutive annotations (ordered by time) of the same item by the
  same annotator whose UTC days `floor(timestamp / 86400)` differ; repeats on the same
  day are not counted (they measure short-term memory, not consistency). Three repeats
  on three days give two pairs. Days are computed in float64 on the host before the
  jitted pass because float32 cannot resolve seconds at epoch scale (~1.7e9).

  Any optional field may be None: its metric is then NaN with count 0. A golden
  annotation with `golden_labels[n] < 0` (no known answer) is not counted as golden.

  Args:
    items, annotators, labels: [N] integer arrays (see `rlhf_jax.feedback.types`).
    timestamps: [N] epoch seconds (float64), or None.
    response_ms: [N] response times in ms (NaN = unknown), or None.
    is_golden: [N] bool, or None.
    golden_labels: [N] int known answers (-1 where not golden); required with
      `is_golden`.
    expert_labels: [num_items] int expert label per item, -1 where there is none.
    num_annotators, num_items: static sizes.

  Returns:
    `AnnotatorMetrics`, every field [num_annotators].
  """
  items_np = _as_int_array(items, "items")
  annotators_np = _as_int_array(annotators, "annotators")
  labels_np = _as_int_array(labels, "labels")
  n = items_np.shape[0]
  for name, arr in (("annotators", annotators_np), ("labels", labels_np)):
    if arr.shape[0] != n:
      raise ValueError(f"`{name}` has {arr.shape[0]} entries but `items` has {n}; they must match.")
  _check_index_range(items_np, "items", num_items, "num_items")
  _check_index_range(annotators_np, "annotators", num_annotators, "num_annotators")

  def per_annotation(x, name, dtype):
    arr = np.asarray(x, dtype)
    if arr.shape != (n,):
      raise ValueError(f"`{name}` must have shape ({n},) like `items`, got {arr.shape}.")
    return arr

  if timestamps is None:
    # One shared "day": without timestamps no repeat pair can be formed.
    days = np.zeros(n, np.int32)
    order_time = np.zeros(n, np.float32)
  else:
    ts = per_annotation(timestamps, "timestamps", np.float64)
    if not np.all(np.isfinite(ts)):
      raise ValueError("`timestamps` must be finite epoch seconds; found NaN or inf.")
    days = np.floor(ts / _SECONDS_PER_DAY).astype(np.int32)
    # Time relative to the first annotation keeps float32 precise enough for ordering.
    order_time = (ts - (ts.min() if n else 0.0)).astype(np.float32)
  if response_ms is None:
    rms = np.zeros(n, np.float32)
    timed = np.zeros(n, bool)
  else:
    rms64 = per_annotation(response_ms, "response_ms", np.float64)
    timed = np.isfinite(rms64)
    rms = np.where(timed, rms64, 0.0).astype(np.float32)
  if is_golden is None:
    golden = np.zeros(n, bool)
    gold_labels = np.full(n, -1, np.int32)
  else:
    if golden_labels is None:
      raise ValueError("`golden_labels` is required when `is_golden` is given.")
    golden = per_annotation(is_golden, "is_golden", bool)
    gold_labels = per_annotation(golden_labels, "golden_labels", np.int64).astype(np.int32)
    golden = golden & (gold_labels >= 0)
  if expert_labels is None:
    experts = np.full(num_items, -1, np.int32)
  else:
    experts = np.asarray(expert_labels)
    if experts.shape != (num_items,):
      raise ValueError(f"`expert_labels` must have shape (num_items,) = ({num_items},), got {experts.shape}.")
    experts = experts.astype(np.int32)

  return _metrics_core(
      items_np, annotators_np, labels_np, order_time, days, rms, timed, golden, gold_labels, experts,
      num_annotators=num_annotators, num_items=num_items,
  )
  return metrics


# ----------------------------------------------------------------------------------------
# Annotator weights.


def annotator_weights(
    metrics: AnnotatorMetrics,
    *,
    golden_coef: float = 0.4,
    expert_coef: float = 0.4,
    temporal_coef: float = 0.2,
    fast_threshold_ms: float = 3000.0,
    fast_penalty: float = 0.7,
    min_count: int = 1,
    no_evidence_weight: float | None = None,
) -> jax.Array:
  """One weight per annotator from its calibration metrics.

    weight = (golden_coef * golden_accuracy + expert_coef * expert_agreement
              + temporal_coef * temporal_consistency) / (sum of the coefficients used)
    weight *= fast_penalty   when median_response_ms < fast_threshold_ms

  With the defaults (0.4, 0.4, 0.2, summing to 1) and every metric present this is
  `0.4 * golden + 0.4 * expert_agreement + 0.2 * temporal_consistency`, times 0.7 when
  the median response is under 3 s.

  Missing metrics: a metric whose count is below `min_count` (e.g. an annotator who saw
  no golden item) is left out and the remaining coefficients are renormalised to their
  sum, so the weight stays a weighted average of the evidence there is: an annotator
  with golden accuracy 0.9 and no expert or repeat data gets 0.9, not 0.36. An annotator
  with no metric at all gets `no_evidence_weight` (by default the mean weight of the
  annotators that have evidence, before the speed penalty, or 0.5 when none has). The
  speed penalty applies only when the median response time is known.

  Args:
    metrics: `AnnotatorMetrics` from `annotator_metrics`.
    golden_coef, expert_coef, temporal_coef: non-negative coefficients.
    fast_threshold_ms: a median response time strictly below this is "fast".
    fast_penalty: multiplier in [0, 1] for fast annotators.
    min_count: minimum number of observations for a metric to count.
    no_evidence_weight: weight of annotators with no usable metric (None: see above).

  Returns:
    float32 [num_annotators] weights in [0, 1] when the metrics are in [0, 1].
  """
  for name, value in (("golden_coef", golden_coef), ("expert_coef", expert_coef), ("temporal_coef", temporal_coef)):
    check_scalar_range(value, name, low=0.0)
  if golden_coef + expert_coef + temporal_coef <= 0:
    raise ValueError("at least one of `golden_coef`, `expert_coef`, `temporal_coef` must be positive.")
  check_scalar_range(fast_penalty, "fast_penalty", low=0.0, high=1.0, high_inclusive=True)
  check_scalar_range(fast_threshold_ms, "fast_threshold_ms", low=0.0)
  return _weights(metrics, golden_coef, expert_coef, temporal_coef, fast_threshold_ms, fast_penalty, min_count,
                  no_evidence_weight)


@jax.jit
def _weights(metrics, golden_coef, expert_coef, temporal_coef, fast_threshold_ms, fast_penalty, min_count,
             no_evidence_weight):
  parts = (
      (golden_coef, metrics.golden_accuracy, metrics.num_golden),
      (expert_coef, metrics.expert_agreement, metrics.num_expert),
      (temporal_coef, metrics.temporal_consistency, metrics.num_repeat_pairs),
  )
  numerator = 0.0
  denominator = 0.0
  for coef, value, count in parts:
    present = (count >= min_count) & jnp.isfinite(value)
    numerator = numerator + jnp.where(present, coef * jnp.nan_to_num(value), 0.0)
    denominator = denominator + jnp.where(present, coef, 0.0)
  has_evidence = denominator > 0
  weight = numerator / jnp.where(has_evidence, denominator, 1.0)
  if no_evidence_weight is None:
    num_with = jnp.sum(has_evidence)
    fallback = jnp.where(num_with > 0, jnp.sum(jnp.where(has_evidence, weight, 0.0)) / jnp.maximum(num_with, 1), 0.5)
  else:
    fallback = jnp.asarray(no_evidence_weight, jnp.float32)
  weight = jnp.where(has_evidence, weight, fallback)
  median = metrics.median_response_ms
  fast = jnp.isfinite(median) & (median < fast_threshold_ms)
  return jnp.where(fast, fast_penalty * weight, weight).astype(jnp.float32)
