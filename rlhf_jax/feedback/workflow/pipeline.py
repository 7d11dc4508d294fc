"""The aggregation pipeline behind `scripts/aggregate.py`: one file of annotations in,
labels with a confidence, annotator metrics, rejects and a report out.

`run(config)` takes the `ml_collections.ConfigDict` of `configs/aggregate.py` and

1. reads and validates the annotations (`records.read_annotations`; rejects to
   `rejects.jsonl`, accepted + rejected = read). With declared classes
   (`config.classes`) an answer outside them is a reject; without, a class seen in
   fewer than `config.rare_class_share` of the answers is reported first in the report
   as a probable typo, and a pairwise schema class no one chose (a task without ties)
   is not a class of the task;
2. measures agreement (percent agreement, Fleiss' kappa, Krippendorff's alpha) and
   per-annotator calibration (golden accuracy, expert agreement, temporal consistency,
   median response time, the weight of `annotators.annotator_weights`);
3. aggregates with the method named in the config (`METHODS`), each a jitted function of
   the flat arrays; `crowd_bt` scores the responses of arena-style comparisons and turns
   the scores into per-comparison posteriors;
4. routes low-confidence (or low-agreement) items to expert review and merges expert
   labels when given (`routing.route_items`, `routing.resolve_expert_reviews`). The
   confidence is the one labels.csv shows: the posterior of the label for the models,
   the share of the item's (weighted) votes that agree with the label for the votes;
5. tests every annotator for drift when annotations carry timestamps: a change-point
   test on agreement with the reference answers (golden answer, else expert label,
   else the aggregated label) separates annotators who were good and became bad from
   annotators who were always bad (`drift.change_point_test`, `drift.classify_drift`);
   with the truth about simulated annotators (`config.annotator_truth`) the report
   states the detection rate and delay. The Bernoulli CUSUM on golden correctness and
   Page-Hinkley on leave-one-out agreement run as level monitors beside it;
6. scores the labels against gold labels when a truth file is given or found;
7. writes `labels.csv`, `annotators.csv`, `report.md` with its PNG plots and
   `summary.json` (the numbers of report.md, for machines), through `report`; for a
   pairwise preference task also the training file of the resolved labels
   (`train.jsonl`, with `awaiting_review.jsonl` and `train_rejects.jsonl` beside it,
   every item in exactly one; `io.training.write_training_file`). The soft target is
   the posterior of a model, the vote shares of a vote, an expert's row where one
   decided.

A user mistake (bad config value, missing or unusable file) raises `ConfigError`,
`records.FeedbackInputError` or `FileNotFoundError` with a message that names the field
or file; `USER_ERRORS` lists them for the command line to catch.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.feedback import types
from rlhf_jax.feedback.io import records
from rlhf_jax.feedback.io import training as training_lib
from rlhf_jax.feedback.metrics import agreement
from rlhf_jax.feedback.metrics import calibration as annotators_lib
from rlhf_jax.feedback.metrics import drift as drift_lib
from rlhf_jax.feedback.models import dawid_skene as dawid_skene_lib
from rlhf_jax.feedback.models import voting
from rlhf_jax.feedback.models.registry import AGGREGATION_METHODS
from rlhf_jax.feedback.workflow import report, routing

__all__ = [
    "METHODS",
    "PROGRESS_MODES",
    "USER_ERRORS",
    "VOTING_METHODS",
    "WEIGHT_SOURCES",
    "AggregateOutputs",
    "ConfigError",
    "declared_classes",
    "run",
    "validate_config",
]

VOTING_METHODS = ("majority_vote", "weighted_vote", "wawa", "zero_based_skill")
# Every class-level method of the registry the pipeline can feed (gold_majority_vote needs
# gold labels for every item, which a campaign does not have), and Crowd-BT for pairs.
METHODS = tuple(name for name in AGGREGATION_METHODS.names() if name != "gold_majority_vote") + ("crowd_bt",)
PAIRWISE_FORMATS = ("jsonl", "csv", "parquet")
PROGRESS_MODES = ("auto", "on", "off")
WEIGHT_SOURCES = ("auto", "calibration", "reliability")
CROWD_BT_TIES = ("split", "drop")
# `progress="auto"` shows a bar for input files at least this large (~100k JSONL records).
AUTO_PROGRESS_BYTES = 8 * 2**20


class ConfigError(ValueError):
  """A config value the pipeline cannot use; the message names the field and what is valid."""


USER_ERRORS = (ConfigError, records.FeedbackInputError, FileNotFoundError, IsADirectoryError,
               PermissionError)


@dataclasses.dataclass(frozen=True)
class AggregateOutputs:
  """What `run` produced.

  Attributes:
    output_dir: where the files are.
    summary: the numbers of report.md (also written to summary.json): counts, agreement,
      label counts, expert-review counts, accuracy, drift, timings, file list.
    read_report: the `records.ReadReport` of the input.
    result: the method's `AggregationResult` (NumPy arrays), before expert labels.
    labels: [I] int final labels (expert labels merged in).
    confidence: [I] float final confidence.
    expert_review: [I] bool, routed to expert review.
    label_source: [I] str "crowd" | "expert" | "pending".
    annotator_rows: the rows of annotators.csv.
    training: where every item went in train.jsonl / awaiting_review.jsonl /
      train_rejects.jsonl (`io.training`), or None when the task is not a pairwise
      preference (the summary's "training" says why).
  """

  output_dir: Path
  summary: dict[str, Any]
  read_report: records.ReadReport
  result: types.AggregationResult
  labels: np.ndarray
  confidence: np.ndarray
  expert_review: np.ndarray
  label_source: list[str]
  annotator_rows: list[dict[str, Any]]
  training: training_lib.TrainingFileReport | None = None

  def summary_text(self) -> str:
    """A few lines for the terminal."""
    s = self.summary
    agreement_text = ", ".join(
        f"{label} {format(s['agreement'][k], '.3f') if s['agreement'][k] is not None else 'undefined'}"
        for k, label in (("percent_agreement", "percent"), ("fleiss_kappa", "Fleiss' kappa"),
                         ("krippendorff_alpha", "Krippendorff's alpha")))
    lines = [f"Warning: {warning}" for warning in s.get("warnings", [])]
    lines += [
        f"Read {s['num_read']} records from {s['input']} ({s['format']}): {s['num_accepted']} "
        f"accepted, {s['num_rejected']} rejected (rejects.jsonl).",
        f"{s['num_items']} items, {s['num_annotators']} annotator"
        f"{'' if s['num_annotators'] == 1 else 's'}, {s['num_classes']} classes "
        f"({', '.join(map(str, s['class_names']))}).",
        f"Agreement: {agreement_text}.",
        f"{s['method']}"
        + (f" ({s['num_iters']} iterations)" if s.get("num_iters") is not None else "")
        + ": " + ", ".join(f"{k}: {v}" for k, v in s["label_counts"].items())
        + f"; mean confidence {s['mean_confidence']:.3f}.",
        f"Expert review: {s['num_expert_review']} of {s['num_items']} items ({s['routing_rule']}); "
        f"{s['num_expert_resolved']} expert-labelled, {s['num_pending']} pending.",
    ]
    training = s.get("training", {})
    if training.get("written"):
      lines.append(
          f"Training file {training_lib.TRAIN_FILE}: {training['num_trained']} items "
          f"({training['num_expert']} expert-labelled); {training['num_awaiting']} awaiting review "
          f"({training_lib.AWAITING_FILE}); {training['num_rejected']} rejected "
          f"({training_lib.TRAIN_REJECTS_FILE}).")
    elif training:
      lines.append(f"Training file: not written ({training['reason']}).")
    if s.get("accuracy") is not None:
      lines.append(f"Accuracy {s['accuracy']:.4f} on {s['num_truth_items']} items with a gold "
                   f"label ({s['truth']}).")
    drift = s["drift"]
    if drift["measured"]:
      drifted = ", ".join(d["annotator"] for d in drift["drift_annotators"][:5])
      lines.append(
          f"Drift (change-point test, alpha {drift['alpha']:g}): {drift['num_drift']} of "
          f"{drift['num_tested']} tested annotators drifted" + (f" ({drifted}"
          f"{', ...' if drift['num_drift'] > 5 else ''})" if drifted else "")
          + f"; {drift['num_always_bad']} were always bad (not drift).")
      truth = drift.get("truth")
      if truth is not None and truth["num_drifting"]:
        delay = ("" if truth["median_delay_annotations"] is None else
                 f", median delay {truth['median_delay_annotations']:g} annotations "
                 f"({truth['median_delay_days']:.1f} days)")
        lines.append(
            f"Against the annotator truth: {truth['num_found']} of {truth['num_drifting']} "
            f"drifting annotators found{delay}; {len(truth['false_alarms'])} drift "
            f"verdict{'' if len(truth['false_alarms']) == 1 else 's'} on the "
            f"{truth['num_not_drifting']} that did not drift.")
    else:
      lines.append(f"Drift: not measured ({drift['note']})")
    for note in s.get("notes", []):
      lines.append(f"Note: {note}")
    lines.append(f"Wrote {', '.join(s['files'])} to {self.output_dir} in "
                 f"{sum(s['seconds'].values()):.1f} s.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Config validation.


def _get(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part] if isinstance(node, Mapping) or hasattr(node, "keys") else getattr(node, part)
  return node


def _fail(field: str, value: Any, expected: str) -> None:
  raise ConfigError(f"config.{field} = {value!r} is not valid: expected {expected}.")


def _choice(config: Any, field: str, choices: tuple[str, ...]) -> str:
  value = _get(config, field)
  if value not in choices:
    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.6) if isinstance(value, str) else []
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    _fail(field, value, "one of " + ", ".join(choices) + hint)
  return value


def _number(config: Any, field: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, integer: bool = False) -> Any:
  value = _get(config, field)
  kind = "an integer" if integer else "a number"
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    _fail(field, value, kind)
  if integer and int(value) != value:
    _fail(field, value, kind)
  if not math.isfinite(float(value)):
    _fail(field, value, f"a finite {kind[2:] if kind.startswith('a ') else kind}")
  bad_low = low is not None and (value < low or (low_open and value == low))
  bad_high = high is not None and (value > high or (high_open and value == high))
  if bad_low or bad_high:
    left = "-inf" if low is None else f"{low}"
    right = "inf" if high is None else f"{high}"
    _fail(field, value, f"{kind} in {'(' if low_open or low is None else '['}{left}, {right}"
          f"{')' if high_open or high is None else ']'}")
  return int(value) if integer else float(value)


def validate_config(config: Any) -> None:
  """Checks every field `run` uses; raises `ConfigError` naming the first bad one."""
  for field in ("input", "output_dir"):
    value = _get(config, field)
    if not isinstance(value, str) or not value.strip():
      _fail(field, value, "a path (this field is required: --config."
            f"{field}=PATH)")
  _choice(config, "format", records.FORMATS)
  method = _choice(config, "method", METHODS)
  if method == "crowd_bt" and _get(config, "format") not in PAIRWISE_FORMATS:
    _fail("method", method, "a class-level method: crowd_bt needs pairwise comparisons "
          f"(format one of {', '.join(PAIRWISE_FORMATS)}), not format "
          f"{_get(config, 'format')!r}")
  for field in ("truth", "expert_labels", "annotator_truth"):
    if not isinstance(_get(config, field), str):
      _fail(field, _get(config, field), 'a path or ""')
  declared_classes(config)
  _number(config, "rare_class_share", low=0.0, high=1.0)
  _choice(config, "duplicate_policy", records.DUPLICATE_POLICIES)
  _number(config, "num_iters", low=1, integer=True)
  _number(config, "tol", low=0.0)
  _choice(config, "stop_on", dawid_skene_lib.STOP_RULES)
  _number(config, "seed", low=0, integer=True)
  _choice(config, "tie_break", voting.TIE_BREAKS)
  _number(config, "smoothing", low=0.0)
  _choice(config, "bayesian.method", dawid_skene_lib.BAYESIAN_METHODS)
  for field in ("bayesian.prior_correct", "bayesian.prior_incorrect", "bayesian.prior_class"):
    _number(config, field, low=0.0, low_open=True)
  _choice(config, "mace.method", ("vb", "em"))
  _number(config, "mace.num_restarts", low=1, integer=True)
  _number(config, "glad.m_step_iters", low=1, integer=True)
  _choice(config, "crowd_bt.ties", CROWD_BT_TIES)
  _choice(config, "crowd_bt.optimizer", ("optax", "em"))
  if not isinstance(_get(config, "crowd_bt.position_bias"), bool):
    _fail("crowd_bt.position_bias", _get(config, "crowd_bt.position_bias"), "True or False")
  _number(config, "crowd_bt.score_prior_var", low=0.0, low_open=True)
  _number(config, "routing.confidence_threshold", low=0.0, high=1.0)
  if _get(config, "routing.agreement_threshold") is not None:
    _number(config, "routing.agreement_threshold", low=0.0, high=1.0)
  coefficients = [_number(config, f"weights.{name}_coef", low=0.0)
                  for name in ("golden", "expert", "temporal")]
  if sum(coefficients) <= 0:
    _fail("weights.golden_coef", coefficients[0],
          "coefficients (golden, expert, temporal) with a positive sum")
  _number(config, "weights.fast_threshold_ms", low=0.0)
  _number(config, "weights.fast_penalty", low=0.0, high=1.0)
  _number(config, "weights.min_count", low=1, integer=True)
  _choice(config, "weights.source", WEIGHT_SOURCES)
  _number(config, "golden_rate", low=0.0, high=1.0, high_open=True)
  _number(config, "drift.cusum_p0", low=0.0, high=1.0, low_open=True, high_open=True)
  _number(config, "drift.cusum_p1", low=0.0, high=1.0, low_open=True, high_open=True)
  if _get(config, "drift.cusum_p0") == _get(config, "drift.cusum_p1"):
    _fail("drift.cusum_p1", _get(config, "drift.cusum_p1"), "a value different from drift.cusum_p0")
  _number(config, "drift.cusum_threshold", low=0.0, low_open=True)
  _number(config, "drift.ph_delta", low=0.0)
  _number(config, "drift.ph_threshold", low=0.0, low_open=True)
  _number(config, "drift.ph_min_samples", low=1, integer=True)
  alpha = _number(config, "drift.alpha", low=0.0, high=1.0, low_open=True, high_open=True)
  _number(config, "drift.min_segment", low=1, integer=True)
  permutations = _number(config, "drift.num_permutations", low=1, integer=True)
  if math.floor(alpha * (permutations + 1) + 1e-9) < 1:
    _fail("drift.num_permutations", permutations,
          f"at least {math.ceil(1 / alpha - 1)} permutations for drift.alpha = {alpha:g} (the "
          "smallest permutation p-value is 1 / (num_permutations + 1))")
  _number(config, "drift.min_agreement", low=0.0, high=1.0)
  if not isinstance(_get(config, "report.plots"), bool):
    _fail("report.plots", _get(config, "report.plots"), "True or False")
  _number(config, "report.num_confusion", low=0, integer=True)
  _number(config, "report.num_drift", low=0, integer=True)
  _choice(config, "progress", PROGRESS_MODES)


def declared_classes(config: Any) -> tuple[str, ...] | None:
  """The classes of `config.classes` ("0,1") in class order, or None when not declared.

  Raises:
    ConfigError: a malformed declaration (an empty or repeated name, fewer than two
      names, or for pairwise formats a name that is not a, b or tie).
  """
  value = _get(config, "classes")
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  if not isinstance(value, str):
    _fail("classes", value, 'class names separated by commas, e.g. "0,1" (or "" for none)')
  try:
    return records.declared_classes(value, format=_get(config, "format"))
  except ValueError as error:
    raise ConfigError(f"config.{error}") from None


# ----------------------------------------------------------------------------------------
# Aggregation by name.


def _tol(config: Any) -> float | None:
  return float(config.tol) if config.tol > 0 else None


def _class_method(method: str, enc: types.EncodedAnnotations, config: Any,
                  vote_weights: np.ndarray | None) -> types.AggregationResult:
  """Runs one class-level method, looked up in `AGGREGATION_METHODS`, on the encoded
  annotations with the options its config section holds."""
  if method == "kos" and enc.num_classes != 2:
    raise ConfigError(f"config.method = 'kos' needs two classes, got {enc.num_classes} "
                      f"({', '.join(map(str, enc.class_names))}).")
  sizes = dict(num_classes=enc.num_classes, num_items=enc.num_items)
  key = jax.random.key(int(config.seed))
  em = dict(num_iters=int(config.num_iters), num_annotators=enc.num_annotators)
  confusion_em = dict(em, tol=_tol(config), stop_on=str(config.stop_on))  # the Dawid-Skene family
  per_method = {
      "majority_vote": lambda: dict(num_annotators=enc.num_annotators, tie_break=config.tie_break, key=key),
      "weighted_vote": lambda: dict(annotator_weights=vote_weights, tie_break=config.tie_break, key=key),
      "wawa": lambda: dict(num_annotators=enc.num_annotators),
      "zero_based_skill": lambda: dict(num_annotators=enc.num_annotators),
      "kos": lambda: dict(em, key=key),
      "mmsr": lambda: dict(num_annotators=enc.num_annotators, key=key, tol=_tol(config)),
      "dawid_skene": lambda: dict(confusion_em, smoothing=float(config.smoothing)),
      "one_coin_dawid_skene": lambda: dict(confusion_em, smoothing=float(config.smoothing)),
      "bayesian_dawid_skene": lambda: dict(
          confusion_em, prior_correct=float(config.bayesian.prior_correct),
          prior_incorrect=float(config.bayesian.prior_incorrect),
          prior_class=float(config.bayesian.prior_class), method=config.bayesian.method),
      "mace": lambda: dict(em, num_restarts=int(config.mace.num_restarts), key=key,
                           method=config.mace.method),
      "glad": lambda: dict(em, m_step_iters=int(config.glad.m_step_iters)),
  }
  if method not in per_method:
    raise ConfigError(f"config.method = {method!r} is not a class-level method.")
  aggregate = AGGREGATION_METHODS.get(method)
  return aggregate(enc.items, enc.annotators, enc.labels, **sizes, **per_method[method]())


def _response_keys(enc: types.EncodedAnnotations) -> tuple[np.ndarray, np.ndarray, dict]:
  """Per item, the keys of responses a and b (ids, else a hash of the text)."""
  payloads = enc.item_payloads
  if payloads is None:
    raise records.FeedbackInputError(
        "crowd_bt needs pairwise records with response ids or texts; this input has none.")
  keys_a, keys_b, previews = [], [], {}
  for item_id, payload in zip(enc.item_ids, payloads):
    pair = []
    for side in ("a", "b"):
      if f"response_{side}_id" in payload:
        key = str(payload[f"response_{side}_id"])
        previews.setdefault(key, "")
      elif f"response_{side}" in payload:
        text = str(payload[f"response_{side}"])
        key = "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
        previews.setdefault(key, text[:100].replace("\n", " "))
      else:
        raise records.FeedbackInputError(
            f"crowd_bt scores responses, but item {item_id!r} has neither response_{side}_id "
            f"nor response_{side}; give both responses (ids or texts) for every item, or use a "
            "class-level method such as dawid_skene.")
      pair.append(key)
    keys_a.append(pair[0])
    keys_b.append(pair[1])
  return np.asarray(keys_a, dtype=object), np.asarray(keys_b, dtype=object), previews


def _crowd_bt(enc: types.EncodedAnnotations, config: Any
              ) -> tuple[types.AggregationResult, dict[str, Any]]:
  """Item-level Crowd-BT over the responses; per-comparison posteriors from the scores."""
  from rlhf_jax.feedback.models import crowd_bt as pairwise  # pylint: disable=g-import-not-at-top

  keys_a, keys_b, previews = _response_keys(enc)
  response_ids, codes = np.unique(np.concatenate([keys_a, keys_b]).astype(str),
                                  return_inverse=True)
  codes = codes.reshape(-1).astype(np.int32)
  code_a, code_b = codes[:enc.num_items], codes[enc.num_items:]
  left, right = code_a[enc.items], code_b[enc.items]
  labels = np.asarray(enc.labels)
  decided = labels != types.TIE
  left_wins = labels == types.A_PREFERRED
  ties = int((~decided).sum())
  if config.crowd_bt.ties == "split":
    # A tie counts as one win each way: no net preference, but evidence of closeness.
    tie_rows = np.flatnonzero(~decided)
    order = np.concatenate([np.flatnonzero(decided), tie_rows, tie_rows])
    wins = np.concatenate([left_wins[decided], np.ones(ties, bool), np.zeros(ties, bool)])
  else:
    order = np.flatnonzero(decided)
    wins = left_wins[decided]
  if order.size == 0:
    raise records.FeedbackInputError(
        "crowd_bt: every annotation is a tie and config.crowd_bt.ties = 'drop' leaves no "
        "comparison to fit.")
  fit = pairwise.crowd_bt(
      left[order], right[order], np.asarray(enc.annotators)[order], wins,
      num_items=int(response_ids.size), num_annotators=enc.num_annotators,
      position_bias=bool(config.crowd_bt.position_bias),
      score_prior_var=float(config.crowd_bt.score_prior_var),
      num_iters=int(config.num_iters), method=config.crowd_bt.optimizer,
  )
  fit = jax.device_get(fit)
  scores = np.asarray(fit.scores, np.float64)
  p_a = 1.0 / (1.0 + np.exp(-(scores[code_a] - scores[code_b])))
  posteriors = np.zeros((enc.num_items, enc.num_classes), np.float32)
  posteriors[:, types.A_PREFERRED] = p_a
  posteriors[:, types.B_PREFERRED] = 1.0 - p_a
  item_labels = np.where(p_a >= 0.5, types.A_PREFERRED, types.B_PREFERRED).astype(np.int32)
  confidence = np.maximum(p_a, 1.0 - p_a).astype(np.float32)
  comparisons = np.bincount(left[order], minlength=response_ids.size) + np.bincount(
      right[order], minlength=response_ids.size)
  result = types.AggregationResult(
      posteriors=posteriors, labels=item_labels, confidence=confidence,
      annotator_params={"reliability": np.asarray(fit.reliability),
                        "position_bias": np.asarray(fit.position_bias)},
      extras={"num_iters": int(fit.num_iters), "log_likelihood": float(fit.log_likelihood)},
  )
  info = {
      "response_ids": response_ids, "scores": scores, "comparisons": comparisons,
      "previews": previews, "num_comparisons": int(order.size), "num_ties": ties,
  }
  return result, info


# ----------------------------------------------------------------------------------------
# Helpers.


def _class_indices(mapping: dict[str, str], enc: types.EncodedAnnotations, what: str,
                   path: Path, strict: bool) -> tuple[np.ndarray, int]:
  """[I] class index per item from {item id: class name} (-1 where absent or unknown).

  Returns the array and the number of ids not among the items. With `strict`, a class
  name that is not one of the input's classes is an error (expert labels must be usable);
  otherwise it counts as -2 (a gold class no annotator gave: never matched).
  """
  class_index = {name: k for k, name in enumerate(enc.class_names)}
  item_index = {item_id: i for i, item_id in enumerate(enc.item_ids)}
  out = np.full(enc.num_items, -1, np.int32)
  unknown_items = 0
  for item_id, name in mapping.items():
    i = item_index.get(item_id)
    if i is None:
      unknown_items += 1
      continue
    k = class_index.get(name)
    if k is None:
      if strict:
        raise records.FeedbackInputError(
            f"{path}: {what} {name!r} for item {item_id!r} is not one of the classes of the "
            f"input ({', '.join(enc.class_names)}).")
      k = -2
    out[i] = k
  return out, unknown_items


def _leave_one_out_agreement(enc: types.EncodedAnnotations) -> np.ndarray:
  """Per annotation: share of the item's other annotations with the same label (NaN if none)."""
  items, labels = np.asarray(enc.items), np.asarray(enc.labels)
  k = enc.num_classes
  counts = np.bincount(items * k + labels, minlength=enc.num_items * k).reshape(enc.num_items, k)
  others = counts.sum(axis=1)[items] - 1
  same = counts[items, labels] - 1
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(others > 0, same / np.maximum(others, 1), np.nan)


def _iso(seconds: float) -> str:
  if seconds is None or not np.isfinite(seconds):
    return ""
  return datetime.datetime.fromtimestamp(float(seconds), datetime.timezone.utc).strftime(
      "%Y-%m-%dT%H:%M:%SZ")


def _agreement_metrics(enc: types.EncodedAnnotations) -> tuple[dict, dict]:
  values, notes = {}, {}
  arrays = (enc.items, enc.annotators, enc.labels)
  for name, fn in (("percent_agreement", agreement.percent_agreement),
                   ("fleiss_kappa", agreement.fleiss_kappa),
                   ("krippendorff_alpha", agreement.krippendorff_alpha)):
    try:
      values[name] = float(fn(*arrays))
    except ValueError as error:  # undefined on this data (one annotator, one class, ...)
      values[name] = None
      notes[name] = str(error)
  return values, notes


def _empirical_confusion(enc: types.EncodedAnnotations, item_labels: np.ndarray,
                         annotator_index: np.ndarray) -> np.ndarray:
  """[len(annotator_index), K, K] P(answer | aggregated label), from counts."""
  k = enc.num_classes
  annotators_np = np.asarray(enc.annotators)
  true = item_labels[np.asarray(enc.items)]
  cells = (annotators_np * k + true) * k + np.asarray(enc.labels)
  counts = np.bincount(cells, minlength=enc.num_annotators * k * k).reshape(
      enc.num_annotators, k, k)[annotator_index].astype(np.float64)
  totals = counts.sum(axis=2, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)


class _Stages:
  """Times the pipeline's stages and drives the optional tqdm bar."""

  def __init__(self, names: list[str], show: bool):
    self.seconds: dict[str, float] = {}
    self._show = show
    self._bar = None
    if show:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=len(names), unit="stage", file=sys.stderr, leave=False)
    self._name: str | None = None
    self._start = 0.0

  def start(self, name: str) -> None:
    self._finish()
    self._name, self._start = name, time.perf_counter()
    if self._bar is not None:
      self._bar.set_description(name)

  def _finish(self) -> None:
    if self._name is not None:
      self.seconds[self._name] = time.perf_counter() - self._start
      if self._bar is not None:
        self._bar.update(1)
      self._name = None

  def close(self) -> None:
    self._finish()
    if self._bar is not None:
      self._bar.close()


