r"""Streaming aggregation: annotation batches in, changed labels out, state in a checkpoint.

A campaign delivers annotations in batches (files dropped in a folder, or Python calls).
`StreamingAggregator.feed(batch)` validates the batch, adds its annotations to the state,
re-fits the model warm-started from the previous fit, and writes the labels that changed.
`follow(DIR, ...)` (behind `scripts/aggregate.py --follow=DIR`) runs it as a long-lived
job over the files that appear in DIR.

Model. `method="dawid_skene"` is Dawid & Skene (1979) EM with one confusion matrix per
annotator, the same objective, floors (1e-10; 1e-30 for labels an annotator never gave),
stopping rule (no posterior moves by `tol`) and start (vote shares) as
`rlhf_jax.feedback.dawid_skene` for the first batch. Every later batch is *warm-started*:

  q0[i, k] ∝ rho[k] prod_{n: item_n = i} confusion_prev[a_n, k, y_n]     (E-step, old params)

over all annotations so far (annotators new in the batch start without evidence, a
flat row), then EM alternates M- and E-steps until no posterior moves by `tol` or
`refit_iters` iterations: this full, warm-started EM runs when the annotations grew by
`refit_growth` since the last one (a geometric schedule, so its total cost stays linear
in the stream). Between full fits a
batch costs O(its size): `local_iters` steps of incremental EM (Neal & Hinton 1998)
re-estimate only the batch's items and update the sufficient statistics
n[a, k, l] = sum_n q[i_n, k] [a_n = a, y_n = l] and the class counts by replacing those
items' shares. When the queue is empty, `converge()` runs EM from the vote shares over
every annotation, so labels.csv then equals `dawid_skene` on all annotations at once (to
float rounding: 1e-5 on posteriors in the tests). The per-batch labels are those of the
incremental fit; EM has local optima, and the tests measure how often a purely
warm-started fit ends with other labels (under 2% of items on a small simulated crowd
with spammers). `method="one_coin_dawid_skene"` is the same machinery with the M-step of
`feedback.one_coin_dawid_skene` (one accuracy per annotator: the correct mass is the
trace of n[a], so the same statistics serve). `method="majority_vote"` keeps the vote
counts [I, K] (its sufficient
statistics) and is exact after every batch.

State (what a checkpoint holds; npz + json, never pickle):
* `checkpoint/segments/NNNNNN.npz`: each batch's accepted annotations as global indices
  (items, annotators, labels) with the item and annotator ids first seen in it, the
  annotation ids and guideline versions, and the new items' texts (JSON strings): the sufficient statistics of the exact refit, appended once, never
  rewritten.
* `checkpoint/state-NNNNNN.npz`: posteriors [I, K], confusion [A, K, K], expected
  confusion counts n[a, k, l] and class counts (the M-step's sufficient statistics),
  vote counts [I, K], and per-annotator drift statistics: agreement counts with the label
  the item had once its batch was aggregated, a Bernoulli CUSUM on that agreement
  (Reynolds & Stoumbos 1999; the same increments as `rlhf_jax.feedback.bernoulli_cusum`),
  its alarm count and the batch of the first alarm, golden answers and correct ones.
* `checkpoint/state.json`: the commit record: configuration, number of batches and
  segments, the state file, the content hash (SHA-256) of every batch seen, skipped
  duplicates. It is replaced atomically (`os.replace`) after everything else of the
  batch is written, so a process killed at any point restarts from the last committed
  batch: the batch in flight is read again (its hash is not committed), its segment and
  outputs are overwritten, and nothing is lost or counted twice.

Outputs after each batch (in the output directory): `changes/NNNNNN.csv` (items that are
new or whose label or confidence moved by at least `change_threshold`: item, label,
confidence, previous label and confidence, posteriors, annotations), `rejects/NNNNNN.jsonl`
(rows of the batch that were not used, with file, line, field and reason;
accepted + rejected = read), `annotators.csv` (current annotator metrics, rewritten).
`write_labels()` writes `labels.csv` for every item, and `write_training()` the training
file of the data layer (`feedback.write_training_file`: train.jsonl with texts, soft
target, confidence as weight and lineage; awaiting_review.jsonl for items below
`review_threshold`; train_rejects.jsonl), so every item is in exactly one; `follow` writes
both whenever the folder has no unread batch left (the training file for pairwise
formats).

Batches. A batch is a file in one of `rlhf_jax.feedback.FORMATS` read by
`rlhf_jax.feedback.read_annotations` (one validation path: its rejects are this batch's
rejects), or a list of records (dicts in the schema of the format) that is written to
`checkpoint/inbox/` first and then read the same way. A batch whose content hash was seen
before is skipped (recorded in state.json). Across batches, a row whose annotation id was
already aggregated, or whose annotator already labelled that item in an earlier batch, is
rejected with that reason (a re-sent or partially re-written file cannot count twice).
The texts of a pairwise item are checked for consistency within a batch (by the reader),
not across batches.
The classes must be fixed for the whole stream: pairwise formats use a, b, tie (or the
declared subset); `crowd_csv` needs declared classes.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import feedback
from rlhf_jax.feedback import types
from rlhf_jax.io import ingest

__all__ = [
    "STREAM_METHODS",
    "BatchResult",
    "StreamConfig",
    "StreamingAggregator",
    "follow",
]

STREAM_METHODS = ("dawid_skene", "one_coin_dawid_skene", "majority_vote")
_SUFFIXES = {
    "jsonl": (".jsonl", ".jsonl.gz", ".json"),
    "csv": (".csv", ".csv.gz"),
    "crowd_csv": (".csv", ".csv.gz"),
    "parquet": (".parquet",),
}
_PROB_FLOOR = 1e-10  # as `feedback.dawid_skene` (crowd-kit's clip)
_UNUSED_LABEL_FLOOR = 1e-30  # confusion cells of labels an annotator never gave
_MIN_CAPACITY = 1024
_CHECKPOINT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class StreamConfig:
  """Settings of a stream; they are stored in the checkpoint and must match on resume.

  Attributes:
    format: file format of the batches, one of `feedback.FORMATS`.
    method: one of `STREAM_METHODS`.
    classes: declared classes in class order (required for `crowd_csv`); None for the
      pairwise default a, b, tie.
    num_iters: maximum EM iterations per batch.
    tol: EM stops once no posterior moves by this much.
    smoothing: pseudo-count on confusion cells (as `feedback.dawid_skene`).
    duplicate_policy: within one batch, as `feedback.read_annotations`.
    change_threshold: a confidence move at least this large puts an item in the batch's
      changes file (new items and changed labels always are).
    review_threshold: in the training file, items whose confidence is below this await
      expert review instead of training (as `configs/aggregate.py` routing).
    local_iters: incremental EM steps on a batch's items (when no full EM runs).
    refit_growth: a full warm-started EM over all annotations runs once they grew by
      this share since the last one (0: after every batch; the total work stays linear
      in the stream's length for any share > 0, a geometric series).
    refit_iters: most EM iterations of a warm full fit between batches (bounds a batch's
      latency; `converge()` runs up to `num_iters`).
    fsync: fsync the commit record (state.json) after each batch. Renames alone survive
      a killed process (the tests kill with SIGKILL); fsync guards against power loss too.
    cusum_p0, cusum_p1, cusum_threshold: Bernoulli CUSUM on each annotator's agreement
      with the aggregated label: in-control rate, rate to detect, decision interval.
  """

  format: str = "jsonl"
  method: str = "dawid_skene"
  classes: tuple[str, ...] | None = None
  num_iters: int = 100
  tol: float = 1e-5
  smoothing: float = 0.0
  duplicate_policy: str = "keep_last"
  change_threshold: float = 0.01
  review_threshold: float = 0.7
  local_iters: int = 3
  refit_growth: float = 0.25
  refit_iters: int = 20
  fsync: bool = False
  cusum_p0: float = 0.85
  cusum_p1: float = 0.6
  cusum_threshold: float = 5.0

  def __post_init__(self):
    if self.format not in feedback.FORMATS:
      raise ValueError(f"format must be one of {', '.join(feedback.FORMATS)}, got {self.format!r}.")
    if self.method not in STREAM_METHODS:
      raise ValueError(f"method must be one of {', '.join(STREAM_METHODS)} for streaming, "
                       f"got {self.method!r}.")
    if self.format == "crowd_csv" and not self.classes:
      raise ValueError("streaming crowd_csv needs declared classes (--config.classes=0,1, or "
                       "StreamConfig(classes=('0', '1'))): a class first seen in a later batch "
                       "would change the model's size.")
    if self.classes is not None:
      object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
    if not self.num_iters >= 1:
      raise ValueError(f"num_iters must be >= 1, got {self.num_iters}.")
    if not self.tol >= 0:
      raise ValueError(f"tol must be >= 0, got {self.tol}.")
    if not 0 < self.cusum_p1 < 1 or not 0 < self.cusum_p0 < 1 or self.cusum_p0 == self.cusum_p1:
      raise ValueError("cusum_p0 and cusum_p1 must be distinct numbers in (0, 1).")

  @property
  def class_names(self) -> tuple[str, ...]:
    if self.classes:
      if self.format == "crowd_csv":
        return self.classes
      lowered = {c.lower() for c in self.classes}
      return tuple(c for c in feedback.PAIRWISE_CLASS_NAMES if c in lowered)
    return tuple(feedback.PAIRWISE_CLASS_NAMES)

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["classes"] = list(self.classes) if self.classes else None
    return out


@dataclasses.dataclass(frozen=True)
class BatchResult:
  """What one `feed` did.

  Attributes:
    index: batch number (0-based) in the stream; -1 for a skipped duplicate.
    name: the file name (or the inbox name of a list of records).
    content_hash: SHA-256 of the batch's bytes.
    duplicate_of: for a skipped batch, the name of the earlier batch with this hash.
    num_read, num_accepted, num_rejected: rows; accepted + rejected = read.
    num_changed: items written to the changes file.
    num_iters: EM iterations this batch took (0 for votes and skipped batches).
    seconds: wall time from the call to the committed checkpoint.
    read_seconds: the part of it spent reading and validating the file.
    changes_path, rejects_path: the files written for this batch.
  """

  index: int
  name: str
  content_hash: str
  duplicate_of: str | None = None
  num_read: int = 0
  num_accepted: int = 0
  num_rejected: int = 0
  num_changed: int = 0
  num_iters: int = 0
  seconds: float = 0.0
  read_seconds: float = 0.0
  changes_path: str | None = None
  rejects_path: str | None = None

  @property
  def skipped(self) -> bool:
    return self.duplicate_of is not None


# ----------------------------------------------------------------------------------------
# The compiled fit.


def _capacity(n: int) -> int:
  """Smallest power of two >= n (at least 1024): one compilation per doubling."""
  return max(_MIN_CAPACITY, 1 << max(0, int(n - 1).bit_length()))


def _normalized_log(pseudo_counts, floor):
  floored = jnp.maximum(pseudo_counts, floor)
  return jnp.log(floored) - jnp.log(jnp.sum(floored, axis=-1, keepdims=True))


def _one_coin_log_confusion(correct, wrong, smoothing, num_classes: int, xp=jnp):
  """One-coin M-step from the expected correct and wrong answer mass per annotator, as
  `feedback.one_coin_dawid_skene`: p_a = (correct + s) / (answers + 2 s), off-diagonal
  (1 - p_a) / (K - 1), floored at 1e-10; 1 / K without evidence."""
  denominator = correct + wrong + 2.0 * smoothing
  has_evidence = denominator > 0
  scale = xp.where(has_evidence, 1.0 / xp.maximum(denominator, _PROB_FLOOR), 0.0)
  accuracy = xp.where(has_evidence, (correct + smoothing) * scale, 1.0 / num_classes)
  error = xp.where(has_evidence, (wrong + smoothing) * scale, 1.0 - 1.0 / num_classes)
  log_accuracy = xp.log(xp.maximum(accuracy, _PROB_FLOOR))
  log_error = xp.log(xp.maximum(error / (num_classes - 1), _PROB_FLOOR))
  eye = xp.eye(num_classes, dtype=bool)
  return xp.where(eye, log_accuracy[:, None, None], log_error[:, None, None])


def _em_core(items, annotators, labels, weight, init_log_confusion, init_log_prior,
             smoothing, tol, num_items: int, num_classes: int, num_iters: int, warm: bool,
             one_coin: bool = False):
  """Dawid-Skene EM on padded annotations, from the vote shares or from old parameters.

  items, annotators, labels, weight: [N_cap] (weight 1 on annotations, 0 on padding);
  init_log_confusion [A_cap, K, K] and init_log_prior [K]: the previous fit (used when
  `warm`); `num_items` = I_cap. The steps are those of `feedback.dawid_skene`:

    M: n[a, k, l] = sum_{n: a_n = a, y_n = l} w_n q[i_n, k],
       log confusion[a, k, l] = log max(n + s, floor) - log sum_l max(n + s, floor),
       rho[k] ∝ sum_{annotated i} q[i, k];
    E: q[i, k] ∝ rho[k] prod_n confusion[a_n, k, y_n]^{w_n};

  stopping after the first iteration in which no posterior moved by `tol`. `one_coin`:
  the M-step of `feedback.one_coin_dawid_skene` instead (one accuracy per annotator). Returns
  posteriors [I_cap, K], log confusion, log class prior (the M-step on the returned
  posteriors), expected confusion counts [A_cap, K, K], class counts [K], iterations.
  """
  k = num_classes
  num_annotators = init_log_confusion.shape[0]
  segments = annotators * k + labels
  item_counts = jax.ops.segment_sum(weight, items, num_segments=num_items)
  annotated = item_counts > 0
  given = jax.ops.segment_sum(weight, segments, num_segments=num_annotators * k)
  label_floor = jnp.where(given.reshape(num_annotators, 1, k) > 0, _PROB_FLOOR,
                          _UNUSED_LABEL_FLOOR)

  def m_step(posteriors):
    counts = jax.ops.segment_sum(posteriors[items] * weight[:, None], segments,
                                 num_segments=num_annotators * k)
    counts = counts.reshape(num_annotators, k, k).transpose(0, 2, 1)  # [A, true, observed]
    if one_coin:
      agreeing = posteriors[items, labels] * weight
      # The wrong mass summed directly: 1 - correct rounds to 0 in float32 for the best.
      correct = jax.ops.segment_sum(agreeing, annotators, num_segments=num_annotators)
      wrong = jax.ops.segment_sum(weight - agreeing, annotators, num_segments=num_annotators)
      log_confusion = _one_coin_log_confusion(correct, wrong, smoothing, k)
    else:
      log_confusion = _normalized_log(counts + smoothing, label_floor)
    class_counts = jnp.sum(jnp.where(annotated[:, None], posteriors, 0.0), axis=0)
    log_prior = _normalized_log(jnp.maximum(class_counts, 0.0), _PROB_FLOOR)
    return log_confusion, log_prior, counts, class_counts

  def e_step(log_confusion, log_prior):
    by_observed = log_confusion.transpose(0, 2, 1).reshape(num_annotators * k, k)
    per_annotation = by_observed[segments] * weight[:, None]
    log_joint = log_prior + jax.ops.segment_sum(per_annotation, items, num_segments=num_items)
    return jax.nn.softmax(log_joint, axis=-1)

  if warm:
    init = e_step(init_log_confusion, init_log_prior)
  else:
    votes = jax.ops.segment_sum(jax.nn.one_hot(labels, k) * weight[:, None], items,
                                num_segments=num_items)
    total = jnp.sum(votes, -1, keepdims=True)
    init = jnp.where(total > 0, votes / jnp.maximum(total, 1.0), 1.0 / k)

  def cond(state):
    return ~state[3]

  def body(state):
    iteration, posteriors, change, _ = state
    params = m_step(posteriors)
    finished = (iteration >= num_iters) | (change < tol)
    new = e_step(params[0], params[1])
    change = jnp.max(jnp.abs(new - posteriors))
    return (jnp.where(finished, iteration, iteration + 1),
            jnp.where(finished, posteriors, new), change, finished)

  iteration, posteriors, _, _ = jax.lax.while_loop(
      cond, body, (jnp.int32(0), init, jnp.float32(jnp.inf), jnp.asarray(False)))
  log_confusion, log_prior, counts, class_counts = m_step(posteriors)
  return posteriors, log_confusion, log_prior, counts, class_counts, iteration


_fit_dawid_skene = jax.jit(
    _em_core, static_argnames=("num_items", "num_classes", "num_iters", "warm", "one_coin"))


# ----------------------------------------------------------------------------------------
# Small helpers.


def _atomic_write_bytes(path: Path, data: bytes, *, sync: bool = False) -> None:
  """Writes `data` under a temporary name and renames it over `path` (readers never see
  half a file; a killed process leaves the old one). `sync`: fsync before the rename."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "wb") as handle:
    handle.write(data)
    if sync:
      handle.flush()
      os.fsync(handle.fileno())
  os.replace(tmp, path)


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as data:
    return {name: data[name] for name in data.files}


def _str_array(values: Sequence[str]) -> np.ndarray:
  return np.asarray(list(values), dtype=np.str_) if len(values) else np.zeros((0,), "<U1")


def _fmt(value: float) -> str:
  return f"{float(value):.6g}"


def _grow(array: np.ndarray, rows: int, fill: Any = 0) -> np.ndarray:
  """`array` with at least `rows` rows (new rows filled with `fill`)."""
  if array.shape[0] >= rows:
    return array
  out = np.full((rows, *array.shape[1:]), fill, array.dtype)
  out[:array.shape[0]] = array
  return out


# ----------------------------------------------------------------------------------------
# The aggregator.


class StreamingAggregator(types.IdTables):
  """Incremental aggregation with a checkpoint in `output_dir` (see the module docstring).

  >>> agg = StreamingAggregator("runs/stream", StreamConfig(format="jsonl"))
  >>> result = agg.feed("batches/0001.jsonl")        # or agg.feed([{...}, {...}])
  >>> agg.labels()["label"]                           # current labels, by item

  Opening a directory that holds a checkpoint resumes from it; the configuration must
  equal the stored one (a different method or class set would silently change labels).
  """

  def __init__(self, output_dir: str | os.PathLike[str], config: StreamConfig):
    self.config = config
    self.output_dir = Path(output_dir)
    self.checkpoint_dir = self.output_dir / "checkpoint"
    self.class_names = config.class_names
    self.num_classes = len(self.class_names)
    k = self.num_classes
    # Host-side state.
    self.item_ids: list[str] = []
    self.item_index: dict[str, int] = {}
    self.annotator_ids: list[str] = []
    self.annotator_index: dict[str, int] = {}
    self.annotation_ids: set[str] = set()
    self.annotation_order: list[str] = []  # annotation ids in stream order (lineage)
    self.guideline_versions: list[str] = []  # per annotation, "" when absent
    self.item_payloads: list[dict[str, Any]] = []  # per item: prompt, response_a, response_b
    self.pairs: set[int] = set()  # item * 2**32 + annotator, for cross-batch repeats
    self._items = np.zeros((0,), np.int32)
    self._annotators = np.zeros((0,), np.int32)
    self._labels = np.zeros((0,), np.int32)
    self.posteriors = np.zeros((0, k), np.float32)
    self.votes = np.zeros((0, k), np.float32)
    self.confusion_counts = np.zeros((0, k, k), np.float64)  # n[a, true k, observed l]
    self.label_counts = np.zeros((0, k), np.int64)  # answers per annotator and label
    self.class_counts = np.zeros((k,), np.float64)
    self.agree = np.zeros((0,), np.int64)  # answers equal to the label after their batch
    self.answered = np.zeros((0,), np.int64)
    self.cusum = np.zeros((0,), np.float64)
    self.cusum_alarms = np.zeros((0,), np.int64)
    self.first_alarm_batch = np.zeros((0,), np.int64)
    self.golden_answered = np.zeros((0,), np.int64)
    self.golden_correct = np.zeros((0,), np.int64)
    self.batches: list[dict[str, Any]] = []  # committed batches (json records)
    self.skipped: list[dict[str, Any]] = []
    self.hashes: dict[str, str] = {}  # content hash -> batch name
    self._has_fit = False
    self._full_fit_size = 0  # annotations at the last full EM
    self._head = np.zeros((0,), np.int64)  # item -> position of its last annotation
    self._prev = np.zeros((0,), np.int64)  # annotation -> previous one of its item, or -1
    self._posteriors_size = 0  # items before the batch being fitted
    self._num_fitted_annotations = 0  # annotations before the batch being fitted
    if (self.checkpoint_dir / "state.json").exists():
      self._restore()

  # ---- public API -----------------------------------------------------------------------

  @property
  def num_annotations(self) -> int:
    return int(self._items.shape[0])

  @property
  def num_batches(self) -> int:
    return len(self.batches)

  def feed(self, batch: str | os.PathLike[str] | Sequence[Mapping[str, Any]], *,
           name: str | None = None) -> BatchResult:
    """Aggregates one batch: a file path, or a list of record dicts in the schema of
    `config.format` (written to checkpoint/inbox/ and read as a file).

    Returns a `BatchResult`; a batch whose content was seen before is skipped.
    """
    start = time.perf_counter()
    path, data = self._batch_bytes(batch, name)
    content_hash = ingest.fingerprint_bytes(data)
    if content_hash in self.hashes:
      record = {"name": path.name, "hash": content_hash, "duplicate_of": self.hashes[content_hash]}
      self.skipped.append(record)
      self._commit(state_file=self._state_file_name())
      return BatchResult(-1, path.name, content_hash, duplicate_of=record["duplicate_of"],
                         seconds=time.perf_counter() - start)

    index = self.num_batches
    rejects_path = self.output_dir / "rejects" / f"{index:06d}.jsonl"
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    read_start = time.perf_counter()
    accepted, rejects, num_read = self._read(path, rejects_path)
    read_seconds = time.perf_counter() - read_start
    new_items_start, new_annotators_start = self.num_items, self.num_annotators
    annotations_start = self.num_annotations
    self.num_items_before = old_size = self.posteriors.shape[0]
    assert old_size == new_items_start or True
    items, annotators, labels, kept_ids, golden = self._encode(accepted, rejects, path)
    if rejects:
      ingest.write_json_lines(rejects_path, rejects)
    elif rejects_path.exists():
      rejects_path.unlink()  # a redo after a crash: the stale file is not this batch's
    old_posteriors = self._current_posteriors().copy()
    self._posteriors_size, self._num_fitted_annotations = self.num_items_before, self.num_annotations
    self._append(items, annotators, labels)
    fitted_before = self._full_fit_size
    num_iters = self._fit(items) if items.size else 0
    only_batch_items = self._full_fit_size == fitted_before  # a local step moved only those
    self._update_annotator_stats(items, annotators, labels, golden, index)
    changes_path = self.output_dir / "changes" / f"{index:06d}.csv"
    num_changed = self._write_changes(changes_path, old_posteriors, items, only_batch_items)
    self._write_annotators_csv(self.output_dir / "annotators.csv")
    # Segment and state first, commit record last (see the module docstring).
    _atomic_savez(
        self.checkpoint_dir / "segments" / f"{index:06d}.npz",
        items=items, annotators=annotators, labels=labels,
        new_item_ids=_str_array(self.item_ids[new_items_start:]),
        new_annotator_ids=_str_array(self.annotator_ids[new_annotators_start:]),
        annotation_ids=_str_array(kept_ids),
        guideline_versions=_str_array(self.guideline_versions[annotations_start:]),
        new_item_payloads=_str_array([json.dumps(p, ensure_ascii=False)
                                      for p in self.item_payloads[new_items_start:]]))
    state_file = self._state_file_name(index)
    self._save_state(self.checkpoint_dir / state_file)
    record = {"index": index, "name": path.name, "hash": content_hash, "num_read": num_read,
              "num_accepted": int(items.size), "num_rejected": len(rejects),
              "num_changed": num_changed, "num_iters": num_iters, "time": time.time()}
    self.batches.append(record)
    self.hashes[content_hash] = path.name
    self._commit(state_file)
    seconds = time.perf_counter() - start
    return BatchResult(index, path.name, content_hash, num_read=num_read,
                       num_accepted=int(items.size), num_rejected=len(rejects),
                       num_changed=num_changed, num_iters=num_iters, seconds=seconds,
                       read_seconds=read_seconds,
                       changes_path=str(changes_path),
                       rejects_path=str(rejects_path) if rejects else None)

  def labels(self) -> dict[str, Any]:
    """Current labels: item_ids, label (index), label_name, confidence, posteriors,
    num_annotations, each one row per item."""
    posteriors = self._current_posteriors()
    labels = np.argmax(posteriors, axis=-1) if self.num_items else np.zeros((0,), np.int64)
    confidence = posteriors[np.arange(self.num_items), labels] if self.num_items else labels
    counts = np.bincount(self._items, minlength=self.num_items)
    return {"item_ids": list(self.item_ids), "label": labels.astype(np.int32),
            "label_name": [self.class_names[int(x)] for x in labels],
            "confidence": confidence.astype(np.float64), "posteriors": posteriors,
            "num_annotations": counts}

  def write_labels(self, path: str | os.PathLike[str] | None = None) -> Path:
    """Writes labels.csv (item, label, confidence, num_annotations, p_<class>) atomically."""
    path = Path(path) if path is not None else self.output_dir / "labels.csv"
    current = self.labels()
    lines = [",".join(["item", "label", "confidence", "num_annotations",
                       *[f"p_{c}" for c in self.class_names]])]
    rows = _csv_rows([
        [item, name, _fmt(conf), str(int(n)), *(_fmt(p) for p in post)]
        for item, name, conf, n, post in zip(current["item_ids"], current["label_name"],
                                             current["confidence"], current["num_annotations"],
                                             current["posteriors"])])
    _atomic_write_bytes(path, ("\n".join(lines) + "\n" + rows).encode("utf-8"))
    return path

  def write_training(self, output_dir: str | os.PathLike[str] | None = None) -> Any:
    """Writes train.jsonl, awaiting_review.jsonl and train_rejects.jsonl
    (`feedback.write_training_file`) for a pairwise stream: every item is in exactly one.

    An item whose confidence is below `review_threshold` awaits review (label source
    "pending"); the others train with their current label, the posterior as soft target
    (vote shares for majority_vote) and the confidence as weight, with their lineage.
    Returns the `TrainingFileReport`.
    """
    if self.config.format == "crowd_csv":
      raise ValueError("a training file needs pairwise records (prompt, response_a, response_b).")
    enc = feedback.EncodedAnnotations(
        items=self._items, annotators=self._annotators, labels=self._labels,
        item_ids=tuple(self.item_ids), annotator_ids=tuple(self.annotator_ids),
        class_names=tuple(self.class_names), annotation_ids=tuple(self.annotation_order),
        guideline_versions=tuple(self.guideline_versions),
        item_payloads=tuple(self.item_payloads))
    current = self.labels()
    source = ["pending" if c < self.config.review_threshold else "crowd"
              for c in current["confidence"]]
    return feedback.write_training_file(
        Path(output_dir) if output_dir is not None else self.output_dir, enc,
        labels=current["label"], confidence=current["confidence"],
        soft_labels=current["posteriors"], label_source=source,
        lineage=feedback.item_lineage(enc))

  def annotator_rows(self) -> list[dict[str, Any]]:
    """Current annotator metrics, one dict per annotator (the rows of annotators.csv)."""
    rows = []
    reliability = self._reliability()
    for a, annotator in enumerate(self.annotator_ids):
      answered = int(self.answered[a])
      golden = int(self.golden_answered[a])
      rows.append({
          "annotator": annotator,
          "num_annotations": answered,
          "reliability": float(reliability[a]),
          "agreement_with_label": self.agree[a] / answered if answered else float("nan"),
          "golden_answered": golden,
          "golden_accuracy": self.golden_correct[a] / golden if golden else float("nan"),
          "cusum": float(self.cusum[a]),
          "drift_alarms": int(self.cusum_alarms[a]),
          "first_alarm_batch": int(self.first_alarm_batch[a]),
      })
    return rows

  # ---- reading a batch ------------------------------------------------------------------

  def _batch_bytes(self, batch, name: str | None) -> tuple[Path, bytes]:
    if isinstance(batch, (str, os.PathLike)):
      path = Path(batch)
      if not path.is_file():
        raise FileNotFoundError(f"batch file not found: {path}")
      return path, path.read_bytes()
    records = list(batch)
    if self.config.format == "crowd_csv":
      lines = ["question,worker,answer"]
      for r in records:
        lines.append(_csv_rows([[str(r.get("question", "")), str(r.get("worker", "")),
                                 str(r.get("answer", ""))]]).rstrip("\n"))
      data = ("\n".join(lines) + "\n").encode("utf-8")
      suffix = ".csv"
    elif self.config.format == "jsonl":
      data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                     for r in records).encode("utf-8")
      suffix = ".jsonl"
    else:
      raise ValueError(f"a list of records can be fed for formats jsonl and crowd_csv; "
                       f"format {self.config.format} takes file paths.")
    content_hash = ingest.fingerprint_bytes(data)
    path = self.checkpoint_dir / "inbox" / f"{name or 'batch-' + content_hash[:16]}{suffix}"
    if not path.exists() or path.read_bytes() != data:
      _atomic_write_bytes(path, data)
    return path, data

  def _read(self, path: Path, rejects_path: Path):
    """(ReadReport or None, rejects list, rows read) from `read_annotations`."""
    try:
      report = feedback.read_annotations(
          path, format=self.config.format, rejects_path=rejects_path,
          duplicate_policy=self.config.duplicate_policy, classes=self.config.classes)
    except feedback.FeedbackInputError as error:
      # No usable row (or an unreadable file): every row read is a reject; the file as a
      # whole is recorded as one reject when there were no rows to blame.
      rejects = _read_jsonl(rejects_path)
      if not rejects:
        rejects = [{"file": str(path), "line": None, "field": None, "reason": str(error),
                    "raw": None}]
      return None, rejects, len(rejects)
    return report, list(report.rejects), report.num_read

  def _encode(self, report, rejects: list[dict[str, Any]], path: Path):
    """Maps a batch to global indices, rejecting cross-batch repeats; grows the id tables."""
    empty = np.zeros((0,), np.int32)
    if report is None:
      return empty, empty, empty, [], None
    enc = report.annotations
    fields = (("question", "worker") if self.config.format == "crowd_csv"
              else ("item_id", "annotator_id"))
    keep = np.ones(enc.num_annotations, bool)
    batch_pairs: set[int] = set()
    item_of, annotator_of = {}, {}
    lines = _annotation_lines(enc.annotation_ids, path)
    for n in range(enc.num_annotations):
      annotation_id = enc.annotation_ids[n]
      item_id = enc.item_ids[enc.items[n]]
      annotator_id = enc.annotator_ids[enc.annotators[n]]
      item = self.item_index.get(item_id)
      annotator = self.annotator_index.get(annotator_id)
      reason = field = None
      if annotation_id in self.annotation_ids:
        field, reason = "annotation_id", f"annotation {annotation_id} was aggregated in an earlier batch"
      elif item is not None and annotator is not None and (
          item * 2**32 + annotator) in self.pairs:
        field = ",".join(fields)
        reason = (f"annotator {annotator_id} already labelled item {item_id} in an earlier "
                  "batch (the first answer is kept)")
      if reason is not None:
        keep[n] = False
        rejects.append({"file": str(path), "line": lines[n], "field": field, "reason": reason,
                        "raw": {"annotation_id": annotation_id, fields[0]: item_id,
                                fields[1]: annotator_id,
                                "label": enc.class_names[enc.labels[n]]}})
        continue
      if item is None:
        item = item_of.get(item_id)
      if item is None:
        item = len(self.item_ids)
        self.item_ids.append(item_id)
        self.item_index[item_id] = item
      if annotator is None:
        annotator = len(self.annotator_ids)
        self.annotator_ids.append(annotator_id)
        self.annotator_index[annotator_id] = annotator
      item_of[item_id], annotator_of[annotator_id] = item, annotator
      batch_pairs.add(item * 2**32 + annotator)
    kept = np.flatnonzero(keep)
    items = np.asarray([self.item_index[enc.item_ids[enc.items[n]]] for n in kept], np.int32)
    annotators = np.asarray(
        [self.annotator_index[enc.annotator_ids[enc.annotators[n]]] for n in kept], np.int32)
    # Class indices: the batch's class names map onto the stream's.
    class_map = np.asarray([self.class_names.index(c) if c in self.class_names else -1
                            for c in enc.class_names], np.int32)
    labels = class_map[enc.labels[kept]].astype(np.int32)
    if np.any(labels < 0):  # cannot happen with declared classes; kept as a guard
      raise ValueError(f"{path}: a class outside {self.class_names} reached the stream.")
    kept_ids = [enc.annotation_ids[n] for n in kept]
    self.annotation_ids.update(kept_ids)
    self.annotation_order.extend(kept_ids)
    versions = enc.guideline_versions
    self.guideline_versions.extend((versions[n] or "") if versions is not None else ""
                                   for n in kept)
    batch_item = {item_id: j for j, item_id in enumerate(enc.item_ids)}
    for item_id in self.item_ids[len(self.item_payloads):]:
      payload = enc.item_payloads[batch_item[item_id]] if enc.item_payloads is not None else None
      self.item_payloads.append(dict(payload or {}))
    self.pairs.update(batch_pairs)
    golden = None
    if enc.is_golden is not None and enc.golden_labels is not None:
      golden_labels = enc.golden_labels[kept]
      mapped = np.where(golden_labels >= 0, class_map[np.maximum(golden_labels, 0)], -1)
      golden = np.where(enc.is_golden[kept], mapped, -1).astype(np.int32)
    return items, annotators, labels, kept_ids, golden

  # ---- the fit --------------------------------------------------------------------------

  def _append(self, items, annotators, labels) -> None:
    start = self.num_annotations
    self._items = np.concatenate([self._items, items])
    self._annotators = np.concatenate([self._annotators, annotators])
    self._labels = np.concatenate([self._labels, labels])
    self._head = _grow(self._head, self.num_items, -1)
    self._prev = _grow(self._prev, self.num_annotations, -1)
    head, prev = self._head, self._prev
    for position, item in enumerate(items.tolist(), start):
      prev[position] = head[item]
      head[item] = position
    k = self.num_classes
    self.posteriors = _grow(self.posteriors, self.num_items, 1.0 / k)
    self.votes = _grow(self.votes, self.num_items)
    if items.size:
      np.add.at(self.votes, (items, labels), 1.0)
    a = self.num_annotators
    self.confusion_counts = _grow(self.confusion_counts, a)
    self.label_counts = _grow(self.label_counts, a)
    np.add.at(self.label_counts, (annotators, labels), 1)
    for name in ("agree", "answered", "cusum_alarms", "golden_answered", "golden_correct"):
      setattr(self, name, _grow(getattr(self, name), a))
    self.cusum = _grow(self.cusum, a)
    self.first_alarm_batch = _grow(self.first_alarm_batch, a, -1)

  def _rebuild_chains(self) -> None:
    """`_head` and `_prev` from the annotation arrays (after a restore)."""
    n = self.num_annotations
    order = np.lexsort((np.arange(n), self._items))
    sorted_items = self._items[order]
    same = np.zeros((n,), bool)
    same[1:] = sorted_items[1:] == sorted_items[:-1]
    self._prev = np.full((n,), -1, np.int64)
    self._prev[order[1:][same[1:]]] = order[:-1][same[1:]]
    self._head = np.full((self.num_items,), -1, np.int64)
    self._head[sorted_items] = order  # the last write per item is its latest annotation

  @property
  def confusion(self) -> np.ndarray:
    """[A, K, K] P(answer l | true class k) per annotator (the M-step of the statistics)."""
    return np.exp(self._log_confusion()) if self.num_annotators else self.confusion_counts

  @property
  def class_prior(self) -> np.ndarray:
    return np.exp(self._log_prior())

  def _fit(self, new_items: np.ndarray, *, full: bool | None = None) -> int:
    """Updates the model after `new_items` arrived; returns the EM iterations run.

    A full EM over every annotation (warm-started after the first) runs on the first batch, whenever the
    annotations grew by `refit_growth` since the last full fit, or when `full` is true;
    otherwise `local_iters` incremental EM steps on the batch's items (see `_local_em`).
    """
    if self.config.method == "majority_vote":
      return 0
    grown = self.num_annotations >= (1.0 + self.config.refit_growth) * self._full_fit_size
    if full is None:
      full = not self._has_fit or grown
    if full:
      # Between batches a warm full fit is capped (latency); converge() runs to `tol`.
      return self._full_em(self.config.num_iters if not self._has_fit
                           else min(self.config.refit_iters, self.config.num_iters))
    return self._local_em(np.unique(new_items))

  def converge(self, *, warm: bool = False) -> int:
    """Runs EM over every annotation until no posterior moves by `tol`, commits the
    checkpoint, and returns the iterations; `follow` calls it whenever the folder has no
    unread batch left, before writing labels.csv.

    By default from the vote shares, which is exactly `feedback.dawid_skene` on all
    annotations at once. EM finds a local optimum, and the warm start (`warm=True`,
    usually far fewer iterations) can end in another one where the likelihood has
    several (spammers and adversaries on little data do that; the tests measure how
    often labels then differ).
    """
    if self.config.method == "majority_vote" or not self.num_annotations:
      return 0
    if not warm:
      self._has_fit = False
    iters = self._full_em()
    self._save_state(self.checkpoint_dir / self._state_file_name(self.num_batches - 1))
    self._commit(self._state_file_name(self.num_batches - 1))
    return iters

  def _full_em(self, num_iters: int | None = None) -> int:
    """Dawid-Skene EM on every annotation (jitted, padded to power-of-two capacities),
    at most `num_iters` iterations (default `config.num_iters`)."""
    k = self.num_classes
    n, num_items, num_annotators = self.num_annotations, self.num_items, self.num_annotators
    n_cap, i_cap, a_cap = _capacity(n), _capacity(num_items), _capacity(num_annotators)

    def padded(x, size):
      out = np.zeros((size,), np.int32)
      out[:x.shape[0]] = x
      return out

    weight = np.zeros((n_cap,), np.float32)
    weight[:n] = 1.0
    init_log_confusion = np.zeros((a_cap, k, k), np.float32)
    init_log_confusion[:num_annotators] = self._log_confusion()
    init_log_prior = self._log_prior().astype(np.float32)
    outputs = _fit_dawid_skene(
        padded(self._items, n_cap), padded(self._annotators, n_cap), padded(self._labels, n_cap),
        weight, init_log_confusion, init_log_prior, np.float32(self.config.smoothing),
        np.float32(self.config.tol), num_items=i_cap, num_classes=k,
        num_iters=num_iters or self.config.num_iters, warm=self._has_fit,
        one_coin=self.config.method == "one_coin_dawid_skene")
    posteriors, _, _, counts, class_counts, iters = jax.device_get(outputs)
    self.posteriors = np.array(posteriors[:num_items], np.float32)  # a writable copy
    self.confusion_counts = np.asarray(counts[:num_annotators], np.float64)
    self.class_counts = np.asarray(class_counts, np.float64)
    self._has_fit = True
    self._full_fit_size = n
    return int(iters)

  def _log_confusion(self) -> np.ndarray:
    """M-step from the sufficient statistics: log confusion [A, K, K] (floors as
    `feedback.dawid_skene`: 1e-10, and 1e-30 for labels the annotator never gave)."""
    if self.config.method == "one_coin_dawid_skene":
      correct = np.trace(self.confusion_counts, axis1=1, axis2=2)
      wrong = self.confusion_counts.sum((1, 2)) - correct
      return _one_coin_log_confusion(correct, np.maximum(wrong, 0.0), self.config.smoothing,
                                     self.num_classes, xp=np)
    floor = np.where(self.label_counts[:, None, :] > 0, _PROB_FLOOR, _UNUSED_LABEL_FLOOR)
    floored = np.maximum(self.confusion_counts + self.config.smoothing, floor)
    return np.log(floored) - np.log(floored.sum(-1, keepdims=True))

  def _log_prior(self) -> np.ndarray:
    floored = np.maximum(self.class_counts, _PROB_FLOOR)
    return np.log(floored) - np.log(floored.sum())

  def _item_annotations(self, items: np.ndarray) -> np.ndarray:
    """Positions of every annotation of `items` (walking the per-item chains)."""
    out = []
    frontier = self._head[items]
    frontier = frontier[frontier >= 0]
    while frontier.size:
      out.append(frontier)
      frontier = self._prev[frontier]
      frontier = frontier[frontier >= 0]
    return np.concatenate(out) if out else np.zeros((0,), np.int64)

  def _add_counts(self, positions: np.ndarray, item_posteriors: np.ndarray, sign: float) -> None:
    """counts[a_n, k, y_n] += sign * q[item_n, k] over `positions`."""
    a, y = self._annotators[positions], self._labels[positions]
    for k in range(self.num_classes):
      np.add.at(self.confusion_counts[:, k, :], (a, y), sign * item_posteriors[:, k])

  def _local_em(self, touched: np.ndarray) -> int:
    """Incremental EM (Neal & Hinton 1998, "A view of the EM algorithm that justifies
    incremental, sparse, and other variants"): E-steps on the batch's items only.

    The sufficient statistics are sums over items, so an item's share can be replaced:
    remove the touched items' contributions (counts[a, k, l] -= q_old[i, k] over their
    annotations, class counts -= q_old[i]), then `local_iters` times: E-step of the
    touched items with the parameters of (the other items' statistics + theirs), and
    M-step. Each step does not decrease the EM objective; cost O(batch), not O(N).
    """
    positions = self._item_annotations(touched)
    num_old = self._posteriors_size
    old_positions = positions[positions < self._num_fitted_annotations]
    old_items_of = self._items[old_positions]
    if old_positions.size:
      self._add_counts(old_positions, self.posteriors[old_items_of].astype(np.float64), -1.0)
    was_annotated = touched[touched < num_old]  # an item exists once it has an annotation
    self.class_counts -= self.posteriors[was_annotated].astype(np.float64).sum(0)
    local = np.searchsorted(touched, self._items[positions])
    posteriors = None
    for _ in range(self.config.local_iters):
      if posteriors is not None:
        self._add_counts(positions, posteriors[local], -1.0)
        self.class_counts -= posteriors.sum(0)
      log_confusion = self._log_confusion()
      log_joint = np.tile(self._log_prior(), (touched.size, 1))
      np.add.at(log_joint, local, log_confusion[self._annotators[positions], :,
                                               self._labels[positions]])
      log_joint -= log_joint.max(-1, keepdims=True)
      posteriors = np.exp(log_joint)
      posteriors /= posteriors.sum(-1, keepdims=True)
      self._add_counts(positions, posteriors[local], 1.0)
      self.class_counts += posteriors.sum(0)
    self.posteriors[touched] = posteriors.astype(np.float32)
    return self.config.local_iters

  def _current_posteriors(self) -> np.ndarray:
    if self.config.method == "majority_vote":
      total = self.votes.sum(-1, keepdims=True)
      k = self.num_classes
      return np.where(total > 0, self.votes / np.maximum(total, 1.0), 1.0 / k).astype(np.float32)
    return self.posteriors

  def _reliability(self) -> np.ndarray:
    if self.config.method == "majority_vote":
      return np.where(self.answered > 0, self.agree / np.maximum(self.answered, 1), np.nan)
    diagonal = np.diagonal(self.confusion, axis1=1, axis2=2)
    return np.clip(diagonal @ self.class_prior, 0.0, 1.0)

  def _update_annotator_stats(self, items, annotators, labels, golden, index: int) -> None:
    """Agreement with the label after this batch, CUSUM on it, golden accuracy."""
    if not items.size:
      return
    current = np.argmax(self._current_posteriors()[items], axis=-1)
    agree = labels == current
    np.add.at(self.agree, annotators, agree.astype(np.int64))
    np.add.at(self.answered, annotators, 1)
    if golden is not None:
      has = golden >= 0
      np.add.at(self.golden_answered, annotators[has], 1)
      np.add.at(self.golden_correct, annotators[has], (labels[has] == golden[has]).astype(np.int64))
    p0, p1, h = self.config.cusum_p0, self.config.cusum_p1, self.config.cusum_threshold
    up, down = np.log(p1 / p0), np.log((1 - p1) / (1 - p0))
    for a, x in zip(annotators.tolist(), agree.tolist()):
      s = max(0.0, self.cusum[a] + (up if x else down))
      if s >= h:
        self.cusum_alarms[a] += 1
        if self.first_alarm_batch[a] < 0:
          self.first_alarm_batch[a] = index
        s = 0.0
      self.cusum[a] = s

  # ---- outputs --------------------------------------------------------------------------

  def _write_changes(self, path: Path, old_posteriors: np.ndarray, items: np.ndarray,
                     only_batch_items: bool) -> int:
    """Writes the items that are new or whose label or confidence moved; returns their count."""
    posteriors = self._current_posteriors()
    num_old = old_posteriors.shape[0]
    if self.config.method == "majority_vote" or only_batch_items:
      candidates = np.unique(items)  # votes and local EM steps move only the batch's items
    else:
      candidates = np.arange(self.num_items)
    labels = np.argmax(posteriors, axis=-1)
    confidence = posteriors[np.arange(self.num_items), labels]
    is_new = candidates >= num_old
    old_post = old_posteriors[np.minimum(candidates, max(num_old - 1, 0))] if num_old else (
        np.full((len(candidates), self.num_classes), 1.0 / self.num_classes))
    old_labels = np.argmax(old_post, axis=-1)
    old_conf = old_post[np.arange(len(candidates)), old_labels]
    changed = is_new | (old_labels != labels[candidates]) | (
        np.abs(old_conf - confidence[candidates]) >= self.config.change_threshold)
    counts = np.bincount(self._items, minlength=self.num_items)
    rows = []
    for j in np.flatnonzero(changed):
      i = int(candidates[j])
      rows.append([self.item_ids[i], self.class_names[int(labels[i])], _fmt(confidence[i]),
                   "" if is_new[j] else self.class_names[int(old_labels[j])],
                   "" if is_new[j] else _fmt(old_conf[j]), str(int(counts[i])),
                   *(_fmt(p) for p in posteriors[i])])
    header = ",".join(["item", "label", "confidence", "previous_label", "previous_confidence",
                       "num_annotations", *[f"p_{c}" for c in self.class_names]])
    _atomic_write_bytes(path, (header + "\n" + _csv_rows(rows)).encode("utf-8"))
    return len(rows)

  def _write_annotators_csv(self, path: Path) -> None:
    rows = self.annotator_rows()
    columns = ["annotator", "num_annotations", "reliability", "agreement_with_label",
               "golden_answered", "golden_accuracy", "cusum", "drift_alarms",
               "first_alarm_batch"]
    body = _csv_rows([[str(r[c]) if isinstance(r[c], (str, int)) else _fmt(r[c])
                       for c in columns] for r in rows])
    _atomic_write_bytes(path, (",".join(columns) + "\n" + body).encode("utf-8"))

  # ---- checkpoint -----------------------------------------------------------------------

  @staticmethod
  def _state_file_name(index: int | None = None) -> str:
    return f"state-{index:06d}.npz" if index is not None else ""

  def _save_state(self, path: Path) -> None:
    _atomic_savez(
        path, posteriors=self.posteriors, votes=self.votes, confusion=self.confusion,
        confusion_counts=self.confusion_counts, class_prior=self.class_prior,
        class_counts=self.class_counts, full_fit_size=np.asarray(self._full_fit_size), agree=self.agree, answered=self.answered,
        cusum=self.cusum, cusum_alarms=self.cusum_alarms,
        first_alarm_batch=self.first_alarm_batch, golden_answered=self.golden_answered,
        golden_correct=self.golden_correct, has_fit=np.asarray(self._has_fit))

  def _commit(self, state_file: str) -> None:
    previous = self._committed_state_file()
    if not state_file:
      state_file = previous or ""
    record = {
        "version": _CHECKPOINT_VERSION,
        "config": self.config.to_json(),
        "num_batches": self.num_batches,
        "num_annotations": self.num_annotations,
        "num_items": self.num_items,
        "num_annotators": self.num_annotators,
        "state_file": state_file,
        "batches": self.batches,
        "skipped": self.skipped,
    }
    _atomic_write_bytes(self.checkpoint_dir / "state.json",
                        json.dumps(record, indent=1).encode("utf-8"), sync=self.config.fsync)
    self._state_file = state_file
    if previous and previous != state_file:
      (self.checkpoint_dir / previous).unlink(missing_ok=True)

  def _committed_state_file(self) -> str | None:
    return getattr(self, "_state_file", None)

  def _restore(self) -> None:
    record = json.loads((self.checkpoint_dir / "state.json").read_text(encoding="utf-8"))
    stored = record["config"]
    if stored != self.config.to_json():
      differing = sorted(k for k in set(stored) | set(self.config.to_json())
                         if stored.get(k) != self.config.to_json().get(k))
      raise ValueError(
          f"{self.checkpoint_dir / 'state.json'}: the checkpoint was made with other settings "
          f"({', '.join(f'{k}={stored.get(k)!r}' for k in differing)}); use a new output "
          "directory or the same settings.")
    self.batches = record["batches"]
    self.skipped = record["skipped"]
    self.hashes = {b["hash"]: b["name"] for b in self.batches}
    items, annotators, labels = [], [], []
    for b in range(record["num_batches"]):
      segment = _load_npz(self.checkpoint_dir / "segments" / f"{b:06d}.npz")
      for item_id in segment["new_item_ids"].tolist():
        self.item_index[item_id] = len(self.item_ids)
        self.item_ids.append(item_id)
      for annotator_id in segment["new_annotator_ids"].tolist():
        self.annotator_index[annotator_id] = len(self.annotator_ids)
        self.annotator_ids.append(annotator_id)
      self.annotation_ids.update(segment["annotation_ids"].tolist())
      self.annotation_order.extend(segment["annotation_ids"].tolist())
      self.guideline_versions.extend(segment["guideline_versions"].tolist())
      self.item_payloads.extend(json.loads(p) for p in segment["new_item_payloads"].tolist())
      items.append(segment["items"])
      annotators.append(segment["annotators"])
      labels.append(segment["labels"])
    if items:
      self._items = np.concatenate(items).astype(np.int32)
      self._annotators = np.concatenate(annotators).astype(np.int32)
      self._labels = np.concatenate(labels).astype(np.int32)
    self.pairs = set((self._items.astype(np.int64) * 2**32 + self._annotators).tolist())
    self.label_counts = np.zeros((len(self.annotator_ids), self.num_classes), np.int64)
    np.add.at(self.label_counts, (self._annotators, self._labels), 1)
    if record["state_file"]:
      state = _load_npz(self.checkpoint_dir / record["state_file"])
      for name in ("posteriors", "votes", "confusion_counts", "class_counts", "agree", "answered", "cusum", "cusum_alarms",
                   "first_alarm_batch", "golden_answered", "golden_correct"):
        setattr(self, name, state[name])
      self._has_fit = bool(state["has_fit"])
      self._full_fit_size = int(state["full_fit_size"])
    self._rebuild_chains()
    self._state_file = record["state_file"]
    if (len(self.item_ids) != record["num_items"] or self.num_annotations != record["num_annotations"]
        or self.posteriors.shape[0] != self.num_items):
      raise ValueError(f"{self.checkpoint_dir}: segments and state disagree (items "
                       f"{len(self.item_ids)} vs {record['num_items']}, annotations "
                       f"{self.num_annotations} vs {record['num_annotations']}).")


