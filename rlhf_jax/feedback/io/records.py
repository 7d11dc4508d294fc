"""Annotation records: one schema, four file formats, validation, encoding and lineage.

Every reader turns a file of human annotations into `types.EncodedAnnotations` (flat
int32 arrays `items, annotators, labels` plus id tables) and a `ReadReport` that says
what was read, what was accepted and why the rest was rejected.

Pairwise annotation schema (formats `jsonl`, `csv` with these column names, `parquet`):

| field | required | type / accepted values | meaning |
|---|---|---|---|
| `annotation_id` | no | string or integer; default `FILE:LINE` (Parquet: `FILE:ROW`, 1-based) | unique id of this annotation (lineage) |
| `item_id` | yes | string or integer | the comparison id |
| `prompt` | no | string | the prompt shown |
| `response_a`, `response_b` | no | string | the two responses, in the order shown |
| `response_a_id`, `response_b_id` | no | string or integer | ids of the two responses (instead of or besides the texts) |
| `annotator_id` | yes | string or integer | who labelled |
| `choice` | yes | `a`, `b`, `tie` (case-insensitive) | which response was preferred |
| `strength` | no | number in [0, 1] | strength of the preference |
| `timestamp` | no | ISO 8601 string (no offset = UTC) or epoch seconds (number) | when it was labelled |
| `response_ms` | no | non-negative number | time the annotator took, in ms |
| `is_golden` | no | bool (`true/false`, `1/0`, `yes/no` in CSV); absent = false | item has a known answer |
| `golden_answer` | when `is_golden` | `a`, `b`, `tie` (any case) | the known answer (unused unless `is_golden`) |
| `guideline_version` | no | string | annotation-guideline version |

Labels use the classes of `types`: `a` -> A_PREFERRED (0), `b` -> B_PREFERRED (1),
`tie` -> TIE (2), always relative to the order in which the row lists the responses;
`class_names` is `("a", "b", "tie")` whether or not ties occur, unless the classes are
declared (`classes=("a", "b")` for a task without ties: a `tie` choice or golden answer
is then rejected). Other fields and columns are ignored. In CSV an empty cell and in
JSONL/Parquet a null both mean "absent".

Crowdsourcing schema (format `crowd_csv`, as in `../shared/data/crowd/*/answers.csv`):
a CSV with header `question,worker,answer` (other columns ignored), one row per
annotation; `question` is the item id, `worker` the annotator id and `answer` one of K
classes written as arbitrary strings. Class order: numeric if every answer is an
integer (`"2" < "10"`), lexicographic otherwise; `class_names` holds the answers as
written. With declared classes (`classes=("0", "1")`, in that order, case-sensitive) an
answer outside them is rejected (field `answer`) instead of becoming a new class: a typo
such as `O` among `0`/`1` would otherwise be a class of its own, and an item's one stray
answer would decide it. Truth files (`question,truth`) are read with `read_truth`;
per-annotator truth of simulated populations (`annotator,type,change_time`) with
`read_annotator_truth`.

Reading goes through the one ingestion path of `rlhf_jax.io.ingest`, shared with the
data layer (so a bad line gets the same reason whichever layer reads it; its module
docstring has the table of row-level reasons). JSONL and CSV files (optionally `.gz`)
are read as bytes and split into lines so that one bad line never aborts the file: each
line is decoded as UTF-8 on its own and parsed on its own (`json.loads` per line, the
`csv` module for a CSV record; a quoted CSV field may span lines, and the record is then
numbered by its first line). Blank lines are not records: they are skipped and not
counted, but count for line numbers. Lines are 1-based and a CSV header is line 1.
`crowd_csv` first tries a fast path (`pyarrow.csv` straight to dictionary-encoded
columns: int32 codes per annotation and each distinct id once, lines and default ids
kept as a range, no Python object per annotation) and falls back to the per-line reader
only if the file is not clean (a parse error, invalid UTF-8, an empty value, a quoted
newline or a blank line), so that every reject gets its exact line. Parquet files are read with pyarrow (the Arrow
reader behind `datasets`), and a row number N is reported as "row N".

Validation. A record that cannot be used is rejected with `{"file", "line", "field",
"reason", "raw"}` (`field` is null when the whole line is at fault; the line layout of
`ingest.Reject`) for: non-UTF-8 bytes, bad JSON (or not a JSON object), wrong CSV column
count, a missing required field, an unknown choice, an answer outside the declared
classes, a bad timestamp, a negative or non-numeric `response_ms`, a `strength` outside
[0, 1], a golden item without `golden_answer`, an `annotation_id` used twice, and a
pairwise `item_id` shown with a different prompt or responses than on its first line
(its label would refer to another pair). The report always holds `num_accepted +
num_rejected == num_read`.

Duplicates and self-contradictions. A duplicate is a second annotation of one item by
one annotator. `duplicate_policy` decides which survive:

| policy | kept | the others |
|---|---|---|
| `keep_last` (default) | the latest by timestamp when every copy has one, else the last line | rejected as "duplicate of ID" |
| `keep_first` | the earliest by timestamp when every copy has one, else the first line | rejected as "duplicate of ID" |
| `keep_all` | every copy | none (only flagged) |
| `reject_all` | none | all copies rejected |

`ReadReport.duplicates` lists the ids of every annotation in a duplicate group (kept or
not), in file order. A self-contradiction is an annotator who gave inconsistent answers
on the same item, or (pairwise data with both responses known) on the same
(prompt, response, response) pair shown under different item ids, possibly with a and
b swapped (an answer `a` on (x, y) agrees with `b` on (y, x); `tie` agrees with `tie`).
Contradictions are found among all valid records before the duplicate policy runs and
are only flagged in `ReadReport.contradictions`; nothing is dropped for them beyond
what the duplicate policy drops.

Encoding. Item and annotator indices follow first-seen order among the accepted
records (stable when a file is appended to, and the same for any format holding the same
rows), computed with `np.unique(..., return_index=True, return_inverse=True)` for the
pairwise formats and with Arrow's dictionary encoding (also first-seen, and several
times faster on a million strings; on the fast path pyarrow's CSV reader encodes as it
parses) for `crowd_csv`. Whitespace around ids and choices is
stripped; prompts and responses are kept exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from rlhf_jax.feedback import types
from rlhf_jax.io import ingest
from rlhf_jax.io.ingest import RecordError, Row

__all__ = [
    "DUPLICATE_POLICIES",
    "FORMATS",
    "FeedbackInputError",
    "ReadReport",
    "declared_classes",
    "item_lineage",
    "read_annotations",
    "read_annotator_truth",
    "read_truth",
]

FORMATS = ("jsonl", "csv", "parquet", "crowd_csv")
DUPLICATE_POLICIES = ("keep_last", "keep_first", "keep_all", "reject_all")

_CHOICES = {name: index for index, name in enumerate(types.PAIRWISE_CLASS_NAMES)}
_REQUIRED = ("item_id", "annotator_id", "choice")
_PAYLOAD_FIELDS = ("prompt", "response_a", "response_b", "response_a_id", "response_b_id")
_OPTIONAL = (
    "annotation_id", *_PAYLOAD_FIELDS, "strength", "timestamp", "response_ms", "is_golden",
    "golden_answer", "guideline_version",
)
_CROWD_COLUMNS = ("question", "worker", "answer")
_TRUE = frozenset(("true", "t", "yes", "y", "1"))
_FALSE = frozenset(("false", "f", "no", "n", "0"))


class FeedbackInputError(ingest.IngestError):
  """An annotation file that cannot be used as a whole (empty, no usable rows, bad header)."""


@dataclasses.dataclass(frozen=True)
class ReadReport:
  """What `read_annotations` read, accepted and rejected.

  Attributes:
    annotations: the accepted annotations, encoded.
    num_read: records read (data lines or rows; blank lines and the CSV header excluded).
    num_accepted: records in `annotations`.
    num_rejected: records in `rejects`; `num_accepted + num_rejected == num_read`.
    rejects: one dict per rejected record: `file`, `line` (1-based line, or row for
      Parquet), `field` (None when the whole line is at fault), `reason`, `raw`.
    duplicates: ids of every annotation in a group of one annotator labelling one item
      more than once (kept or rejected by the policy), in file order.
    contradictions: one dict per annotator and item (or pair of responses) with
      inconsistent answers: `annotator_id`, `kind` (`same_item` or `same_pair`),
      `item_ids`, `annotation_ids`, `lines`, `choices` (as written, each in its own row's
      a/b order).
    path, format, duplicate_policy, rejects_path: how the file was read.
    fingerprint: sha256 of the file's bytes (`rlhf_jax.io.ingest.fingerprint`), the
      lineage of every label read from it; "" for a report built in memory.
  """

  annotations: types.EncodedAnnotations
  num_read: int
  num_accepted: int
  num_rejected: int
  rejects: list[dict[str, Any]]
  duplicates: list[str]
  contradictions: list[dict[str, Any]]
  path: str = ""
  format: str = ""
  duplicate_policy: str = "keep_last"
  rejects_path: str | None = None
  fingerprint: str = ""

  def __post_init__(self):
    ingest.check_accounting(self.num_read, self.num_accepted, self.num_rejected)
    assert self.num_accepted == self.annotations.num_annotations
    assert self.num_rejected == len(self.rejects)

  def reject_reasons(self) -> dict[str, int]:
    """Number of rejects per field (`"line"` for whole-line problems), most frequent first."""
    counts = collections.Counter(
        "line" if r["field"] is None else str(r["field"]) for r in self.rejects)
    return dict(counts.most_common())

  def summary(self) -> str:
    """One paragraph for a human: counts, rejects, duplicates, contradictions, warnings."""
    enc = self.annotations
    parts = [
        f"Read {self.num_read} annotation records from {self.path} (format {self.format}): "
        f"{self.num_accepted} accepted, {self.num_rejected} rejected."
    ]
    if self.rejects:
      reasons = ", ".join(f"{field}: {n}" for field, n in self.reject_reasons().items())
      where = (f"written to {self.rejects_path}" if self.rejects_path
               else "not written (pass rejects_path to keep them)")
      parts.append(f"Rejects by field ({reasons}) {where}.")
    parts.append(
        f"Encoded {enc.num_items} items, {enc.num_annotators} annotators, "
        f"{enc.num_classes} classes ({', '.join(enc.class_names)}).")
    if self.duplicates:
      dropped = sum(1 for r in self.rejects if r["field"] == "item_id,annotator_id")
      parts.append(
          f"{len(self.duplicates)} annotations are repeats of one item by one annotator; "
          f"policy {self.duplicate_policy} rejected {dropped} of them.")
    if self.contradictions:
      annotators = len({c["annotator_id"] for c in self.contradictions})
      parts.append(
          f"{len(self.contradictions)} self-contradictions (same annotator, same item or "
          f"pair, inconsistent answers) by {annotators} annotators are flagged, not dropped.")
    if enc.num_annotators < 2:
      parts.append(
          "Warning: only one annotator; agreement metrics (kappa, alpha) and annotator "
          "models need at least two.")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------
# Public API.


def read_annotations(
    path: str | os.PathLike[str],
    *,
    format: str,  # pylint: disable=redefined-builtin
    rejects_path: str | os.PathLike[str] | None = None,
    duplicate_policy: str = "keep_last",
    classes: Sequence[str] | None = None,
) -> ReadReport:
  """Reads, validates and encodes a file of annotations (see the module docstring).

  Args:
    path: the file (`.gz` is decompressed for `jsonl`, `csv` and `crowd_csv`).
    format: one of `FORMATS`: `jsonl`, `csv`, `parquet` (pairwise schema) or
      `crowd_csv` (`question,worker,answer`, K classes).
    rejects_path: when given, the rejects are written there as JSONL (an empty file
      when there are none), also when the read then fails for lack of usable rows.
    duplicate_policy: one of `DUPLICATE_POLICIES`, for an annotator labelling one item
      more than once.
    classes: the declared classes, or None. `crowd_csv`: the answers allowed, in class
      order (case-sensitive). Pairwise formats: a subset of `a, b, tie` holding `a` and
      `b` (any case; the order stays a, b, tie). An answer (or golden answer) outside
      them is rejected with its line. None: every answer seen is a class (`crowd_csv`),
      or the schema's `a, b, tie` (pairwise).

  Returns:
    A `ReadReport` with the encoded annotations and the accounting.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: unknown `format` or `duplicate_policy`, or malformed `classes`.
    FeedbackInputError: the file has no records, no record is usable, the header lacks
      a required column, or the file is not readable in `format`.
  """
  if format not in FORMATS:
    raise ValueError(f"Unknown annotation format {format!r}; expected one of {', '.join(FORMATS)}.")
  if duplicate_policy not in DUPLICATE_POLICIES:
    raise ValueError(
        f"Unknown duplicate_policy {duplicate_policy!r}; expected one of "
        f"{', '.join(DUPLICATE_POLICIES)}.")
  declared = None if classes is None else declared_classes(classes, format=format)
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Annotation file not found: {path}")
  if path.is_dir():
    raise IsADirectoryError(f"Annotation path is a directory, expected a file: {path}")

  if format == "crowd_csv":
    parsed = _read_crowd_csv(path)
    if declared is not None:
      parsed = _declare_crowd_classes(parsed, declared)
  elif format == "parquet":
    parsed = _read_pairwise(path, _parquet_records(path), unit="row", declared=declared)
  elif format == "jsonl":
    parsed = _read_pairwise(path, ingest.json_line_rows(_read_bytes(path)), unit="line",
                            declared=declared)
  else:
    parsed = _read_pairwise(path, _csv_dict_records(path, _read_bytes(path)), unit="line",
                            declared=declared)

  report = _finish(parsed, path, format, duplicate_policy, rejects_path)
  return report


def read_truth(path: str | os.PathLike[str]) -> dict[str, str]:
  """Reads a crowdsourcing truth file (`question,truth`) into {question: truth}.

  Whitespace around values is stripped. A question listed twice with the same truth is
  accepted; with different truths it is an error.

  Raises:
    FileNotFoundError: `path` does not exist.
    FeedbackInputError: bad header, a malformed or non-UTF-8 line (named by line number),
      conflicting truths, or no rows.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Truth file not found: {path}")
  records = ingest.csv_records(_read_bytes(path))
  header = ingest.csv_header(path, records, ("question", "truth"), FeedbackInputError)
  col_q, col_t = header.index("question"), header.index("truth")
  truth: dict[str, str] = {}
  first_line: dict[str, int] = {}
  for line, fields in ingest.reference_csv_rows(path, records, header, FeedbackInputError):
    question, answer = fields[col_q].strip(), fields[col_t].strip()
    if not question or not answer:
      field = "question" if not question else "truth"
      raise FeedbackInputError(f"{path}:{line}: field {field!r} is empty; expected a value.")
    if question in truth and truth[question] != answer:
      raise FeedbackInputError(
          f"{path}:{line}: question {question!r} has truth {answer!r} but line "
          f"{first_line[question]} says {truth[question]!r}.")
    truth.setdefault(question, answer)
    first_line.setdefault(question, line)
  if not truth:
    raise FeedbackInputError(f"{path}: no truth rows after the header.")
  return truth


