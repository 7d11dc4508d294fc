"""Reading local data files through `datasets`, with line numbers, rejects and fingerprints.

Every loader in `rlhf_jax.data` reads rows with `read_rows`, turns each row into an
example or a `Reject`, and reports `read = accepted + rejected` in a `ReadReport`.

The reading itself (opening by format, `datasets` and its temporary Arrow cache, the
line-by-line fallback for JSON Lines that `datasets` cannot parse, the line-by-line check
of CSV records so one with an extra column is rejected alone, row numbering, reject
reasons, the rejects-file layout, fingerprints) is the one ingestion path of
`rlhf_jax.io.ingest`, shared with the feedback layer; this module adds the data layer's
policy on top: `DataError`, the `ReadReport` of a training file, and `load_records`
(parse every row, write or refuse the rejects).

Files are local JSON Lines (`.jsonl`, `.json`, optionally `.gz`), Parquet (`.parquet`)
or CSV (`.csv`, optionally `.gz`), read with `datasets` (typed columns); nothing is
downloaded and nothing is cached under `~/.cache`.

Locations: JSON Lines rows are named by their 1-based physical line number (`"line"`;
blank lines are skipped and not counted, but count for numbering); Parquet and CSV rows
by their 1-based data row (`"row"`; the CSV header is not a row), except that every row
of a CSV file holding unreadable records (another number of fields than the header,
broken quoting, bytes that are not UTF-8) is named by its line, the header being line 1.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from rlhf_jax.io import ingest
from rlhf_jax.io.ingest import (  # re-exported: the data layer's names since before the move
    CSV_SUFFIXES,
    JSON_SUFFIXES,
    PARQUET_SUFFIXES,
    Reject,
    RecordError,
    Row,
    describe_first_reject,
    fingerprint,
    write_json_lines,
    write_rejects,
)

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

# How many problems a `DataError` lists before "and N more".
_MAX_LISTED = 5

T = TypeVar("T")


class DataError(ingest.IngestError):
  """A data file cannot be used as given (the message names file, line, field, reason)."""


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
    ingest.check_accounting(self.read, self.accepted, self.rejected)

  def summary(self) -> str:
    text = (
        f"{self.path} ({self.format}): read {self.read}, accepted {self.accepted}, "
        f"rejected {self.rejected}"
    )
    if self.rejected:
      listed = ", ".join(f"{code} {n}" for code, n in sorted(self.reasons.items()))
      text += f" ({listed}); rejects in {self.rejects_path}"
    return text


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
    unreadable JSON lines and CSV records carry an `error` instead of a record.

  Raises:
    DataError: the path is not a local file, its type is unsupported, a CSV header
      cannot be read, or a Parquet file cannot be parsed at all.
  """
  return ingest.read_rows(path, cache_dir=cache_dir, error=DataError)


def load_records(
    path: str | os.PathLike[str],
    parse: Callable[[dict[str, Any]], T] | None,
    *,
    format_name: str,
    detect: Callable[[list[Row]], tuple[str, Callable[[dict[str, Any]], T]]] | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    rows: Sequence[Row] | None = None,
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
    rows: the file's rows when the caller read them itself (a format `read_rows` does
      not open, such as a text file of one prompt per line); None reads `path`.

  Returns:
    ([(row, example)] for accepted rows in file order, the report).

  Raises:
    DataError: the file holds no rows, or no usable row, or (without `rejects_path`) any
      unusable row.
  """
  rows = read_rows(path, cache_dir=cache_dir) if rows is None else list(rows)
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
    rejects.append(Reject.from_row(os.fspath(path), row, error))
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