def _csv_rows(rows: Iterable[Sequence[str]]) -> str:
  """CSV text of `rows` (quoting as the csv module does), each line ending in \\n."""
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerows(rows)
  return buffer.getvalue()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _annotation_lines(annotation_ids: Sequence[str], path: Path) -> list[Any]:
  """The line of each annotation when its id is the reader's default FILE:LINE, else None."""
  prefix = f"{path.name}:"
  out = []
  for annotation_id in annotation_ids:
    if annotation_id.startswith(prefix) and annotation_id[len(prefix):].isdigit():
      out.append(int(annotation_id[len(prefix):]))
    else:
      out.append(None)
  return out


# ----------------------------------------------------------------------------------------
# Following a folder.


def _batch_files(directory: Path, fmt: str) -> list[Path]:
  """Complete batch files in `directory`, oldest first (hidden, .tmp and .part skipped)."""
  suffixes = _SUFFIXES[fmt]
  files = []
  for p in directory.iterdir():
    if (p.name.startswith(".") or p.name.endswith((".tmp", ".part"))
        or not p.name.endswith(suffixes)):
      continue
    try:
      if p.is_file():
        files.append((p.stat().st_mtime_ns, p.name, p))
    except OSError:
      continue  # vanished between the listing and the stat
  return [p for _, _, p in sorted(files)]


