"""From resolved labels to a training file: every item trained, awaiting review, or rejected.

`write_training_file` writes, for a pairwise-preference task (classes a, b and maybe
tie), three JSON Lines files into one directory:

* `train.jsonl`: one row per item whose label is final (source "crowd" or "expert"),
  in the `feedback_labels` format of the data layer (`rlhf_jax.data.formats`), which
  `scripts/train.py --config.data.train=PATH` reads unchanged: `item`, `prompt`,
  `response_a`, `response_b`, `label` (a / b / tie), `target_prob` = P(a preferred)
  from the soft target, `confidence` (the example weight), `label_source`, and the
  lineage `annotation_ids`, `annotator_ids`, `guideline_versions`.
* `awaiting_review.jsonl`: the items routed to expert review without an expert decision
  yet (source "pending"), with their crowd label and lineage, so that none is lost.
* `train_rejects.jsonl`: items whose row the data layer would refuse (no text, the two
  responses identical, ...), each with the reader's code, field and reason.

Every row is checked with the reader itself (`rlhf_jax.data.formats.parse_feedback_labels`),
so a row in train.jsonl is a row the trainer accepts, and
`num_trained + num_awaiting + num_rejected == num_items` is checked before returning.

The soft target: P(a preferred) = q[a] / (q[a] + q[b]) of the item's soft label q, the
posterior of a model or the vote shares of a vote (a vote's posterior is its one-hot
decision, which would throw the split away); a tie label keeps 0.5. An expert decision
replaces q by its own row (`routing.resolve_expert_reviews`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rlhf_jax.feedback import types
from rlhf_jax.io import ingest

__all__ = ["AWAITING_FILE", "TRAIN_FILE", "TRAIN_REJECTS_FILE", "TrainingFileReport", "is_pairwise_task",
           "training_rows", "write_training_file"]

TRAIN_FILE = "train.jsonl"
AWAITING_FILE = "awaiting_review.jsonl"
TRAIN_REJECTS_FILE = "train_rejects.jsonl"
# Label sources of `routing.LABEL_SOURCES` that reach training.
_FINAL_SOURCES = ("crowd", "expert")


@dataclasses.dataclass(frozen=True)
class TrainingFileReport:
  """Where every item went: `num_trained + num_awaiting + num_rejected == num_items`.

  Attributes:
    path, awaiting_path, rejects_path: the three files written.
    num_items: items aggregated.
    num_trained: rows of train.jsonl (crowd and expert labels).
    num_expert: of those, labels decided by an expert.
    num_awaiting: rows of awaiting_review.jsonl.
    num_rejected: rows of train_rejects.jsonl.
    reasons: rejected items per reason code (`missing_field`, `identical_completions`, ...).
  """

  path: Path
  awaiting_path: Path
  rejects_path: Path
  num_items: int
  num_trained: int
  num_expert: int
  num_awaiting: int
  num_rejected: int
  reasons: Mapping[str, int]

  def __post_init__(self):
    total = self.num_trained + self.num_awaiting + self.num_rejected
    if total != self.num_items:
      raise AssertionError(f"training file accounting: {self.num_trained} trained + {self.num_awaiting} "
                           f"awaiting + {self.num_rejected} rejected = {total}, expected {self.num_items} items.")

  def to_json(self) -> dict[str, Any]:
    return {"path": str(self.path), "awaiting_path": str(self.awaiting_path),
            "rejects_path": str(self.rejects_path), "num_items": self.num_items,
            "num_trained": self.num_trained, "num_expert": self.num_expert,
            "num_awaiting": self.num_awaiting, "num_rejected": self.num_rejected,
            "reasons": dict(self.reasons)}


def is_pairwise_task(class_names: Sequence[str]) -> bool:
  """Whether the classes are those of a pairwise preference: a, b and optionally tie."""
  names = set(class_names)
  return {"a", "b"} <= names <= set(types.PAIRWISE_CLASS_NAMES)


def _check_lengths(num_items: int, **arrays: Any) -> None:
  for name, array in arrays.items():
    if len(array) != num_items:
      raise ValueError(f"`{name}` has {len(array)} rows, expected one per item ({num_items}).")


def training_rows(
    annotations: types.EncodedAnnotations,
    *,
    labels: Any,
    confidence: Any,
    soft_labels: Any,
    label_source: Sequence[str],
    lineage: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
  """Sorts the items into (train rows, awaiting rows, reject rows); see the module docstring.

  Args:
    annotations: the encoded annotations (item ids, class names, per-item payloads with
      `prompt`, `response_a`, `response_b`, and the annotators behind each item).
    labels: [I] int final label per item (expert labels merged in).
    confidence: [I] float final confidence (the example weight).
    soft_labels: [I, K] float soft label per item (posteriors, or vote shares for votes;
      expert rows already replaced).
    label_source: [I] "crowd" | "expert" | "pending".
    lineage: [I] `records.item_lineage` entries ("annotation_ids", "guideline_versions").

  Returns:
    Three lists of JSON-ready dicts; every item is in exactly one.
  """
  from rlhf_jax.data import formats, sources  # pylint: disable=g-import-not-at-top

  class_names = tuple(annotations.class_names)
  if not is_pairwise_task(class_names):
    raise ValueError(f"a training file needs a pairwise preference task (classes a, b and maybe tie), "
                     f"got classes {list(class_names)}.")
  num_items = annotations.num_items
  labels = np.asarray(labels).astype(np.int64)
  confidence = np.asarray(confidence, np.float64)
  soft_labels = np.asarray(soft_labels, np.float64)
  _check_lengths(num_items, labels=labels, confidence=confidence, soft_labels=soft_labels,
                 label_source=label_source, lineage=lineage)
  a, b = class_names.index("a"), class_names.index("b")
  payloads = annotations.item_payloads or ({},) * num_items
  # The distinct annotators behind each item, in file order.
  annotators_of: list[list[str]] = [[] for _ in range(num_items)]
  for item, annotator in zip(np.asarray(annotations.items).tolist(), np.asarray(annotations.annotators).tolist()):
    name = annotations.annotator_ids[annotator]
    if name not in annotators_of[item]:
      annotators_of[item].append(name)

  train, awaiting, rejects = [], [], []
  for i, item_id in enumerate(annotations.item_ids):
    label = class_names[labels[i]]
    p_a, p_b = soft_labels[i, a], soft_labels[i, b]
    target = 0.5 if label == "tie" else float(p_a / max(p_a + p_b, 1e-12))
    row: dict[str, Any] = {"item": item_id}
    for field in ("prompt", "response_a", "response_b"):
      if payloads[i].get(field) is not None:
        row[field] = payloads[i][field]
    row.update({
        "label": label,
        "target_prob": target,
        "confidence": float(confidence[i]),
        "label_source": label_source[i],
        "annotation_ids": list(lineage[i]["annotation_ids"]),
        "annotator_ids": annotators_of[i],
        "guideline_versions": list(lineage[i].get("guideline_versions", [])),
    })
    if label_source[i] not in _FINAL_SOURCES:
      awaiting.append({**row, "reason": "routed to expert review; no expert decision yet"})
      continue
    try:
      formats.parse_feedback_labels(row)
    except sources.RecordError as error:
      rejects.append({"item": item_id, "field": error.field, "code": error.code, "reason": error.reason,
                      "record": row})
      continue
    train.append(row)
  return train, awaiting, rejects


def write_training_file(
    output_dir: str | os.PathLike[str],
    annotations: types.EncodedAnnotations,
    *,
    labels: Any,
    confidence: Any,
    soft_labels: Any,
    label_source: Sequence[str],
    lineage: Sequence[Mapping[str, Any]],
) -> TrainingFileReport:
  """Writes train.jsonl, awaiting_review.jsonl and train_rejects.jsonl into `output_dir`.

  Arguments as in `training_rows`. Returns the `TrainingFileReport` (whose construction
  checks that every item is in exactly one file).
  """
  output_dir = Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  train, awaiting, rejects = training_rows(
      annotations, labels=labels, confidence=confidence, soft_labels=soft_labels,
      label_source=label_source, lineage=lineage)
  paths = output_dir / TRAIN_FILE, output_dir / AWAITING_FILE, output_dir / TRAIN_REJECTS_FILE
  for path, rows in zip(paths, (train, awaiting, rejects)):
    ingest.write_json_lines(path, rows)
  reasons: dict[str, int] = {}
  for reject in rejects:
    reasons[reject["code"]] = reasons.get(reject["code"], 0) + 1
  return TrainingFileReport(
      path=paths[0], awaiting_path=paths[1], rejects_path=paths[2], num_items=annotations.num_items,
      num_trained=len(train), num_expert=sum(row["label_source"] == "expert" for row in train),
      num_awaiting=len(awaiting), num_rejected=len(rejects), reasons=reasons)