def declared_classes(classes: str | Sequence[str], *, format: str) -> tuple[str, ...]:  # pylint: disable=redefined-builtin
  """Checks a declaration of classes; returns the class names in class order.

  Args:
    classes: names, as a sequence or one comma-separated string ("0,1"); whitespace
      around each name is stripped.
    format: one of `FORMATS`. For the pairwise formats the names must be among the
      schema's choices `a, b, tie` (any case) and include `a` and `b`; they are returned
      in the schema's order (the class indices of `types` do not move).

  Raises:
    ValueError: fewer than two names, an empty or repeated name, or (pairwise) a name
      that is not a schema choice, naming what is wrong.
  """
  if isinstance(classes, str):
    names = [c.strip() for c in classes.split(",")]
  else:
    try:
      names = [str(c).strip() for c in classes]
    except TypeError:
      raise ValueError(f"classes must be class names separated by commas (e.g. 0,1), got "
                       f"{classes!r}.") from None
  if any(not name for name in names):
    raise ValueError(f"classes {classes!r} has an empty name; expected names separated by "
                     "single commas, e.g. 0,1.")
  if len(names) < 2:
    raise ValueError(f"classes {classes!r} declares {len(names)} class; expected at least two "
                     "names separated by commas, e.g. 0,1.")
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"classes {classes!r} names {', '.join(repeated)} more than once; "
                     "expected distinct names.")
  if format == "crowd_csv":
    return tuple(names)
  lowered = [n.lower() for n in names]
  unknown = [n for n, low in zip(names, lowered) if low not in _CHOICES]
  if unknown:
    raise ValueError(f"classes {classes!r}: {', '.join(unknown)} is not a choice of the pairwise "
                     "schema; expected a subset of a, b, tie that holds a and b.")
  if "a" not in lowered or "b" not in lowered:
    raise ValueError(f"classes {classes!r}: pairwise classes must include a and b (tie is "
                     "optional).")
  return tuple(name for name in types.PAIRWISE_CLASS_NAMES if name in lowered)


