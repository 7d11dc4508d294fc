"""Reading local data files through `datasets`, with line numbers, rejects and fingerprints.

Every loader in `rlhf_jax.data` reads rows with `read_rows`, turns each row into an
example or a `Reject`, and reports `read = accepted + rejected` in a `ReadReport`.

Files are local JSON Lines (`.jsonl`, `.json`, optionally `.gz`), Parquet (`.parquet`)
or CSV (`.csv`, optionally `.gz`). They are read with `datasets` (Arrow) into a cache
directory created for the read (inside the caller's `cache_dir`, else the system
temporary directory) and removed after it, so nothing is written under `~/.cache` and
no stale cache is ever read; only local paths are accepted, so nothing is downloaded. A JSON Lines file that `datasets` cannot parse (a bad line,
a line that is not UTF-8) is read again line by line with the standard `json` module so
that each bad line is reported with its number instead of failing the whole file.

Locations: JSON Lines rows are named by their 1-based physical line number (`"line"`;
blank lines are skipped and not counted, but count for numbering); Parquet and CSV rows
by their 1-based data row (`"row"`; the CSV header is not a row), as in
`rlhf_jax.feedback.io.records`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "DataError",
    "ReadReport",
    "Reject",
    "RecordError",
    "Row",
    "describe_first_reject",
    "fingerprint",
    "load_records",
    "read_rows",
    "write_json_lines",
    "write_rejects",
]

_log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
CSV_SUFFIXES = (".csv", ".csv.gz")
# How many problems a `DataError` lists before "and N more".
_MAX_LISTED = 5

T = TypeVar("T")


class DataError(ValueError):
  """A data file cannot be used as given (the message names file, line, field, reason)."""


class RecordError(Exception):
  """Raised by a record parser for one unusable record.

  Attributes:
    code: short machine-readable category (`missing_field`, `wrong_type`, ...), counted
      in `ReadReport.reasons`.
    field: the offending field (None when the whole record is at fault).
    reason: what was wrong and what was expected, for a human.
  """

  def __init__(self, code: str, field: str | None, reason: str):
    super().__init__(reason)
    self.code = code
    self.field = field
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a data file: its location and either a record or why it is unreadable."""

  location: str  # "line" (JSON Lines) or "row" (Parquet/CSV data rows), both 1-based
  number: int
  record: dict[str, Any] | None  # None when the row could not be read at all
  error: RecordError | None = None
  raw: str | None = None  # the raw text of an unreadable JSON line


@dataclasses.dataclass(frozen=True)
class Reject:
  """A row that could not be used, as written to a rejects JSONL file."""

  file: str
  location: str
  number: int
  field: str | None
  code: str
  reason: str
  record: Any = None  # the original record (JSON-safe), or the raw line text

  def to_json(self) -> dict[str, Any]:
    return {
        "file": self.file,
        self.location: self.number,
        "field": self.field,
        "code": self.code,
        "reason": self.reason,
        "record": _json_safe(self.record),
    }

  def describe(self) -> str:
    field = f" field '{self.field}'" if self.field else ""
    return f"{self.file} {self.location} {self.number}{field}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class ReadReport:
  """What a loader read: `read == accepted + rejected` always holds.

  Attributes:
    path: the data file.
    format: the record format used (after auto-detection).
    fingerprint: sha256 of the file's bytes (`fingerprint(path)`), for run directories.
    read: rows read (non-blank lines for JSON Lines).
    accepted: rows turned into examples.
    rejected: rows that could not be used, each written to `rejects_path`.
    rejects_path: the rejects JSONL file, or None when nothing was rejected.
    reasons: rejected rows per reason code.
  """

  path: str
  format: str
  fingerprint: str
  read: int
  accepted: int
  rejected: int
  rejects_path: str | None
  reasons: Mapping[str, int]

  def __post_init__(self):
    if self.read != self.accepted + self.rejected:
      raise AssertionError(
          f"read {self.read} != accepted {self.accepted} + rejected {self.rejected}")

  def summary(self) -> str:
    text = (
        f"{self.path} ({self.format}): read {self.read}, accepted {self.accepted}, "
        f"rejected {self.rejected}"
    )
    if self.rejected:
      listed = ", ".join(f"{code} {n}" for code, n in sorted(self.reasons.items()))
      text += f" ({listed}); rejects in {self.rejects_path}"
    return text


