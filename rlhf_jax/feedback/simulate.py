"""An annotator-population simulator with known truth.

`simulate_annotations(key, config)` draws a pairwise-preference labelling job (items,
their true class a / b / tie, response lengths, golden and expert-labelled items) and a
population of annotators of known types, then every annotation, all as flat arrays
(`rlhf_jax.feedback.types`) with the truth behind them: true labels, per-annotator
confusion matrices (before and after drift), annotator types and drift change points.
`to_records` / `write_jsonl` emit the same records `rlhf_jax.feedback.io.records` reads, and
`write_annotator_truth` the truth about the annotators (type, drift change time) that
`records.read_annotator_truth` reads, so any experiment can run the full pipeline and
measure how much of the truth it recovers (`feedback.workflow.pipeline` finds
`annotator_truth.csv` next to the records and reports its drift detection rate).

Annotator types (shares set in `SimulationConfig`):

| type | behaviour (true class c, K classes) |
|---|---|
| `good` | correct with probability `acc ~ U(good_accuracy)`, else a uniformly random other class |
| `position_biased` | with probability `position_bias` answers "a", else behaves as `good` |
| `length_biased` | with probability `length_bias` picks the longer response, else as `good` |
| `spammer` | uniform over the K classes |
| `adversary` | with probability `adversary_flip` inverts (a <-> b; tie -> a or b), else uniform |
| `fast` | correct with probability `acc ~ U(fast_accuracy)`; response times ~`fast_response_ms_median` |
| `drifting` | as `good` until a change time, then accuracy `~ U(drift_accuracy_after)` |

The "symmetric" row used by `good`, `fast`, `drifting` and the unbiased part of the
biased types is `acc` on the true class and `(1 - acc) / (K - 1)` on each other class.
The generative confusion matrix of annotator m, `confusion[m, c, k] = P(label k | true c)`,
is returned; for `length_biased` it averages over response lengths, using that the
preferred response is the longer one with probability `longer_preferred` (ties: 0.5).

Vectorised: one jitted function draws all annotations from a single PRNG call (no Python
loop over annotations or annotators). On the project's 2-core CPU, 1,000,000 annotations
take about 0.3 s of CPU time per call after a one-time compilation of about 3 s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.feedback.workflow.golden import _affine_distinct_from_uniforms, _uniform_index
from rlhf_jax.feedback.types import A_PREFERRED, B_PREFERRED, PAIRWISE_CLASS_NAMES, EncodedAnnotations

__all__ = [
    "ANNOTATOR_TYPES",
    "Simulation",
    "SimulationConfig",
    "iter_records",
    "simulate_annotations",
    "to_encoded",
    "to_records",
    "write_annotator_truth",
    "write_jsonl",
]

ANNOTATOR_TYPES = ("good", "position_biased", "length_biased", "spammer", "adversary", "fast", "drifting")
GOOD, POSITION_BIASED, LENGTH_BIASED, SPAMMER, ADVERSARY, FAST, DRIFTING = range(len(ANNOTATOR_TYPES))

_SECONDS_PER_DAY = 86400.0


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
  """What to simulate. Shares of annotator types must sum to 1.

  Attributes:
    num_items: number of comparisons (items).
    num_annotators: number of annotators M.
    annotations_per_item: distinct annotators per item R (R <= M).
    num_classes: K; 3 for pairwise a / b / tie (`types.A_PREFERRED`, ...), 2 for a / b.
    class_prior: prior of the true class, length K; None: (0.45, 0.45, 0.10) for K = 3,
      uniform otherwise.
    good_share ... drifting_share: share of each annotator type; the counts are the
      largest-remainder rounding of `share * M`, assigned to annotators at random.
    good_accuracy: (low, high) range of per-annotator accuracy for good, biased and
      drifting (before the change) annotators.
    fast_accuracy: (low, high) accuracy range of fast annotators.
    drift_accuracy_after: (low, high) accuracy range of drifting annotators after the
      change.
    drift_window: (low, high) fractions of the time span between which the change time
      of each drifting annotator is drawn uniformly.
    position_bias: probability that a position-biased annotator answers "a" regardless.
    length_bias: probability that a length-biased annotator picks the longer response.
    longer_preferred: probability that the truly preferred response is the longer one.
    adversary_flip: probability that an adversary inverts the truth (else uniform).
    golden_rate: share of items that are golden (known answer = true class); exactly
      `round(golden_rate * num_items)` items.
    expert_rate: share of items with an expert label (`expert_labels`, -1 elsewhere).
    expert_accuracy: probability that an expert label equals the true class.
    repeat_rate: extra annotations, as a share of `num_items * R`, that repeat an
      earlier (item, annotator) pair 1-3 days later with an independently drawn label
      (for temporal consistency). Repeats are "duplicates" for the records reader: read
      them with `duplicate_policy="keep_all"`.
    repeat_gap_days: (low, high) days between an annotation and its repeat.
    num_days: timestamps are uniform over this many days from `start_time`.
    start_time: epoch seconds of the first possible annotation.
    response_ms_median: median response time of a typical annotator (ms).
    fast_response_ms_median: median response time of a typical fast annotator (ms).
    response_ms_sigma_between: log-scale spread of per-annotator median response times.
    response_ms_sigma_within: log-scale spread of one annotator's response times.
    response_length_median: median response length in words.
    response_length_sigma: log-scale spread of response lengths.
    guideline_version: written into every record.
  """

  num_items: int = 1000
  num_annotators: int = 50
  annotations_per_item: int = 5
  num_classes: int = 3
  class_prior: tuple[float, ...] | None = None
  good_share: float = 0.6
  position_biased_share: float = 0.1
  length_biased_share: float = 0.1
  spammer_share: float = 0.05
  adversary_share: float = 0.05
  fast_share: float = 0.05
  drifting_share: float = 0.05
  good_accuracy: tuple[float, float] = (0.7, 0.95)
  fast_accuracy: tuple[float, float] = (0.45, 0.65)
  drift_accuracy_after: tuple[float, float] = (0.35, 0.5)
  drift_window: tuple[float, float] = (0.3, 0.7)
  position_bias: float = 0.5
  length_bias: float = 0.5
  longer_preferred: float = 0.5
  adversary_flip: float = 0.9
  golden_rate: float = 0.07
  expert_rate: float = 0.0
  expert_accuracy: float = 1.0
  repeat_rate: float = 0.0
  repeat_gap_days: tuple[float, float] = (1.0, 3.0)
  num_days: float = 14.0
  start_time: float = 1_700_000_000.0
  response_ms_median: float = 9000.0
  fast_response_ms_median: float = 1500.0
  response_ms_sigma_between: float = 0.3
  response_ms_sigma_within: float = 0.5
  response_length_median: float = 120.0
  response_length_sigma: float = 0.6
  guideline_version: str = "sim-v1"

  def __post_init__(self):
    def fail(field, expected, got):
      raise ValueError(f"SimulationConfig.{field}: expected {expected}, got {got!r}.")

    for field in ("num_items", "num_annotators", "annotations_per_item"):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or value < 1:
        fail(field, "a positive integer", value)
    if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 2:
      fail("num_classes", "an integer >= 2", self.num_classes)
    if self.annotations_per_item > self.num_annotators:
      fail("annotations_per_item", f"at most num_annotators={self.num_annotators} (distinct annotators)",
           self.annotations_per_item)
    if self.class_prior is not None:
      prior = np.asarray(self.class_prior, np.float64)
      if prior.shape != (self.num_classes,) or np.any(prior < 0) or abs(prior.sum() - 1) > 1e-6:
        fail("class_prior", f"{self.num_classes} non-negative numbers summing to 1", self.class_prior)
    shares = self.type_shares()
    if any(s < 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-6:
      fail("*_share", "non-negative shares summing to 1", dict(zip(ANNOTATOR_TYPES, shares)))
    for field in ("good_accuracy", "fast_accuracy", "drift_accuracy_after", "drift_window", "repeat_gap_days"):
      low, high = getattr(self, field)
      if not 0 <= low <= high or (field != "repeat_gap_days" and high > 1):
        fail(field, "a (low, high) pair with 0 <= low <= high (<= 1 for probabilities)", (low, high))
    for field in ("position_bias", "length_bias", "longer_preferred", "adversary_flip", "golden_rate",
                  "expert_rate", "expert_accuracy"):
      value = getattr(self, field)
      if not 0.0 <= value <= 1.0:
        fail(field, "a probability in [0, 1]", value)
    if self.repeat_rate < 0:
      fail("repeat_rate", "a non-negative share", self.repeat_rate)
    for field in ("num_days", "response_ms_median", "fast_response_ms_median", "response_length_median"):
      if getattr(self, field) <= 0:
        fail(field, "a positive number", getattr(self, field))

  def type_shares(self) -> tuple[float, ...]:
    return tuple(float(getattr(self, f"{name}_share")) for name in ANNOTATOR_TYPES)

  def prior(self) -> np.ndarray:
    if self.class_prior is not None:
      return np.asarray(self.class_prior, np.float64)
    if self.num_classes == 3:
      return np.array([0.45, 0.45, 0.10])
    return np.full(self.num_classes, 1.0 / self.num_classes)

  def type_counts(self) -> np.ndarray:
    """Annotators per type: largest-remainder rounding of share * num_annotators."""
    raw = np.asarray(self.type_shares()) * self.num_annotators
    counts = np.floor(raw).astype(np.int64)
    remainder = self.num_annotators - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:remainder]] += 1
    return counts


@dataclasses.dataclass(frozen=True)
class Simulation:
  """Simulated annotations and the truth behind them (NumPy arrays).

  Per annotation [N] (N = num_items * R + number of repeats; the first num_items * R are
  item-major, R per item, repeats follow):
    items, annotators, labels: int32 flat arrays.
    timestamps: float64 epoch seconds.  response_ms: float64.
    is_golden: bool.  golden_labels: int32 known answer, -1 when not golden.
    is_repeat: bool, the annotation repeats an earlier (item, annotator) pair.
    after_drift: bool, made by a drifting annotator after its change time.
  Per item [num_items]:
    true_labels: int32.  golden_items: bool.  expert_labels: int32, -1 when none.
    length_a, length_b: int32 response lengths in words.
  Per annotator [M]:
    annotator_types: int32 index into `ANNOTATOR_TYPES`.
    accuracy, accuracy_after_drift: float32 probability of the true class (averaged over
      the class prior for biased types and adversaries).
    confusion, confusion_after_drift: float32 [M, K, K], P(label k | true class c).
    change_times: float64 epoch seconds of the drift change (NaN when not drifting).
    change_index: int32 index, in the annotator's time-ordered stream, of its first
      annotation after the change (-1 when not drifting).
    median_response_ms: float64 the annotator's configured median response time.
  """

  config: SimulationConfig
  items: np.ndarray
  annotators: np.ndarray
  labels: np.ndarray
  timestamps: np.ndarray
  response_ms: np.ndarray
  is_golden: np.ndarray
  golden_labels: np.ndarray
  is_repeat: np.ndarray
  after_drift: np.ndarray
  true_labels: np.ndarray
  golden_items: np.ndarray
  expert_labels: np.ndarray
  length_a: np.ndarray
  length_b: np.ndarray
  annotator_types: np.ndarray
  accuracy: np.ndarray
  accuracy_after_drift: np.ndarray
  confusion: np.ndarray
  confusion_after_drift: np.ndarray
  change_times: np.ndarray
  change_index: np.ndarray
  median_response_ms: np.ndarray

  @property
  def num_annotations(self) -> int:
    return int(self.items.shape[0])

  def type_names(self) -> list[str]:
    return [ANNOTATOR_TYPES[t] for t in self.annotator_types]


def _symmetric_rows(accuracy: jax.Array, true_class: jax.Array, num_classes: int) -> jax.Array:
  """accuracy on the true class, (1 - accuracy) / (K - 1) on each other class."""
  onehot = jax.nn.one_hot(true_class, num_classes)
  accuracy = accuracy[..., None]
  return accuracy * onehot + (1.0 - accuracy) / (num_classes - 1) * (1.0 - onehot)


def _inverted_rows(true_class: jax.Array, num_classes: int) -> jax.Array:
  """a -> b, b -> a; any other class (tie) -> a or b with probability 1/2 each."""
  ab = jnp.zeros(true_class.shape + (num_classes,)).at[..., A_PREFERRED].set(0.5).at[..., B_PREFERRED].set(0.5)
  swapped = jax.nn.one_hot(jnp.where(true_class == A_PREFERRED, B_PREFERRED, A_PREFERRED), num_classes)
  return jnp.where((true_class <= B_PREFERRED)[..., None], swapped, ab)


def _confusions(types, accuracy, config: SimulationConfig) -> jax.Array:
  """Expected [M, K, K] confusion matrices P(label | true class) of each annotator."""
  k = config.num_classes
  classes = jnp.arange(k)
  sym = _symmetric_rows(accuracy[:, None], classes[None, :], k)  # [M, K, K]
  a_row = jax.nn.one_hot(A_PREFERRED, k)
  b_row = jax.nn.one_hot(B_PREFERRED, k)
  q = config.longer_preferred
  # P(the longer response is a | true class): q for a, 1 - q for b, 1/2 otherwise.
  longer_is_a = jnp.where(classes == A_PREFERRED, q, jnp.where(classes == B_PREFERRED, 1.0 - q, 0.5))
  length_rows = longer_is_a[:, None] * a_row + (1.0 - longer_is_a)[:, None] * b_row  # [K, K]
  f = config.adversary_flip
  adversary = f * _inverted_rows(classes, k) + (1.0 - f) / k
  s_pos, s_len = config.position_bias, config.length_bias
  t = types[:, None, None]
  return jnp.select(
      [t == POSITION_BIASED, t == LENGTH_BIASED, t == ADVERSARY],
      [
          (1 - s_pos) * sym + s_pos * a_row,
          (1 - s_len) * sym + s_len * length_rows,
          jnp.broadcast_to(adversary, sym.shape),
      ],
      sym,
  )


def _uniform_range(bounds: tuple[float, float], u: jax.Array) -> jax.Array:
  return bounds[0] + (bounds[1] - bounds[0]) * u


def _categorical(u: jax.Array, probs: jax.Array) -> jax.Array:
  """Inverse-CDF draw of a class from `probs` ([..., K], or [K] shared) with uniforms `u` [...].

  A shared [K] row is not broadcast before the cumulative sum, so that XLA does not
  constant-fold a [..., K] cumsum of a constant at compile time.
  """
  cdf = jnp.cumsum(probs, axis=-1)
  below = cdf <= u[..., None] * cdf[..., -1:]
  return jnp.minimum(jnp.sum(below, axis=-1), probs.shape[-1] - 1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config",))
def _simulate_core(key, config: SimulationConfig):
  # Few, large random draws (uniforms turned into normals and categoricals by inverse
  # CDFs) rather than one jax.random call per quantity: each call inlines a threefry
  # kernel, and a dozen of them dominate compile time.
  c = config
  k, m, r = c.num_classes, c.num_annotators, c.annotations_per_item
  num_slots = c.num_items * r
  num_repeats = int(round(c.repeat_rate * num_slots))
  n = num_slots + num_repeats
  span = c.num_days * _SECONDS_PER_DAY
  # One PRNG call, sliced: [items 11 rows | annotators 7 rows | annotations 3 rows | repeats].
  sizes = (11 * c.num_items, 7 * m, 3 * n, num_repeats)
  uniforms = jax.random.uniform(key, (sum(sizes),), minval=1e-7, maxval=1.0 - 1e-7)
  bounds = np.cumsum((0,) + sizes)
  ui = uniforms[bounds[0]:bounds[1]].reshape(11, c.num_items)
  ua = uniforms[bounds[1]:bounds[2]].reshape(7, m)
  un = uniforms[bounds[2]:bounds[3]].reshape(3, n)
  ur = uniforms[bounds[3]:bounds[4]]
  normal = jax.scipy.special.ndtri

  # Items: truth, golden and expert labels, response lengths.
  prior = jnp.asarray(c.prior(), jnp.float32)
  true_labels = _categorical(ui[0], prior)
  num_golden = int(round(c.golden_rate * c.num_items))
  golden_items = jnp.zeros(c.num_items, bool).at[jnp.argsort(ui[1])[:num_golden]].set(True)
  expert_has = ui[2] < c.expert_rate
  expert_right = ui[3] < c.expert_accuracy
  expert_other = (true_labels + 1 + jnp.minimum((ui[4] * (k - 1)).astype(jnp.int32), k - 2)) % k
  expert_labels = jnp.where(expert_has, jnp.where(expert_right, true_labels, expert_other), -1)
  raw_lengths = jnp.exp(jnp.log(c.response_length_median) + c.response_length_sigma * normal(ui[5:7]))
  raw_lengths = jnp.maximum(jnp.round(raw_lengths), 1.0).astype(jnp.int32)
  short = jnp.min(raw_lengths, axis=0)
  long = jnp.maximum(jnp.max(raw_lengths, axis=0), short + 1)  # strictly longer
  preferred_is_longer = ui[7] < c.longer_preferred
  coin = ui[8] < 0.5
  preferred = jnp.where(true_labels == B_PREFERRED, B_PREFERRED, A_PREFERRED)
  other = B_PREFERRED + A_PREFERRED - preferred
  longer_side = jnp.where(
      true_labels <= B_PREFERRED,
      jnp.where(preferred_is_longer, preferred, other),
      jnp.where(coin, A_PREFERRED, B_PREFERRED),
  )
  length_a = jnp.where(longer_side == A_PREFERRED, long, short)
  length_b = jnp.where(longer_side == A_PREFERRED, short, long)

  # Annotators: types (a random permutation of the exact counts), accuracies, speed,
  # change times.
  type_list = jnp.asarray(np.repeat(np.arange(len(ANNOTATOR_TYPES)), c.type_counts()), jnp.int32)
  types = type_list[jnp.argsort(ua[0])]
  good_acc = _uniform_range(c.good_accuracy, ua[1])
  fast_acc = _uniform_range(c.fast_accuracy, ua[2])
  after_acc = _uniform_range(c.drift_accuracy_after, ua[3])
  base_acc = jnp.select([types == FAST, types == SPAMMER], [fast_acc, jnp.full((m,), 1.0 / k)], good_acc)
  drift_acc = jnp.where(types == DRIFTING, after_acc, base_acc)
  log_median = jnp.where(types == FAST, jnp.log(c.fast_response_ms_median), jnp.log(c.response_ms_median))
  median_ms = jnp.exp(log_median + c.response_ms_sigma_between * normal(ua[4]))
  change_offset = jnp.where(types == DRIFTING, _uniform_range(c.drift_window, ua[5]) * span, jnp.inf)
  annotator_order = jnp.argsort(ua[6])

  # Annotations: R distinct annotators per item, repeats, times.
  slots = _affine_distinct_from_uniforms(ui[9], ui[10], r, m)
  annotator_of_slot = annotator_order[slots].reshape(-1).astype(jnp.int32)
  repeat_source = _uniform_index(ur, num_slots)
  base_items = jnp.repeat(jnp.arange(c.num_items, dtype=jnp.int32), r)
  items = jnp.concatenate([base_items, base_items[repeat_source]])
  annotators = jnp.concatenate([annotator_of_slot, annotator_of_slot[repeat_source]])
  base_time = un[0, :num_slots] * span
  gap = _SECONDS_PER_DAY * _uniform_range(c.repeat_gap_days, un[0, num_slots:])
  time_offset = jnp.concatenate([base_time, base_time[repeat_source] + gap])
  response_ms = median_ms[annotators] * jnp.exp(c.response_ms_sigma_within * normal(un[1]))

  # Labels: P(label | annotator, item, time), then one inverse-CDF draw per annotation.
  truth = true_labels[items]
  a_type = types[annotators]
  after = time_offset >= change_offset[annotators]
  acc = jnp.where(after, drift_acc[annotators], base_acc[annotators])
  probs = _symmetric_rows(acc, truth, k)
  bias = jnp.select([a_type == POSITION_BIASED, a_type == LENGTH_BIASED], [c.position_bias, c.length_bias], 0.0)
  target = jnp.where(a_type == POSITION_BIASED, A_PREFERRED, longer_side[items])
  probs = (1.0 - bias[:, None]) * probs + bias[:, None] * jax.nn.one_hot(target, k)
  adversary = c.adversary_flip * _inverted_rows(truth, k) + (1.0 - c.adversary_flip) / k
  probs = jnp.where((a_type == ADVERSARY)[:, None], adversary, probs)
  labels = _categorical(un[2], probs)

  is_golden = golden_items[items]
  golden_labels = jnp.where(is_golden, truth, -1).astype(jnp.int32)
  change_index = jnp.where(
      types == DRIFTING, jax.ops.segment_sum((~after).astype(jnp.int32), annotators, num_segments=m), -1
  )
  confusion = _confusions(types, base_acc, c)
  confusion_after = _confusions(types, drift_acc, c)
  accuracy = jnp.einsum("c,mcc->m", prior, confusion)
  accuracy_after = jnp.einsum("c,mcc->m", prior, confusion_after)
  return dict(
      items=items, annotators=annotators, labels=labels, time_offset=time_offset, response_ms=response_ms,
      is_golden=is_golden, golden_labels=golden_labels, after_drift=after,
      true_labels=true_labels, golden_items=golden_items, expert_labels=expert_labels.astype(jnp.int32),
      length_a=length_a, length_b=length_b, annotator_types=types, accuracy=accuracy,
      accuracy_after_drift=accuracy_after, confusion=confusion, confusion_after_drift=confusion_after,
      change_offset=change_offset, change_index=change_index.astype(jnp.int32), median_response_ms=median_ms,
  )


def simulate_annotations(key: jax.Array, config: SimulationConfig) -> Simulation:
  """Simulates a labelling job with known truth (see the module docstring).

  Every item gets `annotations_per_item` distinct annotators (an affine permutation of
  a random annotator order per item, so workloads are balanced within one annotation
  of each other on average), timestamps uniform over `num_days`, per-annotator
  log-normal response times, and a label drawn from the annotator's row for the item's
  true class (drift, position and length bias included). `repeat_rate` adds repeat
  annotations of earlier (item, annotator) pairs 1-3 days later.

  Args:
    key: a JAX PRNG key; the same key and config give the same simulation.
    config: a `SimulationConfig`.

  Returns:
    A `Simulation` of NumPy arrays.
  """
  if not isinstance(config, SimulationConfig):
    raise TypeError(f"`config` must be a SimulationConfig, got {type(config).__name__}.")
  c = config
  out = jax.device_get(_simulate_core(key, config=c))
  num_slots = c.num_items * c.annotations_per_item
  timestamps = c.start_time + np.asarray(out["time_offset"], np.float64)
  change_offset = np.asarray(out["change_offset"], np.float64)
  change_times = np.where(np.isfinite(change_offset), c.start_time + change_offset, np.nan)
  is_repeat = np.zeros(out["items"].shape[0], bool)
  is_repeat[num_slots:] = True
  return Simulation(
      config=c,
      items=np.asarray(out["items"], np.int32),
      annotators=np.asarray(out["annotators"], np.int32),
      labels=np.asarray(out["labels"], np.int32),
      timestamps=timestamps,
      response_ms=np.asarray(out["response_ms"], np.float64),
      is_golden=np.asarray(out["is_golden"], bool),
      golden_labels=np.asarray(out["golden_labels"], np.int32),
      is_repeat=is_repeat,
      after_drift=np.asarray(out["after_drift"], bool),
      true_labels=np.asarray(out["true_labels"], np.int32),
      golden_items=np.asarray(out["golden_items"], bool),
      expert_labels=np.asarray(out["expert_labels"], np.int32),
      length_a=np.asarray(out["length_a"], np.int32),
      length_b=np.asarray(out["length_b"], np.int32),
      annotator_types=np.asarray(out["annotator_types"], np.int32),
      accuracy=np.asarray(out["accuracy"], np.float32),
      accuracy_after_drift=np.asarray(out["accuracy_after_drift"], np.float32),
      confusion=np.asarray(out["confusion"], np.float32),
      confusion_after_drift=np.asarray(out["confusion_after_drift"], np.float32),
      change_times=change_times,
      change_index=np.asarray(out["change_index"], np.int32),
      median_response_ms=np.asarray(out["median_response_ms"], np.float64),
  )


# ----------------------------------------------------------------------------------------
# Records.


def _class_names(num_classes: int) -> tuple[str, ...]:
  if num_classes > len(PAIRWISE_CLASS_NAMES):
    raise ValueError(
        f"records hold pairwise choices {PAIRWISE_CLASS_NAMES}; a simulation with num_classes={num_classes} "
        "cannot be written as records (use the flat arrays or `to_encoded`)."
    )
  return PAIRWISE_CLASS_NAMES[:num_classes]


def _item_id(i: int) -> str:
  return f"item-{i}"


def _annotator_id(a: int) -> str:
  return f"annotator-{a}"


def iter_records(simulation: Simulation, *, with_text: bool = True) -> Iterator[dict[str, Any]]:
  """Yields one record per annotation in the schema of `rlhf_jax.feedback.io.records`.

  Fields: `annotation_id` ("sim-N"), `item_id` ("item-I"), `prompt`, `response_a`,
  `response_b` (with `with_text`; placeholder texts whose word counts are the simulated
  lengths, so length bias is visible in the records) or `response_a_id`,
  `response_b_id` (without), `annotator_id` ("annotator-M"), `choice` ("a" | "b" |
  "tie"), `timestamp` (epoch seconds), `response_ms`, `is_golden`, `golden_answer`
  (only on golden annotations) and `guideline_version`. No `strength` is simulated, so
  the field is omitted.
  """
  names = _class_names(simulation.config.num_classes)
  version = simulation.config.guideline_version
  items = simulation.items.tolist()
  annotators = simulation.annotators.tolist()
  labels = simulation.labels.tolist()
  timestamps = simulation.timestamps.tolist()
  response_ms = simulation.response_ms.tolist()
  golden = simulation.is_golden.tolist()
  golden_labels = simulation.golden_labels.tolist()
  length_a = simulation.length_a.tolist()
  length_b = simulation.length_b.tolist()
  for n in range(len(items)):
    i = items[n]
    record: dict[str, Any] = {"annotation_id": f"sim-{n}", "item_id": _item_id(i)}
    if with_text:
      record["prompt"] = f"Simulated prompt {i}."
      record["response_a"] = " ".join(["a"] * length_a[i])
      record["response_b"] = " ".join(["b"] * length_b[i])
    else:
      record["response_a_id"] = f"{_item_id(i)}-a"
      record["response_b_id"] = f"{_item_id(i)}-b"
    record["annotator_id"] = _annotator_id(annotators[n])
    record["choice"] = names[labels[n]]
    record["timestamp"] = round(timestamps[n], 3)
    record["response_ms"] = round(response_ms[n], 1)
    record["is_golden"] = bool(golden[n])
    if golden[n]:
      record["golden_answer"] = names[golden_labels[n]]
    record["guideline_version"] = version
    yield record


def to_records(simulation: Simulation, *, with_text: bool = True) -> list[dict[str, Any]]:
  """All records of `iter_records` as a list (see there for the fields)."""
  return list(iter_records(simulation, with_text=with_text))


def write_jsonl(simulation: Simulation, path: str | os.PathLike, *, with_text: bool = True) -> int:
  """Writes the records as JSON Lines (UTF-8, one record per line); returns the count."""
  count = 0
  with open(path, "w", encoding="utf-8") as f:
    for record in iter_records(simulation, with_text=with_text):
      f.write(json.dumps(record, ensure_ascii=False))
      f.write("\n")
      count += 1
  return count


def write_annotator_truth(simulation: Simulation, path: str | os.PathLike) -> int:
  """Writes the truth about each annotator as CSV; returns the number of rows.

  Columns: `annotator` (the id of the records, "annotator-M"), `type` (one of
  `ANNOTATOR_TYPES`), `change_time` (epoch seconds of a drifting annotator's change,
  empty for the others), `accuracy` and `accuracy_after_drift` (probability of the true
  class, averaged over the class prior). Read it with `records.read_annotator_truth`.
  """
  names = simulation.type_names()
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write("annotator,type,change_time,accuracy,accuracy_after_drift\n")
    for a, name in enumerate(names):
      change = simulation.change_times[a]
      f.write(f"{_annotator_id(a)},{name},{'' if not np.isfinite(change) else f'{change:.3f}'},"
              f"{simulation.accuracy[a]:.6g},{simulation.accuracy_after_drift[a]:.6g}\n")
  return len(names)


def to_encoded(simulation: Simulation) -> EncodedAnnotations:
  """The simulation as `EncodedAnnotations` (indices equal ids' numbers; no file needed)."""
  c = simulation.config
  names = PAIRWISE_CLASS_NAMES[: c.num_classes] if c.num_classes <= 3 else tuple(map(str, range(c.num_classes)))
  n = simulation.num_annotations
  return EncodedAnnotations(
      items=simulation.items,
      annotators=simulation.annotators,
      labels=simulation.labels,
      item_ids=tuple(_item_id(i) for i in range(c.num_items)),
      annotator_ids=tuple(_annotator_id(a) for a in range(c.num_annotators)),
      class_names=names,
      annotation_ids=tuple(f"sim-{i}" for i in range(n)),
      timestamps=simulation.timestamps,
      response_ms=simulation.response_ms,
      strength=None,
      is_golden=simulation.is_golden,
      golden_labels=simulation.golden_labels,
      guideline_versions=(c.guideline_version,) * n,
  )