def follow(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str],
           config: StreamConfig, *, poll_seconds: float = 2.0,
           idle_exit_seconds: float | None = None,
           on_batch: Callable[[BatchResult], None] | None = None) -> StreamingAggregator:
  """Aggregates every batch file that appears in `input_dir`, until killed.

  Files are taken oldest first (modification time, then name); a writer should create a
  file under a hidden or `.tmp`/`.part` name and rename it when complete. After each
  batch the changes, rejects and annotators.csv are written and the checkpoint committed;
  whenever no unread file is left, labels.csv is rewritten. Restarting with the same
  directories resumes from the checkpoint. `idle_exit_seconds`: return once nothing new
  arrived for that long (None: run until killed).
  """
  input_dir = Path(input_dir)
  if not input_dir.is_dir():
    raise FileNotFoundError(f"--follow directory not found: {input_dir}")
  aggregator = StreamingAggregator(output_dir, config)
  seen: dict[str, tuple[int, int]] = {}  # name -> (size, mtime) already handled
  last_activity = time.monotonic()
  labels_current = False
  while True:
    fed = False
    for path in _batch_files(input_dir, config.format):
      try:
        stat = path.stat()
        signature = (stat.st_size, stat.st_mtime_ns)
        if seen.get(path.name) == signature:
          continue
        with open(path, "rb"):
          pass
      except OSError:
        continue  # moved away or unreadable right now: looked at again on the next scan
      result = aggregator.feed(path)  # an error while writing outputs stops the job
      seen[path.name] = signature
      fed = True
      labels_current = False
      if on_batch is not None:
        on_batch(result)
    if fed:
      last_activity = time.monotonic()
    if not labels_current and aggregator.num_batches:
      aggregator.converge()  # idle: run EM to convergence before writing every label
      aggregator.write_labels()
      if config.format != "crowd_csv":
        aggregator.write_training()
      labels_current = True
    if idle_exit_seconds is not None and time.monotonic() - last_activity >= idle_exit_seconds:
      return aggregator
    time.sleep(poll_seconds)