# ----------------------------------------------------------------------------------------
# The pipeline.


def run(config: Any, *, progress: bool | None = None) -> AggregateOutputs:
  """Reads, aggregates, routes, measures and reports (see the module docstring).

  Args:
    config: the `ml_collections.ConfigDict` of `configs/aggregate.py` (every field is
      documented there).
    progress: force the progress bar on or off (default: `config.progress`).

  Returns:
    `AggregateOutputs`; the files are in `config.output_dir`.

  Raises:
    ConfigError: a config value is invalid (the message names the field).
    FileNotFoundError: the input, truth or expert file does not exist.
    records.FeedbackInputError: the input has no usable annotation, or a truth/expert file
      is malformed.
  """
  validate_config(config)
  input_path = Path(config.input)
  if not input_path.exists():
    raise FileNotFoundError(f"input file not found: {input_path} (config.input)")
  if input_path.is_dir():
    raise IsADirectoryError(f"config.input is a directory, expected a file: {input_path}")
  truth_path = _truth_path(config, input_path)
  expert_path = Path(config.expert_labels) if config.expert_labels else None
  if expert_path is not None and not expert_path.is_file():
    raise FileNotFoundError(f"expert labels file not found: {expert_path} (config.expert_labels)")
  annotator_truth_path = _annotator_truth_path(config, input_path)
  output_dir = Path(config.output_dir)
  if output_dir.exists() and not output_dir.is_dir():
    raise ConfigError(f"config.output_dir = {str(output_dir)!r} is a file, expected a directory.")
  output_dir.mkdir(parents=True, exist_ok=True)
  if progress is None:
    progress = config.progress == "on" or (
        config.progress == "auto" and input_path.stat().st_size >= AUTO_PROGRESS_BYTES)

  method = config.method
  stages = _Stages(["read", "calibrate", "aggregate", "route", "drift", "write"], progress)
  notes: list[str] = []
  try:
    # ---- Read.
    stages.start("read")
    rejects_path = output_dir / "rejects.jsonl"
    declared = declared_classes(config)
    read = records.read_annotations(input_path, format=config.format, rejects_path=rejects_path,
                                    duplicate_policy=config.duplicate_policy, classes=declared)
    enc = read.annotations
    if declared is None and config.format != "crowd_csv":
      enc, unchosen = _drop_unchosen_tie(enc)
      if unchosen:
        read = dataclasses.replace(read, annotations=enc)
        notes.append("no annotation (and no golden answer) is a tie: the classes of this task "
                     "are a, b (declare config.classes=a,b,tie to keep tie as a class).")
    rare_classes = []
    if declared is None and config.format == "crowd_csv":
      rare_classes = _rare_classes(enc, float(config.rare_class_share))
    if enc.num_classes < 2:
      raise records.FeedbackInputError(
          f"{input_path}: every accepted annotation has the same answer "
          f"{enc.class_names[0]!r}; aggregation needs at least two classes.")
    if enc.num_annotators < 2:
      notes.append("only one annotator: agreement is undefined and every method returns "
                   "that annotator's answers.")
    truth = records.read_truth(truth_path) if truth_path is not None else None
    experts = records.read_truth(expert_path) if expert_path is not None else None
    annotator_truth = (records.read_annotator_truth(annotator_truth_path)
                       if annotator_truth_path is not None else None)

    # ---- Calibration: per-annotator metrics and weights.
    stages.start("calibrate")
    expert_labels = np.full(enc.num_items, -1, np.int32)
    if experts is not None:
      expert_labels, unknown = _class_indices(experts, enc, "expert label", expert_path, True)
      if unknown:
        notes.append(f"{unknown} expert-labelled items of {expert_path} are not in the input.")
    timestamps = enc.timestamps
    has_all_times = timestamps is not None and bool(np.all(np.isfinite(timestamps)))
    if timestamps is not None and not has_all_times:
      notes.append(f"{int((~np.isfinite(timestamps)).sum())} annotations have no timestamp: "
                   "temporal consistency is not measured and drift uses the others.")
    metrics = jax.device_get(annotators_lib.annotator_metrics(
        enc.items, enc.annotators, enc.labels,
        timestamps=timestamps if has_all_times else None,
        response_ms=enc.response_ms, is_golden=enc.is_golden, golden_labels=enc.golden_labels,
        expert_labels=expert_labels, num_annotators=enc.num_annotators,
        num_items=enc.num_items))
    w = config.weights
    weights = np.asarray(annotators_lib.annotator_weights(
        metrics, golden_coef=float(w.golden_coef), expert_coef=float(w.expert_coef),
        temporal_coef=float(w.temporal_coef), fast_threshold_ms=float(w.fast_threshold_ms),
        fast_penalty=float(w.fast_penalty), min_count=int(w.min_count)))
    min_count = int(w.min_count)
    has_calibration = bool(np.any(
        (metrics.num_golden >= min_count) | (metrics.num_expert >= min_count)
        | (metrics.num_repeat_pairs >= min_count)))
    agreement_values, agreement_notes = _agreement_metrics(enc)
    leave_one_out = _leave_one_out_agreement(enc)

    # ---- Aggregate.
    stages.start("aggregate")
    vote_weights = None
    weight_source = None
    if method == "weighted_vote":
      weight_source = w.source
      if weight_source == "auto":
        weight_source = "calibration" if has_calibration else "reliability"
      if weight_source == "calibration":
        vote_weights = weights
        if not has_calibration:
          notes.append("no annotator has golden, expert or repeat data: every calibration "
                       "weight is equal and weighted_vote is a majority vote.")
      else:
        reliability = dawid_skene_lib.dawid_skene(
            enc.items, enc.annotators, enc.labels, num_classes=enc.num_classes,
            num_items=enc.num_items, num_annotators=enc.num_annotators,
            num_iters=int(config.num_iters), tol=_tol(config)).annotator_params["reliability"]
        vote_weights = np.asarray(reliability)
    crowd_bt_info = None
    if method == "crowd_bt":
      result, crowd_bt_info = _crowd_bt(enc, config)
    else:
      result = _class_method(method, enc, config, vote_weights)
    result = jax.device_get(result)
    posteriors = np.asarray(result.posteriors, np.float32)
    crowd_labels = np.asarray(result.labels, np.int32)
    crowd_confidence = np.asarray(result.confidence, np.float32)
    num_annotations = np.bincount(enc.items, minlength=enc.num_items)

    # ---- Route: expert review, expert labels.
    stages.start("route")
    r = config.routing
    item_agreement = None
    if r.agreement_threshold is not None:
      item_agreement = agreement.item_agreement(
          enc.items, enc.annotators, enc.labels, num_items=enc.num_items,
          num_classes=enc.num_classes)
    # Route on the confidence labels.csv shows: for the votes, whose posteriors are the
    # one-hot decision, the vote share; for the models it is the posterior of the label.
    review = np.asarray(routing.route_items(
        posteriors, agreement=item_agreement, confidence=crowd_confidence,
        confidence_threshold=float(r.confidence_threshold),
        agreement_threshold=None if r.agreement_threshold is None else float(r.agreement_threshold)))
    expert_items = np.flatnonzero(expert_labels >= 0)
    resolved = routing.resolve_expert_reviews(
        crowd_labels, crowd_confidence, review, expert_items, expert_labels[expert_items],
        posteriors=posteriors)
    final_labels = np.asarray(resolved.labels, np.int32)
    final_confidence = np.asarray(resolved.confidence, np.float32)
    final_posteriors = np.asarray(resolved.posteriors, np.float32)
    label_source = resolved.source_names()
    # The soft targets of the training file: a vote's posterior is its one-hot decision,
    # so the votes give their vote shares; expert decisions replace the row either way.
    vote_shares = result.extras.get("vote_shares") if isinstance(result.extras, dict) else None
    soft_labels = posteriors if vote_shares is None else np.asarray(vote_shares, np.float32)
    if vote_shares is not None:
      soft_labels = np.asarray(routing.resolve_expert_reviews(
          crowd_labels, crowd_confidence, review, expert_items, expert_labels[expert_items],
          posteriors=soft_labels).posteriors, np.float32)
    else:
      soft_labels = final_posteriors
    routing_summary = _routing_summary(method, r, crowd_confidence, item_agreement, review)
    routing_rule = routing_summary["rule"]

    accuracy = crowd_accuracy = None
    num_truth_items = 0
    if truth is not None:
      truth_labels, unknown = _class_indices(truth, enc, "gold label", truth_path, False)
      has_truth = truth_labels != -1
      num_truth_items = int(has_truth.sum())
      if num_truth_items and unknown:
        notes.append(f"{unknown} items of {truth_path} have no accepted annotation and are "
                     "not scored.")
      if num_truth_items:
        accuracy = float(np.mean(final_labels[has_truth] == truth_labels[has_truth]))
        if expert_items.size:
          crowd_accuracy = float(np.mean(crowd_labels[has_truth] == truth_labels[has_truth]))
      else:
        notes.append(f"no item of {truth_path} is in the input: accuracy not computed.")

    # ---- Drift.
    stages.start("drift")
    reference = _reference_labels(enc, crowd_labels, expert_labels, num_annotations)
    drift_summary, drift_rows, drift_panels = _drift(
        enc, config, leave_one_out, reference, annotator_truth, annotator_truth_path)

    # ---- Annotator table.
    reliability = np.asarray(result.annotator_params["reliability"], np.float64)
    annotators_np = np.asarray(enc.annotators)
    agrees_label = (np.asarray(enc.labels) == crowd_labels[np.asarray(enc.items)]).astype(np.float64)
    agreement_with_label = np.bincount(annotators_np, agrees_label, minlength=enc.num_annotators) / (
        np.maximum(metrics.num_annotations, 1))
    finite_loo = np.isfinite(leave_one_out)
    loo_count = np.bincount(annotators_np[finite_loo], minlength=enc.num_annotators)
    loo_sum = np.bincount(annotators_np[finite_loo], leave_one_out[finite_loo],
                          minlength=enc.num_annotators)
    with np.errstate(invalid="ignore", divide="ignore"):
      agreement_with_others = np.where(loo_count > 0, loo_sum / np.maximum(loo_count, 1), np.nan)
      golden_share = np.where(metrics.num_annotations > 0,
                              metrics.num_golden / np.maximum(metrics.num_annotations, 1), np.nan)
    golden_rate = float(config.golden_rate)
    any_golden = bool(np.any(metrics.num_golden > 0))
    under_calibrated = (golden_share < golden_rate) & any_golden
    fast = np.isfinite(metrics.median_response_ms) & (
        metrics.median_response_ms < float(w.fast_threshold_ms))
    annotator_rows = []
    for a, annotator_id in enumerate(enc.annotator_ids):
      row = {
          "annotator": annotator_id,
          "num_annotations": int(metrics.num_annotations[a]),
          "reliability": float(reliability[a]),
          "agreement_with_label": float(agreement_with_label[a]),
          "agreement_with_others": float(agreement_with_others[a]),
          "golden_accuracy": float(metrics.golden_accuracy[a]),
          "num_golden": int(metrics.num_golden[a]),
          "golden_share": float(golden_share[a]),
          "expert_agreement": float(metrics.expert_agreement[a]),
          "num_expert": int(metrics.num_expert[a]),
          "temporal_consistency": float(metrics.temporal_consistency[a]),
          "num_repeat_pairs": int(metrics.num_repeat_pairs[a]),
          "median_response_ms": float(metrics.median_response_ms[a]),
          "weight": float(weights[a]),
      }
      if vote_weights is not None:
        row["vote_weight"] = float(vote_weights[a])
      if "position_bias" in result.annotator_params:
        row["position_bias"] = float(np.asarray(result.annotator_params["position_bias"])[a])
      row.update(drift_rows[a])
      annotator_rows.append(row)

    # ---- Write.
    stages.start("write")
    lineage = records.item_lineage(enc)
    files: dict[str, str] = {}
    report.write_labels_csv(
        output_dir / "labels.csv", item_ids=enc.item_ids, class_names=enc.class_names,
        labels=final_labels, confidence=final_confidence, num_annotations=num_annotations,
        expert_review=review, posteriors=final_posteriors, lineage=lineage,
        label_source=label_source, progress=progress)
    files["labels.csv"] = ("one row per item: label, confidence, number of annotations, expert "
                           "review flag, posterior per class, lineage (annotation ids, guideline "
                           "versions, label source)")
    columns = list(_ANNOTATOR_COLUMNS)
    if vote_weights is not None:
      columns.insert(columns.index("weight") + 1, "vote_weight")
    if "position_bias" in result.annotator_params:
      columns.insert(columns.index("reliability") + 1, "position_bias")
    report.write_annotators_csv(output_dir / "annotators.csv", annotator_rows, columns)
    files["annotators.csv"] = ("one row per annotator: workload, reliability, agreement, golden "
                               "accuracy, expert agreement, temporal consistency, speed, weight, "
                               "drift verdict (drift / always_bad / ok) and level-monitor alarms")
    files["rejects.jsonl"] = f"{read.num_rejected} rejected records with file, line, field, reason"
    training = None
    if training_lib.is_pairwise_task(enc.class_names):
      training = training_lib.write_training_file(
          output_dir, enc, labels=final_labels, confidence=final_confidence, soft_labels=soft_labels,
          label_source=label_source, lineage=lineage)
      training_summary = {"written": True, **training.to_json()}
      files[training_lib.TRAIN_FILE] = (
          f"{training.num_trained} items with their final label (crowd or expert) in the data layer's "
          "feedback_labels format: texts, soft target P(a preferred), confidence as weight, lineage; "
          "scripts/train.py --config.data.train=PATH reads it")
      files[training_lib.AWAITING_FILE] = f"{training.num_awaiting} items awaiting expert review"
      files[training_lib.TRAIN_REJECTS_FILE] = (
          f"{training.num_rejected} items the training reader would refuse, with its reason")
    else:
      training_summary = {"written": False, "reason": "the classes "
                          f"{list(enc.class_names)} are not those of a pairwise preference (a, b, tie)"}
    if crowd_bt_info is not None:
      _write_scores_csv(output_dir / "scores.csv", crowd_bt_info)
      files["scores.csv"] = "Crowd-BT score per response, with its number of comparisons"

    plots: dict[str, str] = {}
    if config.report.plots:
      plots = _plots(output_dir, enc, config, result, reliability, metrics, crowd_labels,
                     drift_panels)
      files.update({name: caption for caption, name in plots.items()})
    files["report.md"] = "this report"
    files["summary.json"] = "the report's numbers, for machines"

    label_counts = {enc.class_names[k]: int(n)
                    for k, n in enumerate(np.bincount(final_labels, minlength=enc.num_classes))}
    num_iters = result.extras.get("num_iters") if isinstance(result.extras, dict) else None
    stages.close()
    summary = {
        # First: what a reader must see before any number below.
        "warnings": _rare_class_warnings(rare_classes, enc.class_names,
                                         float(config.rare_class_share), read.num_accepted),
        "input": str(input_path),
        "format": config.format,
        "method": method,
        "num_iters": None if num_iters is None else int(np.asarray(num_iters)),
        "num_read": read.num_read,
        "num_accepted": read.num_accepted,
        "num_rejected": read.num_rejected,
        "reject_reasons": read.reject_reasons(),
        "num_duplicates": len(read.duplicates),
        "num_contradictions": len(read.contradictions),
        "duplicate_policy": read.duplicate_policy,
        "num_items": enc.num_items,
        "num_annotators": enc.num_annotators,
        "num_classes": enc.num_classes,
        "class_names": list(enc.class_names),
        "declared_classes": None if declared is None else list(declared),
        "rare_classes": rare_classes,
        "rare_class_share": float(config.rare_class_share),
        "agreement": agreement_values,
        "agreement_notes": agreement_notes,
        "label_counts": label_counts,
        "mean_confidence": float(np.mean(final_confidence)),
        "num_expert_review": int(review.sum()),
        "num_expert_resolved": int(expert_items.size),
        "num_pending": int(sum(s == "pending" for s in label_source)),
        "routing_rule": routing_rule,
        "routing": routing_summary,
        "accuracy": accuracy,
        "crowd_accuracy": crowd_accuracy,
        "num_truth_items": num_truth_items,
        "truth": None if truth_path is None else str(truth_path),
        "weight_source": weight_source,
        "calibration": {
            "formula": (f"{float(w.golden_coef):g}*golden + {float(w.expert_coef):g}*expert "
                        f"+ {float(w.temporal_coef):g}*temporal, renormalised over the metrics "
                        f"an annotator has, times {float(w.fast_penalty):g} when the median "
                        f"response is under {float(w.fast_threshold_ms):g} ms"),
            "num_with_golden": int(np.sum(metrics.num_golden > 0)),
            "has_evidence": has_calibration,
            "num_under_calibrated": int(under_calibrated.sum()),
            "golden_rate": golden_rate,
            "num_fast": int(fast.sum()),
            "fast_threshold_ms": float(w.fast_threshold_ms),
        },
        "drift": drift_summary,
        "training": training_summary,
        "notes": notes,
        "seconds": {k: round(v, 3) for k, v in stages.seconds.items()},
        "files": files,
    }
    # Agreement and accuracy per guideline version (issue 20): a guideline change shows.
    from rlhf_jax.feedback.workflow import plan as plan_lib  # pylint: disable=g-import-not-at-top
    summary["by_guideline"] = plan_lib.guideline_breakdown(
        enc, final_labels, {i: int(t) for i, t in enumerate(truth_labels) if t != -1}
        if truth is not None else None)
    if crowd_bt_info is not None:
      summary["crowd_bt"] = {
          "num_responses": int(crowd_bt_info["response_ids"].size),
          "num_comparisons": crowd_bt_info["num_comparisons"],
          "num_ties": crowd_bt_info["num_ties"],
          "ties": config.crowd_bt.ties,
      }
    report.write_report_md(output_dir / "report.md", summary, annotator_rows=annotator_rows,
                           plots=plots, reject_examples=read.rejects[:5])
    with open(output_dir / "summary.json", "w", encoding="utf-8") as handle:
      json.dump(_finite(summary), handle, indent=2, allow_nan=False, default=_json_default)
      handle.write("\n")
  finally:
    stages.close()
  return AggregateOutputs(
      output_dir=output_dir, summary=summary, read_report=read, result=result,
      labels=final_labels, confidence=final_confidence, expert_review=review,
      label_source=label_source, annotator_rows=annotator_rows, training=training)