def read_annotator_truth(path: str | os.PathLike[str]) -> dict[str, tuple[str, float]]:
  """Reads the truth about the annotators of a simulated population.

  A CSV with header `annotator,type,change_time` (other columns ignored): the
  annotator id, its type (e.g. `good`, `spammer`, `drifting`) and the time its quality
  changed (epoch seconds or ISO 8601; empty when it never changed), as written by
  `simulate.write_annotator_truth`.

  Returns:
    {annotator id: (type, change time in epoch seconds or NaN)}.

  Raises:
    FileNotFoundError: `path` does not exist.
    FeedbackInputError: bad header, a malformed line (named by line number), an
      annotator listed twice, or no rows.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Annotator truth file not found: {path}")
  records = ingest.csv_records(_read_bytes(path))
  header = ingest.csv_header(path, records, ("annotator", "type", "change_time"), FeedbackInputError)
  columns = [header.index(c) for c in ("annotator", "type", "change_time")]
  truth: dict[str, tuple[str, float]] = {}
  for line, fields in ingest.reference_csv_rows(path, records, header, FeedbackInputError):
    annotator, kind, change = (fields[k].strip() for k in columns)
    if not annotator or not kind:
      field = "annotator" if not annotator else "type"
      raise FeedbackInputError(f"{path}:{line}: field {field!r} is empty; expected a value.")
    if annotator in truth:
      raise FeedbackInputError(f"{path}:{line}: annotator {annotator!r} is listed twice.")
    try:
      change_time = _timestamp({"timestamp": change})
    except RecordError as e:
      raise FeedbackInputError(f"{path}:{line}: change_time: {e.reason}.") from None
    truth[annotator] = (kind, math.nan if change_time is None else change_time)
  if not truth:
    raise FeedbackInputError(f"{path}: no annotator rows after the header.")
  return truth


def item_lineage(annotations: types.EncodedAnnotations) -> list[dict[str, Any]]:
  """For each item index: its id, the ids of its annotations and its guideline versions.

  Every aggregated label `labels[i]` rests on the annotations listed here for item `i`,
  so a training example can be traced back to the rows and the guideline versions that
  produced it.

  Returns:
    A list of length `num_items`; entry `i` is `{"item": i, "item_id": str,
    "annotation_ids": [str, ...] in file order, "guideline_versions": sorted distinct
    non-empty versions}`.
  """
  items = np.asarray(annotations.items)
  order = np.argsort(items, kind="stable")
  bounds = np.searchsorted(items[order], np.arange(annotations.num_items + 1))
  ids = annotations.annotation_ids
  versions = annotations.guideline_versions
  lineage = []
  for i, item_id in enumerate(annotations.item_ids):
    rows = order[bounds[i]:bounds[i + 1]]
    entry: dict[str, Any] = {
        "item": i,
        "item_id": item_id,
        "annotation_ids": [ids[r] for r in rows],
        "guideline_versions": (
            sorted({versions[r] for r in rows} - {""}) if versions is not None else []),
    }
    lineage.append(entry)
  return lineage


# ----------------------------------------------------------------------------------------
# Raw records.


def _read_bytes(path: Path) -> bytes:
  return ingest.read_bytes(path, FeedbackInputError)


def _csv_dict_records(path: Path, data: bytes) -> Iterator[Row]:
  records = ingest.csv_records(data)
  header = ingest.csv_header(
      path, records, _REQUIRED, FeedbackInputError,
      hint=" For the question,worker,answer form use format='crowd_csv'.")
  known = [(k, name) for k, name in enumerate(header) if name in _REQUIRED or name in _OPTIONAL]
  for line, raw, fields, error in records:
    if error is not None:
      yield Row("line", line, None, error, raw)
    elif len(fields) != len(header):
      yield Row("line", line, None, ingest.column_count_error(header, len(fields)), raw)
    else:
      yield Row("line", line, {name: fields[k] for k, name in known}, None, raw)


def _parquet_records(path: Path) -> Iterator[Row]:
  table = ingest.read_parquet(path, FeedbackInputError)
  missing = [c for c in _REQUIRED if c not in table.column_names]
  if missing:
    raise FeedbackInputError(
        f"{path}: the Parquet file lacks required column(s) {', '.join(missing)}; "
        f"has {', '.join(table.column_names)}.")
  table = table.select([c for c in table.column_names if c in _REQUIRED or c in _OPTIONAL])
  for index, row in enumerate(table.to_pylist()):
    yield Row("row", index + 1, row, None, json.dumps(row, default=str, ensure_ascii=False))


# ----------------------------------------------------------------------------------------
# Field coercion (JSON values, CSV strings and Arrow values alike).


def _absent(value: Any) -> bool:
  return value is None or (isinstance(value, str) and not value.strip())


_id = ingest.read_id


def _text(row: dict, field: str) -> str | None:
  return ingest.read_string(row, field, required=False) or None


def _choice(row: dict, field: str, declared: tuple[str, ...] | None = None) -> int | None:
  value = row.get(field)
  if _absent(value):
    return None
  if isinstance(value, str) and value.strip().lower() in _CHOICES:
    name = value.strip().lower()
    if declared is not None and name not in declared:
      raise ingest.undeclared_class(field, value, declared)
    return _CHOICES[name]
  raise ingest.unknown_choice(field, value, declared or types.PAIRWISE_CLASS_NAMES)


def _number(row: dict, field: str) -> float | None:
  value = row.get(field)
  if _absent(value):
    return None
  if isinstance(value, bool):
    raise RecordError("wrong_type", field, f"expected a number, got boolean {value!r}")
  if isinstance(value, (int, float, np.integer, np.floating)):
    number = float(value)
  elif isinstance(value, str):
    try:
      number = float(value)
    except ValueError:
      raise RecordError("wrong_type", field, f"expected a number, got {value!r}") from None
  else:
    raise RecordError("wrong_type", field, f"expected a number, got {type(value).__name__}")
  if not math.isfinite(number):
    raise RecordError("bad_value", field, f"expected a finite number, got {value!r}")
  return number


def _timestamp(row: dict) -> float | None:
  value = row.get("timestamp")
  if _absent(value):
    return None
  expected = "expected an ISO 8601 date-time (e.g. 2024-05-01T12:30:00Z) or epoch seconds"
  if isinstance(value, datetime.datetime):
    moment = value
  elif isinstance(value, bool):
    raise RecordError("wrong_type", "timestamp", f"{expected}, got boolean {value!r}")
  elif isinstance(value, (int, float, np.integer, np.floating)):
    if not math.isfinite(float(value)):
      raise RecordError("bad_value", "timestamp", f"{expected}, got {value!r}")
    return float(value)
  elif isinstance(value, str):
    text = value.strip()
    try:
      number = float(text)
    except ValueError:
      number = None
    if number is not None:
      if not math.isfinite(number):
        raise RecordError("bad_value", "timestamp", f"{expected}, got {value!r}")
      return number
    try:
      moment = datetime.datetime.fromisoformat(text)
    except ValueError:
      raise RecordError("bad_value", "timestamp", f"{expected}, got {value!r}") from None
  else:
    raise RecordError("wrong_type", "timestamp", f"{expected}, got {type(value).__name__}")
  if moment.tzinfo is None:
    moment = moment.replace(tzinfo=datetime.timezone.utc)
  return moment.timestamp()


def _bool(row: dict, field: str) -> bool | None:
  value = row.get(field)
  if _absent(value):
    return None
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
    return bool(value)
  if isinstance(value, str):
    text = value.strip().lower()
    if text in _TRUE:
      return True
    if text in _FALSE:
      return False
  raise RecordError("wrong_type", field, f"expected a boolean (true/false, 1/0, yes/no), got {value!r}")


# ----------------------------------------------------------------------------------------
# Validation of records into columns.


@dataclasses.dataclass
class _Parsed:
  """Valid records (before the duplicate policy) as columns, plus the rejects so far."""

  name: str
  unit: str  # "line" or "row"
  num_read: int
  rejects: list[dict[str, Any]]
  lines: np.ndarray | range  # [M] line / row of each valid record (int64 array, or a range)
  # [M] strings (NumPy or Arrow array), or already encoded: (int32 codes [M], ids [U]).
  item_ids: Any
  annotator_ids: Any
  labels: np.ndarray  # [M] int32
  class_names: tuple[str, ...]
  annotation_ids: list[str] | None  # None: the default `FILE:LINE` of every record
  raw: Callable[[int], str]  # valid-record position -> raw text
  fingerprint: str | None = None  # sha256 of the file, when the reader computed it
  # Pairwise only.
  optional: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  guideline_versions: list[str] | None = None
  payloads: dict[str, dict[str, str]] | None = None


def _reject(rejects: list, name: str, line: int, error: RecordError, raw: str) -> None:
  """Appends the reject of one record, in the line layout of `rlhf_jax.io.ingest`."""
  rejects.append(ingest.Reject(file=name, location="line", number=line, field=error.field, code=error.code,
                               reason=error.reason, raw=raw).to_line_json())


def _read_pairwise(path: Path, records: Iterator[Row], unit: str,
                   declared: tuple[str, ...] | None = None) -> _Parsed:
  name = path.name
  rejects: list[dict[str, Any]] = []
  num_read = 0
  lines, annotation_ids, raws, item_ids, annotator_ids, labels = [], [], [], [], [], []
  strength, timestamps, response_ms, is_golden, golden, versions = [], [], [], [], [], []
  present = dict.fromkeys(("strength", "timestamp", "response_ms", "is_golden",
                           "guideline_version"), False)
  payloads: dict[str, dict[str, str]] = {}
  payload_lines: dict[str, int] = {}
  id_lines: dict[str, int] = {}
  nan = float("nan")

  for record in records:
    num_read += 1
    line, raw, row = record.number, record.raw, record.record
    try:
      if record.error is not None:
        raise record.error
      item_id = _id(row, "item_id")
      if item_id is None:
        raise ingest.missing_field("item_id", "the comparison id")
      annotator_id = _id(row, "annotator_id")
      if annotator_id is None:
        raise ingest.missing_field("annotator_id", "the annotator's id")
      choice = _choice(row, "choice", declared)
      if choice is None:
        raise ingest.missing_field("choice", f"one of {', '.join(declared or types.PAIRWISE_CLASS_NAMES)}")
      annotation_id = _id(row, "annotation_id") or f"{name}:{line}"
      if annotation_id in id_lines:
        raise RecordError("duplicate_id", "annotation_id", f"annotation_id {annotation_id!r} already used at "
                          f"{unit} {id_lines[annotation_id]}; expected unique ids")
      payload = {}
      for field in _PAYLOAD_FIELDS:
        if row.get(field) is None:
          continue
        value = _id(row, field) if field.endswith("_id") else _text(row, field)
        if value is not None:
          payload[field] = value
      the_strength = _number(row, "strength")
      if the_strength is not None and not 0.0 <= the_strength <= 1.0:
        raise RecordError("bad_value", "strength", f"strength {the_strength!r} is outside [0, 1]; expected a "
                          "number in [0, 1]")
      the_timestamp = _timestamp(row)
      the_ms = _number(row, "response_ms")
      if the_ms is not None and the_ms < 0:
        raise RecordError("bad_value", "response_ms", f"response_ms {the_ms!r} is negative; expected a "
                          "non-negative number of milliseconds")
      golden_flag = _bool(row, "is_golden")
      # The golden answer counts (and is checked against the declared classes) only on
      # golden rows.
      golden_answer = _choice(row, "golden_answer", declared if golden_flag else None)
      if golden_flag and golden_answer is None:
        raise RecordError("missing_field", "golden_answer", "is_golden is true but golden_answer is missing; "
                          f"expected one of {', '.join(declared or types.PAIRWISE_CLASS_NAMES)}")
      version = row.get("guideline_version")
      if version is not None and not isinstance(version, str):
        if isinstance(version, bool) or not isinstance(
            version, (int, float, np.integer, np.floating)):
          raise RecordError("wrong_type", "guideline_version",
                            f"expected a string, got {type(version).__name__}")
        version = str(version)
      version = (version or "").strip()
      known = payloads.get(item_id)
      if known is not None:
        for field, value in payload.items():
          if field in known and known[field] != value:
            raise RecordError(
                "inconsistent_item", field,
                f"item_id {item_id!r} was shown with a different {field} at {unit} "
                f"{payload_lines[item_id]}; expected the same prompt and responses (in the "
                "same order) for every annotation of one item_id")
    except RecordError as e:
      _reject(rejects, name, line, e, raw)
      continue

    if known is None:
      payloads[item_id] = payload
      payload_lines[item_id] = line
    else:
      for field, value in payload.items():
        known.setdefault(field, value)
    id_lines[annotation_id] = line
    lines.append(line)
    annotation_ids.append(annotation_id)
    raws.append(raw)
    item_ids.append(item_id)
    annotator_ids.append(annotator_id)
    labels.append(choice)
    strength.append(nan if the_strength is None else the_strength)
    timestamps.append(nan if the_timestamp is None else the_timestamp)
    response_ms.append(nan if the_ms is None else the_ms)
    is_golden.append(bool(golden_flag))
    golden.append(golden_answer if golden_flag else -1)
    versions.append(version)
    present["strength"] |= the_strength is not None
    present["timestamp"] |= the_timestamp is not None
    present["response_ms"] |= the_ms is not None
    present["is_golden"] |= golden_flag is not None
    present["guideline_version"] |= bool(version)

  optional = {}
  if present["strength"]:
    optional["strength"] = np.asarray(strength, np.float32)
  if present["timestamp"]:
    optional["timestamps"] = np.asarray(timestamps, np.float64)
  if present["response_ms"]:
    optional["response_ms"] = np.asarray(response_ms, np.float64)
  if present["is_golden"]:
    optional["is_golden"] = np.asarray(is_golden, bool)
    optional["golden_labels"] = np.asarray(golden, np.int32)
  has_payload = any(payloads.values())
  return _Parsed(
      name=name, unit=unit, num_read=num_read, rejects=rejects,
      lines=np.asarray(lines, np.int64),
      item_ids=np.asarray(item_ids, dtype=str) if item_ids else np.zeros(0, "U1"),
      annotator_ids=np.asarray(annotator_ids, dtype=str) if item_ids else np.zeros(0, "U1"),
      labels=np.asarray(labels, np.int32),
      class_names=declared or types.PAIRWISE_CLASS_NAMES,
      annotation_ids=annotation_ids,
      raw=raws.__getitem__,
      optional=optional,
      guideline_versions=versions if present["guideline_version"] else None,
      payloads=payloads if has_payload else None,
  )


def _class_order(answers: Sequence[str]) -> list[str]:
  """Numeric order when every answer is an integer, lexicographic otherwise."""
  try:
    return sorted(answers, key=lambda a: (int(a), a))
  except ValueError:
    return sorted(answers)


def _read_crowd_csv(path: Path) -> _Parsed:
  import pyarrow as pa  # pylint: disable=g-import-not-at-top

  fast = _crowd_fast_path(path)
  if fast is not None:
    return fast
  data = ingest.strip_bom(_read_bytes(path))
  name = path.name
  if b'"' not in data:
    lines, raws, values, rejects = _crowd_unquoted_lines(path, data)
  else:
    lines, raws, values, rejects = _crowd_records(path, data)
  num_read = len(lines) + len(rejects)
  # Arrow arrays: built and dictionary-encoded (first-seen order) faster than NumPy
  # string arrays and np.unique, and the same encoding as on the fast path.
  table = [pa.array(v, type=pa.string()) for v in values]
  answer_codes, answers = _encode_first_seen(table[2])
  class_names = _class_order([str(a) for a in answers])
  remap = np.asarray([class_names.index(a) for a in answers], np.int32)
  return _Parsed(
      name=name, unit="line", num_read=num_read, rejects=rejects,
      lines=np.asarray(lines, np.int64),
      item_ids=table[0], annotator_ids=table[1],
      labels=remap[answer_codes] if len(answers) else np.zeros(0, np.int32),
      class_names=tuple(class_names),
      annotation_ids=None,
      raw=raws if callable(raws) else raws.__getitem__,
  )


def _declare_crowd_classes(parsed: _Parsed, declared: tuple[str, ...]) -> _Parsed:
  """Rejects the answers outside the declared classes; classes become `declared`."""
  index = {name: k for k, name in enumerate(declared)}
  remap = np.asarray([index.get(name, -1) for name in parsed.class_names], np.int32)
  labels = remap[parsed.labels] if parsed.labels.size else parsed.labels
  outside = labels < 0
  if not outside.any():
    return dataclasses.replace(parsed, labels=labels, class_names=declared)
  for position in np.flatnonzero(outside).tolist():
    answer = parsed.class_names[parsed.labels[position]]
    _reject(parsed.rejects, parsed.name, int(parsed.lines[position]),
            ingest.undeclared_class("answer", answer, declared),
            parsed.raw(position))
  kept = np.flatnonzero(~outside)

  def take(column):
    if isinstance(column, tuple):  # (codes, ids): renumbered first-seen among the kept
      codes, ids = column
      codes, old_codes = _recode_first_seen(codes[kept], len(ids))
      return codes, ids[old_codes]
    if isinstance(column, np.ndarray):
      return column[kept]
    return column.take(kept)  # an Arrow array

  old_raw = parsed.raw
  kept_list = kept.tolist()
  lines = parsed.lines
  return dataclasses.replace(
      parsed, lines=(lines.start + kept if isinstance(lines, range) else lines[kept]),
      item_ids=take(parsed.item_ids), annotator_ids=take(parsed.annotator_ids),
      labels=labels[kept], class_names=declared,
      annotation_ids=(None if parsed.annotation_ids is None
                      else [parsed.annotation_ids[k] for k in kept_list]),
      raw=lambda position: old_raw(kept_list[position]))


def _missing_crowd_field(row: Sequence[str]) -> RecordError:
  field = _CROWD_COLUMNS[list(row).index("")]
  return ingest.missing_field(field, "a non-empty value")


def _crowd_records(path: Path, data: bytes) -> tuple[list, list, list, list]:
  """Per-record reader for a crowd CSV with quotes: (lines, raws, columns, rejects)."""
  name = path.name
  records = ingest.csv_records(data)
  header = ingest.csv_header(path, records, _CROWD_COLUMNS, FeedbackInputError)
  columns = [header.index(c) for c in _CROWD_COLUMNS]
  rejects: list[dict[str, Any]] = []
  lines, raws, values = [], [], ([], [], [])
  for line, raw, fields, error in records:
    if error is not None:
      _reject(rejects, name, line, error, raw)
      continue
    if len(fields) != len(header):
      _reject(rejects, name, line, ingest.column_count_error(header, len(fields)), raw)
      continue
    row = [fields[k].strip() for k in columns]
    if not all(row):
      _reject(rejects, name, line, _missing_crowd_field(row), raw)
      continue
    lines.append(line)
    raws.append(raw)
    for column, value in zip(values, row):
      column.append(value)
  return lines, raws, values, rejects


def _crowd_unquoted_lines(path: Path, data: bytes) -> tuple[list, Any, list, list]:
  """The tight per-line loop for a crowd CSV without quotes (the common dirty case).

  Without quotes a record is one line and its fields are `line.split(",")`, exactly as
  the csv module would split them. The file is decoded at once when it is valid UTF-8,
  else line by line so that only the bad lines are rejected.
  """
  name = path.name
  try:
    text_lines: list[str | None] = data.decode("utf-8").split("\n")
    undecodable: dict[int, tuple[RecordError, str]] = {}
  except UnicodeDecodeError:
    text_lines, undecodable = [], {}
    chunks = data.split(b"\n")
    for index, chunk in enumerate(chunks):
      try:
        text_lines.append(ingest.decode_line(chunk))
      except RecordError as e:
        text_lines.append(None)
        undecodable[index] = (e, ingest.raw_text(chunk.rstrip(b"\r")))
  if text_lines and text_lines[-1] == "":
    text_lines.pop()
  if not text_lines or text_lines[0] is None:
    records = [ingest.CsvRecord(1, "", None, undecodable[0][0])] if text_lines else []
    ingest.csv_header(path, records, _CROWD_COLUMNS, FeedbackInputError)  # raises
  header = [c.strip() for c in text_lines[0].rstrip("\r").split(",")]
  missing = [c for c in _CROWD_COLUMNS if c not in header]
  if missing:
    ingest.csv_header(path, [ingest.CsvRecord(1, text_lines[0], header, None)], _CROWD_COLUMNS,
                      FeedbackInputError)  # raises
  width = len(header)
  col_q, col_w, col_a = (header.index(c) for c in _CROWD_COLUMNS)
  # Stripping three fields per line is a third of the loop; skip it when the file has no
  # whitespace (and so no \r) at all.
  strip = b" " in data or b"\t" in data or b"\r" in data
  rejects: list[dict[str, Any]] = []
  lines, questions, workers, answers = [], [], [], []
  for index in range(1, len(text_lines)):
    text = text_lines[index]
    if text is None:
      _reject(rejects, name, index + 1, *undecodable[index])
      continue
    fields = text.split(",")
    if len(fields) != width:
      if not text.strip():
        continue  # a blank line is not a record
      _reject(rejects, name, index + 1, ingest.column_count_error(header, len(fields)), text.rstrip("\r"))
      continue
    if strip:
      question, worker, answer = (fields[col_q].strip(), fields[col_w].strip(),
                                  fields[col_a].strip())
    else:
      question, worker, answer = fields[col_q], fields[col_w], fields[col_a]
    if not (question and worker and answer):
      _reject(rejects, name, index + 1, _missing_crowd_field((question, worker, answer)), text.rstrip("\r"))
      continue
    lines.append(index + 1)
    questions.append(question)
    workers.append(worker)
    answers.append(answer)

  def raw(position: int) -> str:
    return text_lines[lines[position] - 1].rstrip("\r")

  return lines, raw, [questions, workers, answers], rejects


def _unquote(name: str) -> str:
  """A CSV header name without its enclosing double quotes (`"a"` -> `a`)."""
  return name[1:-1] if len(name) >= 2 and name[0] == name[-1] == '"' else name


def _crowd_fast_path(path: Path) -> _Parsed | None:
  """Reads a clean crowd CSV with pyarrow; None when the per-line reader is needed.

  Lean by design (100M annotations should fit in memory): one pass fingerprints the file
  and counts its lines without keeping it, pyarrow parses the three columns straight
  into dictionary arrays (int32 codes per annotation, each distinct id once), the codes
  are copied into NumPy and the ids stripped and checked on the dictionaries only, and
  the lines and default annotation ids stay a `range` (`ingest.RowIds`). No Python
  object per annotation is made, and the file's text is read again only to word a
  reject (`raw`).
  """
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.csv as pa_csv  # pylint: disable=g-import-not-at-top

  scan = ingest.scan_text(path, FeedbackInputError)
  # A quoted header ("question","worker","answer": pyarrow's and R's write.csv default) is
  # as clean as a bare one. A quoted comma splits a name and a header record spanning
  # lines fails the row count below: both go to the per-line reader.
  header = [_unquote(c.strip()) for c in scan.first_line.decode("utf-8", errors="replace").split(",")]
  if any(c not in header for c in _CROWD_COLUMNS) or len(set(header)) != len(header):
    return None  # The per-line reader raises the header error.
  codes_type = pa.dictionary(pa.int32(), pa.string())
  try:
    table = pa_csv.read_csv(
        os.fspath(path) if scan.data is None else io.BytesIO(scan.data),
        read_options=pa_csv.ReadOptions(column_names=header, skip_rows=1),
        parse_options=pa_csv.ParseOptions(ignore_empty_lines=False),
        convert_options=pa_csv.ConvertOptions(
            include_columns=list(_CROWD_COLUMNS), column_types=dict.fromkeys(_CROWD_COLUMNS, codes_type)),
    )
  except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
    return None
  num_rows = table.num_rows
  if num_rows == 0 or num_rows != scan.num_lines - 1:
    return None  # No records (the per-line reader says so), or a quoted newline.
  columns = []
  for name in _CROWD_COLUMNS:
    # One column at a time, dropped from the table once copied, so that only one
    # column's Arrow arrays are unified (one dictionary, first-seen order) at a time.
    column = pa.table([table.column(name)], names=[name]).unify_dictionaries().column(0)
    table = table.drop_columns([name])
    codes = np.empty(num_rows, np.int32)
    start = 0
    for chunk in column.chunks:
      if chunk.null_count:
        return None
      codes[start:start + len(chunk)] = _int32_values(chunk.indices)
      start += len(chunk)
    dictionary = column.chunk(0).dictionary
    del column
    stripped = _strip_dictionary(codes, dictionary)
    if stripped is None:
      return None  # Empty values (or blank lines): let the per-line reader name them.
    columns.append(stripped)
  del table
  # Arrow's allocator keeps freed pages for reuse by Arrow; what follows (NumPy, JAX)
  # allocates elsewhere, so hand them back (a quarter of the reader's peak at 10M).
  pa.default_memory_pool().release_unused()
  (answer_codes, answers) = columns[2]
  class_names = _class_order(answers.tolist())
  remap = np.asarray([class_names.index(a) for a in answers.tolist()], np.int32)
  physical: list[bytes] = []

  def raw(position: int) -> str:
    if not physical:
      physical.extend(ingest.physical_lines(ingest.strip_bom(_read_bytes(path))))
    return ingest.raw_text(physical[position + 1].rstrip(b"\r"))

  return _Parsed(
      name=path.name, unit="line", num_read=num_rows, rejects=[], lines=range(2, num_rows + 2),
      item_ids=columns[0], annotator_ids=columns[1],
      labels=remap[answer_codes], class_names=tuple(class_names),
      annotation_ids=None, raw=raw, fingerprint=scan.fingerprint,
  )


def _int32_values(array: Any) -> np.ndarray:
  """A null-free Arrow int32 array as a NumPy view of its buffer (`Array.to_numpy` would
  import pandas, a second or more of a short process)."""
  return np.frombuffer(array.buffers()[1], np.int32, count=len(array), offset=4 * array.offset)


def _strip_dictionary(codes: np.ndarray, dictionary: Any) -> tuple[np.ndarray, np.ndarray] | None:
  """(codes, ids) of a dictionary-encoded column once its values are stripped of
  whitespace (values equal after stripping merge, in first-seen order); None when a value
  is empty after stripping. `ids` is an object array of Python strings."""
  import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top

  stripped = pc.utf8_trim_whitespace(dictionary)
  if len(stripped) and pc.min(pc.utf8_length(stripped)).as_py() == 0:
    return None
  if not pc.all(pc.equal(stripped, dictionary)).as_py():
    merged = pc.dictionary_encode(stripped)  # first-seen order of the dictionary's order
    codes = _int32_values(merged.indices)[codes]
    stripped = merged.dictionary
  ids = np.empty(len(stripped), object)
  ids[:] = stripped.to_pylist()
  return codes, ids


# ----------------------------------------------------------------------------------------
# Encoding, duplicates, contradictions.


def _encode_first_seen(values: Any) -> tuple[np.ndarray, np.ndarray]:
  """(codes int32 [M], distinct values [U]) with codes numbered in order of first appearance.

  Accepts a NumPy array (strings or integers) or an Arrow string array (dictionary-encoded
  by Arrow, whose dictionary is also in first-appearance order).
  """
  if not isinstance(values, np.ndarray):
    import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top

    encoded = pc.dictionary_encode(values)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return codes, np.asarray(encoded.dictionary.to_pylist(), dtype=str)
  if values.size == 0:
    return np.zeros(0, np.int32), values[:0]
  distinct, first, inverse = np.unique(values, return_index=True, return_inverse=True)
  order = np.argsort(first, kind="stable")
  rank = np.empty(order.size, np.int32)
  rank[order] = np.arange(order.size, dtype=np.int32)
  return rank[inverse.reshape(-1)], distinct[order]


def _encoded(column: Any) -> tuple[np.ndarray, np.ndarray]:
  """(codes, ids) of a `_Parsed` id column, encoding it first-seen unless it already is."""
  return column if isinstance(column, tuple) else _encode_first_seen(column)


def _recode_first_seen(codes: np.ndarray, num_codes: int) -> tuple[np.ndarray, np.ndarray]:
  """Renumbers integer codes in [0, num_codes) by first appearance, without sorting.

  Returns (new codes int32 [M], old code of each new code). Assigning positions in
  reverse order leaves each code's first position (the last write wins).
  """
  size = codes.size
  first = np.full(num_codes, size, np.int64)
  first[codes[::-1]] = np.arange(size - 1, -1, -1)
  present = np.flatnonzero(first < size)
  old_codes = present[np.argsort(first[present], kind="stable")]
  new_code = np.full(num_codes, -1, np.int32)
  new_code[old_codes] = np.arange(old_codes.size, dtype=np.int32)
  return new_code[codes], old_codes


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Sort by key: (order, group starts in the sorted order, group sizes).

  The order within a group is arbitrary (callers sort the rows of the few groups they
  look at), which lets NumPy use its fastest sort.
  """
  order = np.argsort(keys)
  sorted_keys = keys[order]
  starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if keys.size else (
      np.zeros(0, np.int64))
  sizes = np.diff(np.r_[starts, keys.size])
  return order, starts, sizes