def describe(result: BatchResult) -> str:
  """One line per batch for the log of `follow`."""
  if result.skipped:
    return f"{result.name}: duplicate of {result.duplicate_of} (same content hash), skipped"
  return (f"batch {result.index} {result.name}: {result.num_accepted} accepted, "
          f"{result.num_rejected} rejected, {result.num_changed} labels changed, "
          f"{result.num_iters} EM iterations, {result.seconds * 1e3:.0f} ms")


def config_from_aggregate(config: Any) -> StreamConfig:
  """The `StreamConfig` of a `configs/aggregate.py` ConfigDict (format, method, classes,
  num_iters, tol, smoothing, duplicate_policy)."""
  classes = tuple(c.strip() for c in str(config.classes).split(",") if c.strip()) or None
  if config.get("stop_on", "posteriors") != "posteriors":
    raise ValueError(f"config.stop_on = {config.stop_on!r}: the streaming aggregator (--follow) stops EM on the "
                     "posteriors only (its warm starts begin near the optimum, where the objective's gain "
                     "says little); leave stop_on at 'posteriors'.")
  return StreamConfig(format=config.format, method=config.method, classes=classes,
                      num_iters=int(config.num_iters), tol=float(config.tol),
                      smoothing=float(config.smoothing),
                      duplicate_policy=config.duplicate_policy,
                      review_threshold=float(config.routing.confidence_threshold))


def run_follow(config: Any, input_dir: str, *, poll_seconds: float = 2.0,
               idle_exit_seconds: float | None = None, log: Callable[[str], None] = print
               ) -> StreamingAggregator:
  """`scripts/aggregate.py --follow=DIR`: `follow` with the aggregate config's settings."""
  if not config.output_dir:
    raise ValueError("--config.output_dir is required with --follow (it holds the checkpoint).")
  stream_config = config_from_aggregate(config)
  if not Path(input_dir).is_dir():
    raise FileNotFoundError(f"--follow directory not found: {input_dir}")
  log(f"following {input_dir} ({stream_config.format}, {stream_config.method}); state and "
      f"outputs in {config.output_dir}")
  aggregator = follow(input_dir, config.output_dir, stream_config, poll_seconds=poll_seconds,
                      idle_exit_seconds=idle_exit_seconds,
                      on_batch=lambda result: log(describe(result)))
  log(f"{aggregator.num_batches} batches, {aggregator.num_annotations} annotations, "
      f"{aggregator.num_items} items; labels in {Path(config.output_dir) / 'labels.csv'}")
  return aggregator