def fingerprint(path: str | os.PathLike[str]) -> str:
  """sha256 hex digest of a file's bytes (for run directories and cache keys)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _json_safe(value: Any) -> Any:
  """The value as plain JSON types (Arrow/NumPy scalars become Python numbers or text)."""
  if value is None or isinstance(value, (str, bool, int)):
    return value
  if isinstance(value, float):
    return value if math.isfinite(value) else repr(value)
  if isinstance(value, Mapping):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if hasattr(value, "item"):  # NumPy scalar
    return _json_safe(value.item())
  return repr(value)


def _suffix_kind(path: Path) -> str:
  name = path.name.lower()
  if name.endswith(JSON_SUFFIXES):
    return "json"
  if name.endswith(PARQUET_SUFFIXES):
    return "parquet"
  if name.endswith(CSV_SUFFIXES):
    return "csv"
  raise DataError(
      f"{path}: unsupported file type; expected JSON Lines ({', '.join(JSON_SUFFIXES)}), "
      f"Parquet ({', '.join(PARQUET_SUFFIXES)}) or CSV ({', '.join(CSV_SUFFIXES)})."
  )


def _check_local_file(path: str | os.PathLike[str]) -> Path:
  text = os.fspath(path)
  if "://" in text:
    raise DataError(f"{text}: only local files are read (nothing is downloaded); got a URL.")
  resolved = Path(text)
  if not resolved.is_file():
    raise DataError(f"{text}: no such file.")
  return resolved


def _open_binary(path: Path):
  if path.name.lower().endswith(".gz"):
    return gzip.open(path, "rb")
  return open(path, "rb")


@contextlib.contextmanager
def _quiet_datasets():
  """Silences `datasets` progress bars and its own error log (we report errors ourselves)."""
  import datasets  # pylint: disable=g-import-not-at-top

  bars_were_enabled = datasets.is_progress_bar_enabled()
  verbosity = datasets.logging.get_verbosity()
  datasets.disable_progress_bars()
  datasets.logging.set_verbosity(logging.CRITICAL)
  try:
    yield datasets
  finally:
    datasets.logging.set_verbosity(verbosity)
    if bars_were_enabled:
      datasets.enable_progress_bars()


@contextlib.contextmanager
def _cache_directory(cache_dir: str | os.PathLike[str] | None) -> Iterator[str]:
  """A fresh Arrow cache for one read, removed afterwards.

  `datasets` would reuse a cache keyed by the file's path and mtime, which can miss an
  edit made within the mtime resolution; a fresh directory per read cannot be stale.
  The tokenization cache (keyed by content) is what saves work across runs.
  """
  if cache_dir is not None:
    os.makedirs(cache_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix="rlhf_jax_datasets_", dir=cache_dir) as tmp:
    yield tmp


def _nonblank_line_numbers(path: Path) -> list[int]:
  with _open_binary(path) as f:
    return [n for n, line in enumerate(f, start=1) if line.strip()]


def _read_json_lines_stdlib(path: Path) -> list[Row]:
  """Line-by-line JSON Lines reader: each bad line becomes a `Row` with an error."""
  rows = []
  with _open_binary(path) as f:
    for number, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        rows.append(Row("line", number, None, RecordError(
            "not_utf8", None, f"line is not valid UTF-8 ({e.reason} at byte {e.start})"),
            raw.decode("utf-8", errors="replace")))
        continue
      try:
        record = json.loads(text)
      except json.JSONDecodeError as e:
        rows.append(Row("line", number, None, RecordError(
            "bad_json", None, f"not valid JSON: {e.msg} at column {e.colno}"), text.rstrip("\n")))
        continue
      if not isinstance(record, dict):
        rows.append(Row("line", number, None, RecordError(
            "not_an_object", None,
            f"expected a JSON object per line, got {type(record).__name__}"), text.rstrip("\n")))
        continue
      rows.append(Row("line", number, record))
  return rows


def read_rows(
    path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[Row]:
  """Reads every row of a local JSON Lines, Parquet or CSV file with `datasets`.

  Args:
    path: a local file; the type comes from the suffix (see module docstring).
    cache_dir: where the temporary `datasets` Arrow cache is created (None: the system
      temporary directory); it is removed before returning.

  Returns:
    One `Row` per non-blank line (JSON Lines) or table row (Parquet/CSV), in file order;
    unreadable JSON lines carry an `error` instead of a record.

  Raises:
    DataError: the path is not a local file, its type is unsupported, or a Parquet/CSV
      file cannot be parsed at all.
  """
  path = _check_local_file(path)
  kind = _suffix_kind(path)
  if kind == "json":
    line_numbers = _nonblank_line_numbers(path)
    if not line_numbers:
      return []
    with _open_binary(path) as f:
      first = f.read(4096).lstrip()
    if first.startswith(b"["):
      raise DataError(
          f"{path}: expected JSON Lines (one JSON object per line), got a JSON array; "
          "write one record per line."
      )
    try:
      with _quiet_datasets() as datasets, _cache_directory(cache_dir) as cache:
        table = datasets.Dataset.from_json(os.fspath(path), cache_dir=cache)
        records = table.to_list()
    except Exception as e:  # pylint: disable=broad-except
      # `datasets` fails the whole file on one bad line; find the bad lines ourselves.
      _log.info("%s: datasets could not parse the file (%s); reading line by line.", path, e)
      return _read_json_lines_stdlib(path)
    if len(records) != len(line_numbers):
      _log.info("%s: %d rows from datasets for %d lines; reading line by line.",
                path, len(records), len(line_numbers))
      return _read_json_lines_stdlib(path)
    return [Row("line", n, r) for n, r in zip(line_numbers, records)]

  try:
    with _quiet_datasets() as datasets, _cache_directory(cache_dir) as cache:
      if kind == "parquet":
        table = datasets.Dataset.from_parquet(os.fspath(path), cache_dir=cache)
      else:
        table = datasets.Dataset.from_csv(os.fspath(path), cache_dir=cache)
      records = table.to_list()
  except Exception as e:  # pylint: disable=broad-except
    cause = e.__cause__ or e
    raise DataError(f"{path}: cannot read the {kind} file: {type(cause).__name__}: {cause}") from e
  return [Row("row", i, r) for i, r in enumerate(records, start=1)]


def write_json_lines(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> None:
  """Writes one JSON object per line, atomically (a temporary file renamed into place);
  NaN and infinities are refused (they are not JSON)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
  os.replace(tmp, path)