def _pair_keys(parsed: _Parsed, item_codes: np.ndarray, item_table: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray]:
  """Per record: the index of its (prompt, {response, response}) pair and its label in the
  pair's canonical a/b order. Items without both responses are their own pair."""
  num_items = item_table.size
  canon = np.arange(num_items, dtype=np.int64)
  swapped = np.zeros(num_items, bool)
  if parsed.payloads is not None:
    pair_index: dict[tuple[str, str, str], int] = {}
    for i, item_id in enumerate(item_table.tolist()):
      payload = parsed.payloads.get(item_id, {})
      if "response_a_id" in payload and "response_b_id" in payload:
        a, b = payload["response_a_id"], payload["response_b_id"]
      elif "response_a" in payload and "response_b" in payload:
        a, b = payload["response_a"], payload["response_b"]
      else:
        continue
      key = (payload.get("prompt", ""), min(a, b), max(a, b))
      canon[i] = num_items + pair_index.setdefault(key, len(pair_index))
      swapped[i] = a > b
  labels = parsed.labels
  row_swapped = swapped[item_codes]
  canon_labels = labels.copy()
  canon_labels[row_swapped & (labels == types.A_PREFERRED)] = types.B_PREFERRED
  canon_labels[row_swapped & (labels == types.B_PREFERRED)] = types.A_PREFERRED
  return canon[item_codes], canon_labels