_ANNOTATOR_COLUMNS = (
    "annotator", "num_annotations", "reliability", "agreement_with_label",
    "agreement_with_others", "golden_accuracy", "num_golden", "golden_share",
    "expert_agreement", "num_expert", "temporal_consistency", "num_repeat_pairs",
    "median_response_ms", "weight", "drift_alarm", "drift_status", "drift_p_value",
    "agreement_before", "agreement_after", "change_time", "drift_alarm_time",
    "cusum_alarm_time", "cusum_drop", "page_hinkley_alarm_time", "page_hinkley_drop",
)


def _finite(value: Any) -> Any:
  """The summary with NaN and infinities as None (JSON has no NaN)."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
    return None
  return value


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return None if not np.isfinite(value) else float(value)
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _truth_path(config: Any, input_path: Path) -> Path | None:
  if config.truth:
    path = Path(config.truth)
    if not path.is_file():
      raise FileNotFoundError(f"truth file not found: {path} (config.truth)")
    return path
  if config.format == "crowd_csv":
    candidate = input_path.parent / "truth.csv"
    if candidate.is_file() and candidate.resolve() != input_path.resolve():
      return candidate
  return None


def _annotator_truth_path(config: Any, input_path: Path) -> Path | None:
  if config.annotator_truth:
    path = Path(config.annotator_truth)
    if not path.is_file():
      raise FileNotFoundError(f"annotator truth file not found: {path} (config.annotator_truth)")
    return path
  candidate = input_path.parent / "annotator_truth.csv"
  if candidate.is_file() and candidate.resolve() != input_path.resolve():
    return candidate
  return None


def _drop_unchosen_tie(enc: types.EncodedAnnotations) -> tuple[types.EncodedAnnotations, bool]:
  """Pairwise records without a declaration: `tie` is a class only if someone chose it.

  A class no annotation (and no golden answer) uses has no evidence: every number about
  it (its confusion rows, its posterior) would be a prior printed as an estimate. `tie`
  is the last schema class, so dropping it moves no index.
  """
  if enc.class_names != types.PAIRWISE_CLASS_NAMES:
    return enc, False
  used = np.any(np.asarray(enc.labels) == types.TIE)
  if enc.golden_labels is not None:
    used |= np.any(np.asarray(enc.golden_labels) == types.TIE)
  if used:
    return enc, False
  return dataclasses.replace(enc, class_names=enc.class_names[:types.TIE]), True


def _rare_classes(enc: types.EncodedAnnotations, share: float) -> list[dict[str, Any]]:
  """Classes given by fewer than `share` of the answers: probable typos, with where."""
  counts = np.bincount(np.asarray(enc.labels), minlength=enc.num_classes)
  total = int(counts.sum())
  rare = []
  for k in np.flatnonzero((counts > 0) & (counts < share * total)).tolist():
    where = np.flatnonzero(np.asarray(enc.labels) == k)[:5]
    rare.append({"class": enc.class_names[k], "count": int(counts[k]),
                 "share": float(counts[k] / total),
                 "annotation_ids": [enc.annotation_ids[n] for n in where.tolist()]})
  return rare


def _rare_class_warnings(rare: list[dict[str, Any]], class_names: tuple[str, ...],
                         share: float, total: int) -> list[str]:
  if not rare:
    return []
  typical = ",".join(c for c in class_names if c not in {r["class"] for r in rare})
  listed = "; ".join(
      f"{r['class']!r} is {r['count']} of {total} answers ({r['share']:.2%}; "
      f"{', '.join(r['annotation_ids'])}{', ...' if r['count'] > len(r['annotation_ids']) else ''})"
      for r in rare)
  return [f"probable typos in the answers: {listed}. Each class seen in fewer than "
          f"{share * 100:g}% of the answers is kept as a class of its own, and an item's one "
          f"stray answer can decide it. Declare the classes (--config.classes={typical}) to "
          "reject such answers."]


def _routing_summary(method: str, routing_config: Any, confidence: np.ndarray,
                     item_agreement: Any, review: np.ndarray) -> dict[str, Any]:
  """The routing rule as applied, in words and numbers."""
  threshold = float(routing_config.confidence_threshold)
  if method in VOTING_METHODS:
    weighted = "" if method == "majority_vote" else "weighted "
    measure = f"{weighted}vote share of the label"
    meaning = f"the {weighted}share of the item's votes that agree with its label"
  else:
    measure = "posterior probability of the label"
    meaning = f"{method}'s posterior probability of the item's label"
  low_confidence = ~(confidence >= threshold)
  rule = f"{measure} < {threshold:g}"
  by_agreement = None
  agreement_threshold = routing_config.agreement_threshold
  if agreement_threshold is not None:
    by_agreement = ~(np.asarray(item_agreement) >= float(agreement_threshold))
    rule += f" or pairwise agreement < {float(agreement_threshold):g}"
  return {
      "rule": rule,
      "confidence_measure": measure,
      "confidence_meaning": meaning,
      "confidence_threshold": threshold,
      "agreement_threshold": None if agreement_threshold is None else float(agreement_threshold),
      "num_items": int(review.size),
      "num_review": int(review.sum()),
      "num_low_confidence": int(low_confidence.sum()),
      "num_low_agreement": None if by_agreement is None else int(by_agreement.sum()),
      "num_both": None if by_agreement is None else int((low_confidence & by_agreement).sum()),
  }


def _reference_labels(enc: types.EncodedAnnotations, crowd_labels: np.ndarray,
                      expert_labels: np.ndarray, num_annotations: np.ndarray) -> np.ndarray:
  """Per annotation the answer it is checked against for drift (-1: none).

  The golden answer where the item is golden, else the expert label, else the
  aggregated label when another annotator also labelled the item (alone, an annotator
  would agree with itself).
  """
  items = np.asarray(enc.items)
  reference = np.where(num_annotations[items] >= 2, crowd_labels[items], -1)
  reference = np.where(expert_labels[items] >= 0, expert_labels[items], reference)
  if enc.is_golden is not None and enc.golden_labels is not None:
    golden = np.asarray(enc.is_golden) & (np.asarray(enc.golden_labels) >= 0)
    reference = np.where(golden, np.asarray(enc.golden_labels), reference)
  return reference.astype(np.int32)


_DAY = 86400.0


def _drift(enc: types.EncodedAnnotations, config: Any, leave_one_out: np.ndarray,
           reference: np.ndarray, annotator_truth: dict[str, tuple[str, float]] | None,
           annotator_truth_path: Path | None,
           ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
  """Change-point verdicts and level monitors per annotator; returns (summary, per-annotator
  fields, plot panels)."""
  d = config.drift
  alpha, min_segment = float(d.alpha), int(d.min_segment)
  num_permutations, bar = int(d.num_permutations), float(d.min_agreement)
  rows = [{"drift_alarm": "", "drift_status": "", "drift_p_value": None,
           "agreement_before": None, "agreement_after": None, "change_time": "",
           "drift_alarm_time": "", "cusum_alarm_time": "", "cusum_drop": None,
           "page_hinkley_alarm_time": "", "page_hinkley_drop": None}
          for _ in range(enc.num_annotators)]
  cusum_rule = (f"p0 = {float(d.cusum_p0):g} -> p1 = {float(d.cusum_p1):g}, "
                f"h = {float(d.cusum_threshold):g}")
  ph_rule = (f"delta = {float(d.ph_delta):g}, lambda = {float(d.ph_threshold):g}, "
             f"at least {int(d.ph_min_samples)} annotations")
  change_rule = (f"alpha = {alpha:g}, at least {min_segment} annotations on each side of the "
                 f"change, {num_permutations} permutations; agreement bar {bar:g}")
  summary: dict[str, Any] = {
      "measured": False, "note": "", "rule": change_rule, "alpha": alpha,
      "min_segment": min_segment, "num_permutations": num_permutations, "min_agreement": bar,
      "num_tested": 0, **{f"num_{name}": 0 for name in drift_lib.DRIFT_STATUSES},
      "drift_annotators": [], "always_bad_annotators": [], "cusum_alarms": 0,
      "page_hinkley_alarms": 0, "cusum_rule": cusum_rule, "page_hinkley_rule": ph_rule,
      "monitor_alarms_by_status": {}, "truth": None,
  }
  if enc.timestamps is None:
    summary["note"] = f"the input ({config.format}) has no timestamps."
    return summary, rows, []
  timed = np.isfinite(enc.timestamps)
  if not timed.any():
    summary["note"] = "no annotation has a timestamp."
    return summary, rows, []
  usable = timed & (reference >= 0)
  if not usable.any():
    summary["note"] = ("no timed annotation has a reference answer (a golden answer, an expert "
                       "label or another annotator on its item).")
    return summary, rows, []
  summary["measured"] = True
  annotators_np = np.asarray(enc.annotators)
  labels_np = np.asarray(enc.labels)

  # ---- The change-point test: did the annotator's own agreement drop?
  agree = (labels_np == reference).astype(np.float32)
  key = jax.random.fold_in(jax.random.key(int(config.seed)), 1)  # not the methods' key
  result, streams = drift_lib.detect_change_points(
      annotators_np[usable], agree[usable], enc.timestamps[usable],
      num_annotators=enc.num_annotators, key=key, min_segment=min_segment,
      num_permutations=num_permutations, alpha=alpha)
  status = drift_lib.classify_drift(result, min_rate=bar)
  rows_index = np.arange(enc.num_annotators)
  length = streams.times.shape[1]
  change = np.asarray(result.change_index)
  change_time = np.where(change >= 0, streams.times[rows_index, np.clip(change, 0, max(length - 1, 0))],
                         np.nan) if length else np.full(enc.num_annotators, np.nan)
  count = np.asarray(result.count)
  for a in range(enc.num_annotators):
    row = rows[a]
    if count[a] == 0:
      continue
    name = drift_lib.DRIFT_STATUSES[status[a]]
    row["drift_status"] = name
    row["drift_alarm"] = "yes" if status[a] == drift_lib.STATUS_DRIFT else "no"
    row["drift_p_value"] = float(result.p_value[a])
    if change[a] >= 0:
      row["agreement_before"] = float(result.mean_before[a])
      row["agreement_after"] = float(result.mean_after[a])
    if status[a] == drift_lib.STATUS_DRIFT:
      row["change_time"] = _iso(change_time[a])
      row["drift_alarm_time"] = _iso(result.alarm_time[a])
  has_stream = count > 0
  summary["num_tested"] = int(np.sum(has_stream & (status != drift_lib.STATUS_TOO_FEW)))
  for code, name in enumerate(drift_lib.DRIFT_STATUSES):
    summary[f"num_{name}"] = int(np.sum(has_stream & (status == code)))
  drifted = np.flatnonzero(has_stream & (status == drift_lib.STATUS_DRIFT))
  drifted = drifted[np.argsort(np.asarray(result.alarm_time)[drifted], kind="stable")]
  always_bad = np.flatnonzero(has_stream & (status == drift_lib.STATUS_ALWAYS_BAD))
  always_bad = always_bad[np.argsort(np.asarray(result.mean)[always_bad], kind="stable")]
  summary["drift_annotators"] = [
      {"annotator": enc.annotator_ids[a], "agreement_before": float(result.mean_before[a]),
       "agreement_after": float(result.mean_after[a]), "change_time": _iso(change_time[a]),
       "alarm_time": _iso(result.alarm_time[a]), "p_value": float(result.p_value[a]),
       "annotations": int(count[a]), "annotations_to_alarm":
           int(result.alarm_index[a]) - int(change[a]) + 1}
      for a in drifted]
  summary["always_bad_annotators"] = [
      {"annotator": enc.annotator_ids[a], "agreement": float(result.mean[a]),
       "annotations": int(count[a]), "p_value": float(result.p_value[a])}
      for a in always_bad]
  summary["max_expected_false_alarms"] = alpha * summary["num_tested"]
  if annotator_truth is not None:
    summary["truth"] = _drift_truth(annotator_truth, annotator_truth_path, enc, result, streams,
                                    status)

  # ---- Level monitors: they alarm when the level is low now, changed or not.
  panels_data: dict[str, tuple[Any, Any, Any, str]] = {}
  golden = timed.copy()
  if enc.is_golden is not None and enc.golden_labels is not None:
    golden &= np.asarray(enc.is_golden) & (np.asarray(enc.golden_labels) >= 0)
  else:
    golden[:] = False
  if golden.any():
    correct = (labels_np[golden] == np.asarray(enc.golden_labels)[golden])
    cusum, cusum_streams = drift_lib.detect_annotator_drift(
        annotators_np[golden], correct.astype(np.float32), enc.timestamps[golden],
        num_annotators=enc.num_annotators, method="cusum", p0=float(d.cusum_p0),
        p1=float(d.cusum_p1), threshold=float(d.cusum_threshold))
    panels_data["cusum"] = (cusum, cusum_streams, float(d.cusum_threshold), "CUSUM S_t (golden)")
  usable_loo = timed & np.isfinite(leave_one_out)
  if usable_loo.any():
    ph, ph_streams = drift_lib.detect_annotator_drift(
        annotators_np[usable_loo], leave_one_out[usable_loo].astype(np.float32),
        enc.timestamps[usable_loo], num_annotators=enc.num_annotators, method="page_hinkley",
        delta=float(d.ph_delta), threshold=float(d.ph_threshold),
        min_samples=int(d.ph_min_samples), direction="decrease")
    panels_data["page_hinkley"] = (ph, ph_streams, float(d.ph_threshold), "PH_t (agreement)")
  for name, (monitor, _, _, _) in panels_data.items():
    first = np.asarray(monitor.alarm_index) >= 0
    summary[f"{name}_alarms"] = int(first.sum())
    summary["monitor_alarms_by_status"][name] = {
        status_name: int(np.sum(first & has_stream & (status == code)))
        for code, status_name in enumerate(drift_lib.DRIFT_STATUSES)}
    for a in np.flatnonzero(first):
      rows[a][f"{name}_alarm_time"] = _iso(monitor.alarm_time[a])
      rows[a][f"{name}_drop"] = float(monitor.magnitude[a])
  if "cusum" not in panels_data:
    summary["note"] = "no golden annotation with a timestamp: the CUSUM monitor did not run."

  # Timelines: drift verdicts first (by alarm), then always bad, then the most active.
  workload = np.bincount(annotators_np[usable], minlength=enc.num_annotators)
  rank = {int(a): i for i, a in enumerate([*drifted, *always_bad])}
  order = sorted(range(enc.num_annotators), key=lambda a: (rank.get(a, len(rank)), -workload[a]))
  panels = []
  for a in order[:int(config.report.num_drift)]:
    if workload[a] == 0:
      continue
    mask = np.asarray(streams.mask[a])
    alarms = np.zeros(mask.size, bool)
    if result.alarm_index[a] >= 0:
      alarms[result.alarm_index[a]] = True
    panel: dict[str, Any] = {
        "annotator": f"{enc.annotator_ids[a]} ({drift_lib.DRIFT_STATUSES[status[a]]})",
        "change_point": {
            "times": streams.times[a][mask],
            "statistic": np.asarray(result.prefix_statistic[a])[mask],
            "alarms": alarms[mask], "threshold": float(result.critical_value[a]),
            "label": "GLR of a drop (agreement)"},
    }
    for name, (monitor, monitor_streams, threshold, label) in panels_data.items():
      monitor_mask = np.asarray(monitor_streams.mask[a])
      panel[name] = {
          "times": monitor_streams.times[a][monitor_mask],
          "statistic": np.asarray(monitor.statistic[a])[monitor_mask],
          "alarms": np.asarray(monitor.alarms[a])[monitor_mask], "threshold": threshold,
          "label": label,
      }
    panels.append(panel)
  return summary, rows, panels


def _drift_truth(truth: dict[str, tuple[str, float]], path: Path | None,
                 enc: types.EncodedAnnotations, result: Any, streams: Any,
                 status: np.ndarray) -> dict[str, Any]:
  """Detection rate, delay and false alarms of the drift verdicts against the known truth.

  An annotator drifted when the truth gives it a change time. Its true change index is
  the number of its tested annotations before that time; the delay is the alarm's index
  minus it (in annotations) and the alarm's time minus the change time (in days).
  """
  index = {annotator_id: a for a, annotator_id in enumerate(enc.annotator_ids)}
  drifting, by_type = [], {}
  false_alarms, num_stable, unknown = [], 0, 0
  for annotator_id, (kind, change_time) in truth.items():
    a = index.get(annotator_id)
    if a is None:
      unknown += 1
      continue
    name = drift_lib.DRIFT_STATUSES[status[a]] if result.count[a] > 0 else "untested"
    by_type.setdefault(kind, {}).setdefault(name, 0)
    by_type[kind][name] += 1
    if not np.isfinite(change_time):
      num_stable += 1
      if name == "drift":
        false_alarms.append(annotator_id)
      continue
    mask = np.asarray(streams.mask[a])
    true_index = int(np.sum(mask & (streams.times[a] < change_time)))
    entry = {"annotator": annotator_id, "status": name, "found": name == "drift",
             "change_time": _iso(change_time), "true_change_index": true_index,
             "annotations": int(result.count[a]), "p_value": float(result.p_value[a]),
             "alarm_index": None, "delay_annotations": None, "delay_days": None}
    if name == "drift":
      entry["alarm_index"] = int(result.alarm_index[a])
      entry["delay_annotations"] = int(result.alarm_index[a]) - true_index
      entry["delay_days"] = float((result.alarm_time[a] - change_time) / _DAY)
    drifting.append(entry)
  found = [e for e in drifting if e["found"]]
  delays = [e["delay_annotations"] for e in found]
  days = [e["delay_days"] for e in found]
  return {
      "file": None if path is None else str(path),
      "num_drifting": len(drifting),
      "num_found": len(found),
      "detection_rate": len(found) / len(drifting) if drifting else None,
      "median_delay_annotations": float(np.median(delays)) if delays else None,
      "median_delay_days": float(np.median(days)) if days else None,
      "drifting": drifting,
      "num_not_drifting": num_stable,
      "false_alarms": false_alarms,
      "status_by_type": by_type,
      "num_unknown_annotators": unknown,
  }


def _plots(output_dir: Path, enc: types.EncodedAnnotations, config: Any,
           result: types.AggregationResult, reliability: np.ndarray, metrics: Any,
           crowd_labels: np.ndarray, drift_panels: list[dict[str, Any]]) -> dict[str, str]:
  plots: dict[str, str] = {}
  report.plot_reliability_histogram(
      output_dir / "reliability_histogram.png", reliability, num_classes=enc.num_classes,
      title=f"Annotator reliability ({config.method}, {enc.num_annotators} annotators)",
      num_annotations=np.asarray(metrics.num_annotations))
  plots["Annotator reliability: histogram and against workload"] = "reliability_histogram.png"
  count = min(int(config.report.num_confusion), enc.num_annotators)
  if count > 0:
    workload = np.asarray(metrics.num_annotations)
    top = np.argsort(-workload, kind="stable")[:count]
    confusion = result.annotator_params.get("confusion")
    if confusion is not None:
      matrices = np.asarray(confusion, np.float64)[top].copy()
      # A row whose true class the annotator (by the model) met less than once is the
      # model's prior or smoothing, not an estimate: left blank.
      evidence = np.zeros((enc.num_annotators, enc.num_classes))
      np.add.at(evidence, np.asarray(enc.annotators),
                np.asarray(result.posteriors, np.float64)[np.asarray(enc.items)])
      matrices[evidence[top] < 1.0] = np.nan
      source = f"{config.method} confusion matrices; blank: fewer than one item of that class"
    else:
      matrices = _empirical_confusion(enc, crowd_labels, top)
      source = f"answers against the {config.method} labels"
    report.plot_confusion_matrices(
        output_dir / "confusion_matrices.png", matrices,
        annotator_ids=[enc.annotator_ids[a] for a in top], num_annotations=workload[top],
        class_names=enc.class_names,
        title=f"P(answer | true class) of the {count} most active annotators ({source})")
    plots[f"Confusion matrices of the {count} most active annotators"] = "confusion_matrices.png"
  if drift_panels:
    report.plot_drift_timelines(
        output_dir / "drift_timelines.png", drift_panels,
        title="Drift over time (drift verdicts first, then always bad; dashed: threshold)")
    plots["Drift timelines: the change-point statistic of the answers so far (alarm where it "
          "crosses the test's critical value), the CUSUM and Page-Hinkley level monitors"] = (
        "drift_timelines.png")
  return plots


def _write_scores_csv(path: Path, info: dict[str, Any]) -> None:
  import csv  # pylint: disable=g-import-not-at-top

  order = np.argsort(-info["scores"], kind="stable")
  with open(path, "w", newline="", encoding="utf-8") as handle:
    writer = csv.writer(handle)
    writer.writerow(["response", "score", "rank", "num_comparisons", "text_preview"])
    for rank, r in enumerate(order, start=1):
      key = str(info["response_ids"][r])
      writer.writerow([key, report.format_number(info["scores"][r]), rank,
                       int(info["comparisons"][r]), info["previews"].get(key, "")])