def write_rejects(path: str | os.PathLike[str], rejects: Sequence[Reject]) -> None:
  """Writes rejects as JSON Lines (atomically), one `Reject.to_json()` per line."""
  write_json_lines(path, [reject.to_json() for reject in rejects])


def describe_first_reject(path: str | os.PathLike[str]) -> str:
  """The first row of a rejects file, worded as `Reject.describe` words it (for one-line
  summaries of a command's output)."""
  with open(path, encoding="utf-8") as f:
    first = json.loads(f.readline())
  location = "line" if "line" in first else "row"
  return Reject(file=first["file"], location=location, number=first[location], field=first.get("field"),
                code=first.get("code", ""), reason=first["reason"]).describe()


def load_records(
    path: str | os.PathLike[str],
    parse: Callable[[dict[str, Any]], T] | None,
    *,
    format_name: str,
    detect: Callable[[list[Row]], tuple[str, Callable[[dict[str, Any]], T]]] | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[tuple[Row, T]], ReadReport]:
  """Reads a file and parses each row, sorting rows into accepted and rejected.

  Args:
    path: the data file.
    parse: record -> example; raises `RecordError` for an unusable record. Ignored when
      `detect` is given.
    format_name: the format name for the report (replaced by the detected one).
    detect: optional rows -> (format name, parser), for `format="auto"`.
    rejects_path: where to write rejected rows. When None and some row is unusable,
      `DataError` is raised listing the first problems.
    cache_dir: the `datasets` cache directory (see `read_rows`).

  Returns:
    ([(row, example)] for accepted rows in file order, the report).

  Raises:
    DataError: the file holds no rows, or no usable row, or (without `rejects_path`) any
      unusable row.
  """
  rows = read_rows(path, cache_dir=cache_dir)
  if not rows:
    raise DataError(f"{path}: the file holds no records.")
  if detect is not None:
    format_name, parse = detect(rows)
  accepted: list[tuple[Row, T]] = []
  rejects: list[Reject] = []
  for row in rows:
    error = row.error
    if error is None:
      try:
        accepted.append((row, parse(row.record)))
        continue
      except RecordError as e:
        error = e
    rejects.append(Reject(
        file=os.fspath(path), location=row.location, number=row.number, field=error.field,
        code=error.code, reason=error.reason,
        record=row.record if row.record is not None else row.raw))
  reasons = dict(collections.Counter(r.code for r in rejects))
  if rejects and rejects_path is None:
    listed = "\n  ".join(r.describe() for r in rejects[:_MAX_LISTED])
    more = f"\n  ... and {len(rejects) - _MAX_LISTED} more" if len(rejects) > _MAX_LISTED else ""
    raise DataError(
        f"{path}: {len(rejects)} of {len(rows)} records cannot be used as {format_name}:\n  "
        f"{listed}{more}\nFix them, or pass rejects_path=... to write them to a rejects "
        "JSONL file and continue with the rest."
    )
  if rejects:
    write_rejects(rejects_path, rejects)
  report = ReadReport(
      path=os.fspath(path), format=format_name, fingerprint=fingerprint(path), read=len(rows),
      accepted=len(accepted), rejected=len(rejects),
      rejects_path=os.fspath(rejects_path) if rejects else None, reasons=reasons)
  if not accepted:
    raise DataError(
        f"{path}: none of the {len(rows)} records can be used as {format_name}; "
        f"see {rejects_path} ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))})."
    )
  if rejects:
    _log.warning("%s", report.summary())
  return accepted, report