def _finish(parsed: _Parsed, path: Path, fmt: str, policy: str,
            rejects_path: str | os.PathLike[str] | None) -> ReadReport:
  rejects = parsed.rejects
  num_valid = len(parsed.lines)
  item_codes, item_table = _encoded(parsed.item_ids)
  annotator_codes, annotator_table = _encoded(parsed.annotator_ids)
  num_annotators = max(annotator_table.size, 1)
  keep = None  # [M] bool once a record is dropped
  duplicates: list[str] = []
  contradictions: list[dict[str, Any]] = []
  ids = (ingest.RowIds(parsed.name, parsed.lines) if parsed.annotation_ids is None
         else parsed.annotation_ids)
  unit = parsed.unit

  duplicate_keys = None
  if num_valid:
    duplicate_keys = item_codes.astype(np.int64) * num_annotators + annotator_codes
    if parsed.payloads is None:
      # Without responses to match across items, a contradiction is a duplicate with
      # another answer: a file without duplicates (the usual case) needs no grouping,
      # and a sort in place (no index array) tells.
      in_order = np.sort(duplicate_keys)
      if not (in_order[1:] == in_order[:-1]).any():
        duplicate_keys = None
      del in_order
  if duplicate_keys is not None:
    # Self-contradictions, before the duplicate policy so that none goes unreported.
    if parsed.payloads is None:  # no responses to match across items: pairs are items
      pair_groups = _groups(duplicate_keys)
      canon_labels = parsed.labels
    else:
      pair_codes, canon_labels = _pair_keys(parsed, item_codes, item_table)
      pair_groups = _groups(pair_codes * num_annotators + annotator_codes)
    order, starts, sizes = pair_groups
    multi = sizes > 1
    if multi.any():
      sorted_labels = canon_labels[order]
      lowest = np.minimum.reduceat(sorted_labels, starts)
      highest = np.maximum.reduceat(sorted_labels, starts)
      inconsistent = multi & (lowest != highest)
      for start, size in zip(starts[inconsistent], sizes[inconsistent]):
        rows = np.sort(order[start:start + size])
        item_list = list(dict.fromkeys(str(item_table[item_codes[r]]) for r in rows))
        contradictions.append({
            "annotator_id": str(annotator_table[annotator_codes[rows[0]]]),
            "kind": "same_item" if len(item_list) == 1 else "same_pair",
            "item_ids": item_list,
            "annotation_ids": [ids[r] for r in rows],
            "lines": [int(parsed.lines[r]) for r in rows],
            "choices": [parsed.class_names[parsed.labels[r]] for r in rows],
        })
      contradictions.sort(key=lambda c: c["lines"][0])

    # Duplicates: one annotator, one item, more than once.
    order, starts, sizes = (
        pair_groups if parsed.payloads is None else _groups(duplicate_keys))
    multi = sizes > 1
    if multi.any():
      timestamps = parsed.optional.get("timestamps")
      flagged = []
      for start, size in zip(starts[multi], sizes[multi]):
        rows = np.sort(order[start:start + size])  # file order
        flagged.extend(rows.tolist())
        if policy == "keep_all":
          continue
        if policy == "reject_all":
          dropped, kept = rows, None
        else:
          if timestamps is not None and not np.isnan(timestamps[rows]).any():
            # Stable sort by time keeps file order among equal timestamps.
            rows_by_time = rows[np.argsort(timestamps[rows], kind="stable")]
          else:
            rows_by_time = rows
          kept = rows_by_time[-1] if policy == "keep_last" else rows_by_time[0]
          dropped = rows[rows != kept]
        item_id = str(item_table[item_codes[rows[0]]])
        annotator_id = str(annotator_table[annotator_codes[rows[0]]])
        if keep is None:
          keep = np.ones(num_valid, bool)
        for r in dropped:
          keep[r] = False
          if kept is None:
            reason = (f"annotator {annotator_id!r} labelled item {item_id!r} {size} times "
                      f"({', '.join(ids[x] for x in rows)}); duplicate_policy reject_all "
                      "rejects every copy")
          else:
            which = "latest" if policy == "keep_last" else "earliest"
            reason = (f"duplicate of {ids[kept]}: annotator {annotator_id!r} labelled item "
                      f"{item_id!r} {size} times; duplicate_policy {policy} keeps the {which} "
                      f"(by timestamp when every copy has one, else by {unit})")
          _reject(rejects, parsed.name, int(parsed.lines[r]),
                  RecordError("duplicate", "item_id,annotator_id", reason), parsed.raw(int(r)))
      duplicates = [ids[r] for r in sorted(flagged)]

  rejects.sort(key=lambda r: r["line"])
  if rejects_path is not None:
    ingest.write_json_lines(rejects_path, rejects)

  num_accepted = num_valid if keep is None else int(keep.sum())
  if num_accepted == 0:
    if parsed.num_read == 0:
      raise FeedbackInputError(f"{path}: no annotation records (the file has no data "
                               f"{unit}s); nothing to aggregate.")
    where = (f"rejects written to {rejects_path}" if rejects_path is not None
             else "pass rejects_path to write the rejects")
    examples = "; ".join(
        f"{unit} {r['line']} field {r['field']}: {r['reason']}" for r in rejects[:3])
    raise FeedbackInputError(
        f"{path}: no usable annotations: read {parsed.num_read}, accepted 0, rejected "
        f"{len(rejects)} ({where}). First rejects: {examples}.")

  # Final encoding over the accepted records, first-seen order among them.
  if keep is None:  # nothing dropped: the codes are already first-seen
    kept_rows = slice(None)
    final_items, item_ids = item_codes, tuple(item_table.tolist())
    final_annotators, annotator_ids = annotator_codes, tuple(annotator_table.tolist())
    labels = parsed.labels
    annotation_ids = ids if isinstance(ids, ingest.RowIds) else tuple(ids)
  else:
    kept_rows = np.flatnonzero(keep)
    final_items, item_index = _recode_first_seen(item_codes[kept_rows], item_table.size)
    final_annotators, annotator_index = _recode_first_seen(
        annotator_codes[kept_rows], annotator_table.size)
    item_ids = tuple(item_table[item_index].tolist())
    annotator_ids = tuple(annotator_table[annotator_index].tolist())
    labels = parsed.labels[kept_rows]
    annotation_ids = (ids.take(kept_rows) if isinstance(ids, ingest.RowIds)
                      else tuple(np.asarray(ids, dtype=object)[kept_rows].tolist()))
  payloads = None
  if parsed.payloads is not None:
    payloads = tuple(dict(parsed.payloads.get(i, {})) for i in item_ids)
  optional = {k: v[kept_rows] for k, v in parsed.optional.items()}
  versions = None
  if parsed.guideline_versions is not None:
    versions = tuple(np.asarray(parsed.guideline_versions, dtype=object)[kept_rows].tolist())
  encoded = types.EncodedAnnotations(
      items=final_items.astype(np.int32, copy=False),
      annotators=final_annotators.astype(np.int32, copy=False),
      labels=labels.astype(np.int32, copy=False),
      item_ids=item_ids,
      annotator_ids=annotator_ids,
      class_names=tuple(parsed.class_names),
      annotation_ids=annotation_ids,
      timestamps=optional.get("timestamps"),
      response_ms=optional.get("response_ms"),
      strength=optional.get("strength"),
      is_golden=optional.get("is_golden"),
      golden_labels=optional.get("golden_labels"),
      guideline_versions=versions,
      item_payloads=payloads,
  )
  return ReadReport(
      annotations=encoded,
      num_read=parsed.num_read,
      num_accepted=num_accepted,
      num_rejected=len(rejects),
      rejects=rejects,
      duplicates=duplicates,
      contradictions=contradictions,
      path=str(path),
      format=fmt,
      duplicate_policy=policy,
      rejects_path=None if rejects_path is None else str(rejects_path),
      fingerprint=parsed.fingerprint or ingest.fingerprint(path),
  )
