"""One ingestion path: opening files by format, numbering and validating rows, rejects
with reasons, and lineage, for the feedback layer and the data layer alike.

Who uses it. `rlhf_jax.feedback.io.records` reads annotation logs (JSON Lines, CSV,
Parquet, crowd CSV) and `rlhf_jax.data.sources` reads training files (preference, SFT,
KTO and prompt files); `rlhf_jax.train.sampling`, `train.score` and `rl.prompts` read
their inputs through the data layer (text prompt files as rows for `load_records`) and
add the rows they find unusable later with `append_rejects`; `feedback.workflow.plan`
writes the rejects of a Label Studio export with `write_rejects` (line layout);
`worlds.hh` reads the HH-RLHF pairs with `json_line_rows`. Reference files, used whole or
not at all (truth, labels.csv, annotators.csv, model scores, groups, tags, new items),
are read with `read_reference_csv` / `read_reference_json_lines`. All of them open
files, split and decode lines, parse JSON and CSV records, word row-level problems,
build rejects, write rejects files, check the accounting and fingerprint files here, so
one bad line gets one reason whichever layer reads it.

Where it sits. Data flows feedback -> data -> train, and `feedback.io.training` already
imports the data layer (to check its training rows with the data layer's own parser);
a reader inside `feedback/io` would make the data layer import the feedback layer back,
a cycle. `rlhf_jax.io` is therefore a leaf like `losses` and `models`: it imports
nothing else of ours (only the standard library, and `datasets`/`pyarrow` when a file
needs them), and each layer keeps its own record schema, error class and report on top.
Functions that refuse a whole file take the caller's error class (`error=DataError` or
`FeedbackInputError`), so each layer's users keep catching the exception they know.

Opening by format. JSON Lines (`.jsonl`, `.json`), CSV (`.csv`) and Parquet
(`.parquet`); `.gz` is decompressed (`read_bytes`). Only local files are read.
Two engines, on purpose:

* `read_rows` reads through `datasets` (Arrow) with typed columns, for the data layer's
  training files (CSV cells become numbers and booleans, as a trainer expects), into an
  Arrow cache created for the read and removed after it (nothing under `~/.cache`,
  nothing stale). When `datasets` cannot parse a JSON Lines file it falls back to the
  line reader below, so every bad line is named instead of the whole file failing. A CSV
  file is split by the CSV reader below first: records `datasets` would fail the whole
  file on (or silently shift, see `_read_csv_rows`), such as one with an extra column,
  are rejected alone by line, and only the usable records are typed by `datasets`.
* `json_line_rows` and `csv_records` read line by line with the standard library, for
  annotation logs: each line is decoded and parsed on its own (one bad line never costs
  the file), every row keeps its raw text for the rejects file, and CSV cells stay
  strings (an id such as `007` is not turned into 7). `read_parquet` reads a Parquet
  table with pyarrow (the reader behind `datasets`, without its import and cache copy).

Row numbering (lineage). JSON Lines and CSV rows read line by line are named by their
1-based physical line (`"line"`): blank lines are skipped and not counted but count for
numbering, a CSV header is line 1, and a CSV record spanning lines (a quoted newline)
is named by its first line. Rows of a typed table (Parquet, and CSV through `datasets`)
are named by their 1-based data row (`"row"`; a CSV header is not a row), except the
rows of a CSV file holding unreadable records, which `read_rows` names by line (the
rejected records have no data row number `datasets` would agree on). `source` words
a row's place as "FILE:line N"; `fingerprint` is the sha256 of the file's bytes, kept in
each report so a run can say exactly which file it read.

Validation and rejects. A parser turns one record (a dict) into an example or raises
`RecordError(code, field, reason)`: `code` is a short category counted in reports
(`missing_field`, `wrong_type`, `bad_json`, ...), `field` the offending field (None when
the whole line is at fault) and `reason` what was wrong and what was expected. Each
unusable row becomes a `Reject` (file, line or row, field, code, reason, and the record
or raw line) and is written to a rejects JSON Lines file in one of two layouts, kept as
each layer has always written them:

* record layout (`Reject.to_json`, the data layer): `file`, `line` or `row`, `field`,
  `code`, `reason`, `record` (the parsed record, JSON-safe, or the raw line text);
* line layout (`Reject.to_line_json`, the feedback layer): `file`, `line` (the row for
  Parquet), `field`, `reason`, `raw` (the line as written).

Nothing is dropped silently: every row read is accepted or rejected, and
`check_accounting` fails loudly when `read != accepted + rejected`.

The reasons worded here, one wording for every layer (the checks particular to a record
format, such as a strength outside [0, 1], stay with that format's parser):

| code | field | reason |
|---|---|---|
| `not_utf8` | None | line is not valid UTF-8 (byte 0xNN at offset K); expected UTF-8 text |
| `bad_json` | None | not valid JSON: invalid JSON at column C (MSG); expected one JSON object per line |
| `not_an_object` | None | expected a JSON object per line, got TYPE |
| `bad_csv` | None | unterminated quoted field / malformed CSV quoting |
| `wrong_column_count` | None | expected N columns (A,B,C) as in the header, got M |
| `wrong_type` | a text field | expected a string, got TYPE VALUE (`read_string`) |
| `wrong_type` | the id field | expected a string or integer id, got TYPE VALUE (`read_id`) |
| `missing_field` | the field | missing required field F[; expected WHAT] (`missing_field`) |
| `bad_label` | the label field | unknown choice 'X'; expected one of a, b, tie (any case) (`unknown_choice`) |
| `bad_label` | the label field | F 'X' is not one of the declared classes 0, 1 (`undeclared_class`) |
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "CSV_SUFFIXES",
    "CsvRecord",
    "IngestError",
    "JSON_SUFFIXES",
    "PARQUET_SUFFIXES",
    "Reject",
    "RecordError",
    "Row",
    "RowIds",
    "TextScan",
    "append_rejects",
    "check_accounting",
    "check_local_file",
    "column_count_error",
    "csv_header",
    "csv_records",
    "decode_line",
    "describe_first_reject",
    "describe_value",
    "file_kind",
    "fingerprint",
    "fingerprint_bytes",
    "json_line_rows",
    "missing_field",
    "physical_lines",
    "raw_text",
    "read_bytes",
    "read_id",
    "read_parquet",
    "read_reference_csv",
    "read_reference_json_lines",
    "reference_csv_rows",
    "read_rows",
    "read_string",
    "scan_text",
    "source",
    "strip_bom",
    "undeclared_class",
    "unknown_choice",
    "write_json_lines",
    "write_rejects",
]

_log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
CSV_SUFFIXES = (".csv", ".csv.gz")
_BOM = b"\xef\xbb\xbf"


class IngestError(ValueError):
  """A file that cannot be used as a whole; each layer raises its own subclass
  (`data.sources.DataError`, `feedback.io.records.FeedbackInputError`)."""


class RecordError(Exception):
  """Raised by a record parser (or a line reader) for one unusable record.

  Attributes:
    code: short machine-readable category (`missing_field`, `wrong_type`, ...), counted
      in reports.
    field: the offending field (None when the whole record or line is at fault).
    reason: what was wrong and what was expected, for a human.
  """

  def __init__(self, code: str, field: str | None, reason: str):
    super().__init__(reason)
    self.code = code
    self.field = field
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a file: its place and either a record or why it is unreadable."""

  location: str  # "line" (read line by line) or "row" (typed table data rows), 1-based
  number: int
  record: dict[str, Any] | None  # None when the row could not be read at all
  error: RecordError | None = None
  raw: str | None = None  # the line as written (line readers; None from a typed table)


@dataclasses.dataclass(frozen=True)
class Reject:
  """A row that could not be used, with where it is and why (see the module docstring
  for the two rejects-file layouts)."""

  file: str
  location: str
  number: int
  field: str | None
  code: str
  reason: str
  record: Any = None  # the original record, or the raw line text when it has none
  raw: str | None = None  # the line as written, when the reader kept it

  @classmethod
  def from_row(cls, file: str, row: Row, error: RecordError | None = None) -> Reject:
    """The reject of `row` for `error` (default: the row's own read error)."""
    error = error or row.error
    assert error is not None, "a reject needs a RecordError"
    return cls(file=file, location=row.location, number=row.number, field=error.field, code=error.code,
               reason=error.reason, record=row.record if row.record is not None else row.raw, raw=row.raw)

  def to_json(self) -> dict[str, Any]:
    """The record layout (data layer): the location key is "line" or "row"."""
    return {
        "file": self.file,
        self.location: self.number,
        "field": self.field,
        "code": self.code,
        "reason": self.reason,
        "record": _json_safe(self.record),
    }

  def to_line_json(self) -> dict[str, Any]:
    """The line layout (feedback layer): "line" holds the line or row, "raw" the text."""
    raw = self.raw
    if raw is None:
      raw = self.record if isinstance(self.record, str) else json.dumps(
          _json_safe(self.record), ensure_ascii=False)
    return {"file": self.file, "line": self.number, "field": self.field, "reason": self.reason, "raw": raw}

  def describe(self) -> str:
    field = f" field '{self.field}'" if self.field else ""
    return f"{self.file} {self.location} {self.number}{field}: {self.reason}"


def check_accounting(read: int, accepted: int, rejected: int) -> None:
  """Fails loudly unless every row read was accepted or rejected (no silent drop)."""
  if read != accepted + rejected:
    raise AssertionError(f"read {read} != accepted {accepted} + rejected {rejected}")


def source(file: str, location: str, number: int) -> str:
  """Where an example came from: "FILE:line N" or "FILE:row N" (lineage)."""
  return f"{file}:{location} {number}"


def fingerprint_bytes(data: bytes) -> str:
  """sha256 hex digest of bytes already in memory (equal to `fingerprint` of the file)."""
  return hashlib.sha256(data).hexdigest()


def fingerprint(path: str | os.PathLike[str]) -> str:
  """sha256 hex digest of a file's bytes (for run directories, cache keys and lineage)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


class RowIds(Sequence[str]):
  """The default ids `FILE:N` of rows numbered N (lineage), made only when asked for.

  A reader of a million rows would otherwise hold a million Python strings (about 60
  bytes each) for ids that are rarely read: this sequence holds the file name and the
  row numbers (a `range` for consecutive rows, else an integer array) and words an id
  on access. It compares equal to any sequence of the same ids (a tuple of them, say).
  """

  def __init__(self, file: str, numbers: Sequence[int]):
    self.file = file
    self.numbers = numbers  # a range or a NumPy integer array

  def __len__(self) -> int:
    return len(self.numbers)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return RowIds(self.file, self.numbers[index])
    return f"{self.file}:{int(self.numbers[index])}"

  def __iter__(self) -> Iterator[str]:
    prefix = f"{self.file}:"
    return map(prefix.__add__, map(str, self.numbers))

  def __contains__(self, value: object) -> bool:
    if not isinstance(value, str) or not value.startswith(f"{self.file}:"):
      return False
    number = value[len(self.file) + 1:]
    if not number.isdigit() or str(int(number)) != number:
      return False
    return bool(int(number) in self.numbers)

  def __eq__(self, other: object) -> bool:
    if isinstance(other, RowIds) and other.file == self.file:
      return len(self) == len(other) and all(int(a) == int(b) for a, b in zip(self.numbers, other.numbers))
    if not isinstance(other, Sequence) or isinstance(other, str) or len(other) != len(self):
      return False if isinstance(other, Sequence) else NotImplemented
    return all(a == b for a, b in zip(self, other))

  __hash__ = None  # mutable-looking like a list; a tuple of the ids is hashable

  def take(self, positions) -> RowIds:
    """The ids at `positions` (an integer array), in that order."""
    numbers = self.numbers
    if isinstance(numbers, range):
      return RowIds(self.file, numbers.start + numbers.step * positions)
    return RowIds(self.file, numbers[positions])

  def __repr__(self) -> str:
    shown = ", ".join(repr(i) for i in self[:3])
    return f"RowIds({len(self)} ids: {shown}{', ...' if len(self) > 3 else ''})"


class TextScan(NamedTuple):
  """What one pass over a text file tells before a table reader parses it."""

  fingerprint: str  # sha256 of the file's bytes as stored (`fingerprint`)
  first_line: bytes  # without its line end and a UTF-8 byte-order mark
  num_lines: int  # physical lines; a last line without a newline counts
  data: bytes | None  # the decompressed text of a `.gz` file, else None (not kept)


def scan_text(path: str | os.PathLike[str], error: type[IngestError] = IngestError,
              block_size: int = 1 << 24) -> TextScan:
  """Fingerprints a file and counts its lines in one pass of `block_size` blocks, without
  holding the file (a `.gz` file is decompressed whole and its text returned, so that a
  reader parses it once)."""
  path = Path(path)
  if path.name.lower().endswith(".gz"):
    data = strip_bom(read_bytes(path, error))
    num_lines = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
    return TextScan(fingerprint(path), data.split(b"\n", 1)[0].rstrip(b"\r"), num_lines, data)
  digest = hashlib.sha256()
  head, newlines, size, last = b"", 0, 0, b""
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(block_size), b""):
      digest.update(block)
      if newlines == 0:  # the first line is not complete yet
        head += block
      newlines += block.count(b"\n")
      size += len(block)
      last = block
  head = strip_bom(head)
  first = head.split(b"\n", 1)[0]
  empty = size == len(_BOM) and not head or size == 0
  num_lines = newlines + (0 if empty or last.endswith(b"\n") else 1)
  return TextScan(digest.hexdigest(), first.rstrip(b"\r"), num_lines, None)


# --- values ---------------------------------------------------------------------------


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


def describe_value(value: Any) -> str:
  """A value for an error message: its type and repr, cut at 60 characters."""
  text = repr(value)
  if len(text) > 60:
    text = text[:57] + "..."
  return f"{type(value).__name__} {text}"


def missing_field(field: str, expected: str | None = None) -> RecordError:
  """The reject reason of a required field that is absent, null or empty."""
  return RecordError("missing_field", field,
                     f"missing required field {field}" + (f"; expected {expected}" if expected else ""))


def unknown_choice(field: str, value: Any, choices: Sequence[str]) -> RecordError:
  """The reject reason of a label that is not one of `choices` (compared in any case)."""
  return RecordError("bad_label", field,
                     f"unknown choice {value!r}; expected one of {', '.join(choices)} (any case)")


def undeclared_class(field: str, value: Any, declared: Sequence[str]) -> RecordError:
  """The reject reason of a label outside the classes the caller declared for the task."""
  return RecordError("bad_label", field,
                     f"{field} {value!r} is not one of the declared classes {', '.join(declared)}")


def read_string(record: Mapping[str, Any], field: str, *, required: bool) -> str | None:
  """A text field, as written (not stripped); None when absent or null and not required.

  Raises:
    RecordError: `missing_field` (required and absent or null), `wrong_type` (not a string).
  """
  value = record.get(field)
  if value is None:
    if required:
      raise missing_field(field)
    return None
  if not isinstance(value, str):
    raise RecordError("wrong_type", field, f"expected a string, got {describe_value(value)}")
  return value


def read_id(record: Mapping[str, Any], field: str) -> str | None:
  """An optional id: a string (whitespace stripped) or an integer, as text.

  Returns None when the field is absent, null or blank (a CSV's empty cell).

  Raises:
    RecordError: `wrong_type` for anything else (a float, a boolean, a list).
  """
  value = record.get(field)
  if value is None:
    return None
  if isinstance(value, str):
    return value.strip() or None
  if isinstance(value, numbers.Integral) and not isinstance(value, bool):
    return str(int(value))
  raise RecordError("wrong_type", field, f"expected a string or integer id, got {describe_value(value)}")


# --- opening files --------------------------------------------------------------------


def check_local_file(path: str | os.PathLike[str], error: type[IngestError] = IngestError) -> Path:
  """The path of an existing local file; a URL or a missing file raises `error`."""
  text = os.fspath(path)
  if "://" in text:
    raise error(f"{text}: only local files are read (nothing is downloaded); got a URL.")
  resolved = Path(text)
  if not resolved.is_file():
    raise error(f"{text}: no such file.")
  return resolved


def file_kind(path: str | os.PathLike[str], error: type[IngestError] = IngestError) -> str:
  """"json", "parquet" or "csv" from the file name's suffix (any case; `.gz` allowed)."""
  name = Path(path).name.lower()
  if name.endswith(JSON_SUFFIXES):
    return "json"
  if name.endswith(PARQUET_SUFFIXES):
    return "parquet"
  if name.endswith(CSV_SUFFIXES):
    return "csv"
  raise error(
      f"{path}: unsupported file type; expected JSON Lines ({', '.join(JSON_SUFFIXES)}), "
      f"Parquet ({', '.join(PARQUET_SUFFIXES)}) or CSV ({', '.join(CSV_SUFFIXES)})."
  )


def read_bytes(path: str | os.PathLike[str], error: type[IngestError] = IngestError) -> bytes:
  """The file's bytes, decompressed when its name ends in `.gz` (any case)."""
  path = Path(path)
  data = path.read_bytes()
  if path.name.lower().endswith(".gz"):
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise error(f"{path}: not a readable gzip file ({e}).") from e
  return data


def strip_bom(data: bytes) -> bytes:
  """`data` without a leading UTF-8 byte-order mark (which some editors write)."""
  return data[len(_BOM):] if data.startswith(_BOM) else data


def physical_lines(data: bytes) -> list[bytes]:
  """The lines of `data` split at b"\\n" (a final newline ends the last line)."""
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()
  return lines


def raw_text(chunk: bytes) -> str:
  """A line as text for a rejects file; bytes that are not UTF-8 are shown as \\xNN."""
  return chunk.decode("utf-8", errors="backslashreplace")


def _utf8_reason(chunk: bytes, e: UnicodeDecodeError) -> str:
  return (f"line is not valid UTF-8 (byte 0x{chunk[e.start]:02x} at offset {e.start}); "
          "expected UTF-8 text")


def decode_line(chunk: bytes) -> str:
  """One line as UTF-8 text; a line that is not UTF-8 raises `RecordError` `not_utf8`."""
  try:
    return chunk.decode("utf-8")
  except UnicodeDecodeError as e:
    raise RecordError("not_utf8", None, _utf8_reason(chunk, e)) from None


def json_line_rows(data: bytes) -> Iterator[Row]:
  """JSON Lines bytes -> one `Row` per non-blank line, each line decoded and parsed on
  its own (a bad line becomes a row with an `error`, the others are unaffected).

  A UTF-8 byte-order mark and `\\r` line ends are accepted. Every row keeps its line's
  text in `raw` (bytes that are not UTF-8 shown as \\xNN).
  """
  data = strip_bom(data)
  for index, chunk in enumerate(physical_lines(data)):
    chunk = chunk.rstrip(b"\r")
    if not chunk.strip():
      continue
    number = index + 1
    try:
      text = decode_line(chunk)
      try:
        value = json.loads(text)
      except json.JSONDecodeError as e:
        raise RecordError("bad_json", None, f"not valid JSON: invalid JSON at column {e.colno} ({e.msg}); "
                          "expected one JSON object per line") from None
      if not isinstance(value, dict):
        raise RecordError("not_an_object", None,
                          f"expected a JSON object per line, got {type(value).__name__}")
    except RecordError as e:
      yield Row("line", number, None, e, raw_text(chunk))
      continue
    yield Row("line", number, value, None, text)


class CsvRecord(NamedTuple):
  """One CSV record read line by line: its first line, raw text, fields or an error."""

  line: int
  raw: str
  fields: list[str] | None
  error: RecordError | None


def csv_records(data: bytes) -> list[CsvRecord]:
  """Splits CSV bytes into records (the header is the first), every cell a string.

  The csv module reads from a generator that decodes one line at a time, so a quoted
  field may span lines (the record is numbered by its first line), a malformed record
  costs only itself (the reader resumes at the next line), and a line that is not UTF-8
  fails only the record that holds it. Blank lines are skipped. Column counts are the
  caller's to check (against its header).
  """
  data = strip_bom(data)
  lines = physical_lines(data)
  decoded: list[str] = []
  undecodable: dict[int, str] = {}

  def texts() -> Iterator[str]:
    for index, chunk in enumerate(lines):
      if chunk.endswith(b"\r"):
        chunk = chunk[:-1]
      try:
        text = chunk.decode("utf-8")
      except UnicodeDecodeError as e:
        # A record may span lines: name the line that is not UTF-8.
        undecodable[index] = f"line {index + 1} {_utf8_reason(chunk, e)[5:]}"
        text = raw_text(chunk)
      decoded.append(text)
      yield text + "\n"

  reader = csv.reader(texts(), strict=True)
  records = []
  first = 0  # 0-based index of the first line of the next record
  while True:
    error = None
    try:
      fields = next(reader)
    except StopIteration:
      break
    except csv.Error as e:
      fields = None
      if "unexpected end of data" in str(e):
        error = RecordError("bad_csv", None, "unterminated quoted field (a \" without its closing \" "
                            "before the end of the file)")
      else:
        error = RecordError("bad_csv", None, f"malformed CSV quoting ({e}); expected RFC 4180 quoting")
    end = reader.line_num
    raw = decoded[first] if end - first == 1 else "\n".join(decoded[first:end])
    bad = [undecodable[i] for i in range(first, end) if i in undecodable] if undecodable else []
    line, first = first + 1, end
    if bad:
      records.append(CsvRecord(line, raw, None, RecordError("not_utf8", None, bad[0])))
    elif error is not None:
      records.append(CsvRecord(line, raw, None, error))
    elif fields and not (len(fields) == 1 and not fields[0].strip()):
      records.append(CsvRecord(line, raw, fields, None))
  return records


def column_count_error(header: Sequence[str], num_fields: int) -> RecordError:
  """The reject reason of a CSV record whose number of fields is not the header's."""
  return RecordError("wrong_column_count", None, f"expected {len(header)} columns ({','.join(header)}) as in "
                     f"the header, got {num_fields}")


def csv_header(path: str | os.PathLike[str], records: list[CsvRecord], required: Sequence[str],
               error: type[IngestError] = IngestError, hint: str = "") -> list[str]:
  """Pops the header record off `records` (from `csv_records`) and returns its column
  names (whitespace stripped); an empty file, an unreadable header or one lacking a
  `required` column raises `error` naming the file, line and columns (`hint` is added)."""
  if not records:
    raise error(f"{path}: the file is empty; expected a header line with columns {', '.join(required)}.")
  line, raw, fields, header_error = records.pop(0)
  if header_error is not None:
    raise error(f"{path}:{line}: header: {header_error}")
  header = [f.strip() for f in fields]
  missing = [c for c in required if c not in header]
  if missing:
    raise error(f"{path}:{line}: the header lacks required column(s) {', '.join(missing)}; "
                f"expected columns {', '.join(required)}, got {raw!r}.{hint}")
  return header


def reference_csv_rows(path: str | os.PathLike[str], records: Sequence[CsvRecord], header: Sequence[str],
                       error: type[IngestError] = IngestError) -> Iterator[tuple[int, list[str]]]:
  """(line, cells) of the records after the header of a reference file (truth, labels,
  annotator metrics), where any unreadable record or wrong column count raises `error`:
  such a file is used whole or not at all, so it has no rejects."""
  for line, raw, fields, record_error in records:
    if record_error is not None:
      raise error(f"{path}:{line}: {record_error}")
    if len(fields) != len(header):
      raise error(f"{path}:{line}: {column_count_error(header, len(fields))}: {raw!r}")
    yield line, fields


def read_reference_csv(path: str | os.PathLike[str], required: Sequence[str] = (),
                       error: type[IngestError] = IngestError) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
  """A reference CSV file read whole: (its column names, [(line, {column: cell})]).

  Cells stay strings as written; the header must name every `required` column
  (`csv_header`) and every record must be readable (`reference_csv_rows`), else `error`.
  """
  records = csv_records(read_bytes(path, error))
  header = csv_header(path, records, required, error)
  return header, [(line, dict(zip(header, fields))) for line, fields in reference_csv_rows(path, records, header, error)]


def read_reference_json_lines(path: str | os.PathLike[str],
                              error: type[IngestError] = IngestError) -> list[tuple[int, dict[str, Any]]]:
  """A reference JSON Lines file read whole: [(line, record)]; the first line that is
  not a UTF-8 JSON object raises `error` naming the file and line (`json_line_rows`)."""
  rows = []
  for row in json_line_rows(read_bytes(path, error)):
    if row.error is not None:
      raise error(f"{path}:{row.number}: {row.error.reason}")
    rows.append((row.number, row.record))
  return rows


def read_parquet(path: str | os.PathLike[str], error: type[IngestError] = IngestError):
  """A Parquet file as a `pyarrow.Table`; a corrupt file raises `error`."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  try:
    return pq.read_table(path)
  except Exception as e:  # pylint: disable=broad-except  # pyarrow raises several types.
    raise error(f"{path}: not a readable Parquet file ({type(e).__name__}: {e}).") from e


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
  """
  if cache_dir is not None:
    os.makedirs(cache_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix="rlhf_jax_datasets_", dir=cache_dir) as tmp:
    yield tmp


def read_rows(
    path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    error: type[IngestError] = IngestError,
) -> list[Row]:
  """Reads every row of a local JSON Lines, Parquet or CSV file with `datasets` (typed).

  Args:
    path: a local file; the type comes from the suffix (`file_kind`).
    cache_dir: where the temporary `datasets` Arrow cache is created (None: the system
      temporary directory); it is removed before returning.
    error: the exception class for a file that cannot be read as a whole.

  Returns:
    One `Row` per non-blank line (JSON Lines) or table row (Parquet/CSV), in file order;
    unreadable JSON lines and CSV records (not UTF-8, broken quoting, another number of
    fields than the header) carry an `error` instead of a record.

  Raises:
    error: the path is not a local file, its type is unsupported, it is a JSON array
      rather than JSON Lines, a CSV header cannot be read, or a Parquet file cannot be
      parsed at all.
  """
  path = check_local_file(path, error)
  kind = file_kind(path, error)
  if kind == "json":
    data = read_bytes(path, error)
    line_numbers = [n for n, line in enumerate(physical_lines(data), start=1) if line.strip()]
    if not line_numbers:
      return []
    if data.lstrip(_BOM + b" \t\r\n").startswith(b"["):
      raise error(
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
      return list(json_line_rows(data))
    if len(records) != len(line_numbers):
      _log.info("%s: %d rows from datasets for %d lines; reading line by line.",
                path, len(records), len(line_numbers))
      return list(json_line_rows(data))
    return [Row("line", n, r) for n, r in zip(line_numbers, records)]

  if kind == "csv":
    return _read_csv_rows(path, cache_dir, error)
  records = _datasets_records(path, kind, cache_dir, error)
  return [Row("row", i, r) for i, r in enumerate(records, start=1)]


def _datasets_records(path: Path, kind: str, cache_dir: str | os.PathLike[str] | None,
                      error: type[IngestError], shown: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
  """The records of a Parquet or CSV file read with `datasets` (typed); a file it cannot
  parse raises `error` naming `shown` (default `path`)."""
  try:
    with _quiet_datasets() as datasets, _cache_directory(cache_dir) as cache:
      if kind == "parquet":
        table = datasets.Dataset.from_parquet(os.fspath(path), cache_dir=cache)
      else:
        table = datasets.Dataset.from_csv(os.fspath(path), cache_dir=cache)
      return table.to_list()
  except Exception as e:  # pylint: disable=broad-except
    cause = e.__cause__ or e
    raise error(f"{shown or path}: cannot read the {kind} file: {type(cause).__name__}: {cause}") from e


def _read_csv_rows(path: Path, cache_dir: str | os.PathLike[str] | None,
                   error: type[IngestError]) -> list[Row]:
  """A CSV file's rows, typed by `datasets`, with every unreadable record rejected alone.

  `datasets` (pandas underneath) fails the whole file on a record with more fields than
  the header, and worse, when the first data record has one more, takes the first column
  as an index and shifts every column silently. So the file is first split with
  `csv_records` (the feedback layer's reader): a record that is not UTF-8, has broken
  quoting or has another number of fields than the header (`column_count_error`)
  becomes a row with an error, named by its line. A file without such records is read
  by `datasets` as it is (rows named by data row); otherwise the usable records are
  written back, with the header, to a temporary CSV that `datasets` reads, so their cells
  are typed as they would be in a file without the bad records, and every row is named
  by its line (read = usable + unreadable, nothing dropped).
  """
  records = csv_records(read_bytes(path, error))
  if not records:
    return []
  header, body = records[0], records[1:]
  if header.error is not None:
    raise error(f"{path}: line {header.line}: cannot read the CSV header: {header.error.reason}")
  unreadable: dict[int, RecordError] = {}
  for index, record in enumerate(body):
    if record.error is not None:
      unreadable[index] = record.error
    elif len(record.fields) != len(header.fields):
      unreadable[index] = column_count_error(header.fields, len(record.fields))
  if not unreadable:
    typed = _datasets_records(path, "csv", cache_dir, error)
    if len(typed) == len(body):
      return [Row("row", i, r) for i, r in enumerate(typed, start=1)]
    _log.info("%s: %d rows from datasets for %d CSV records; typing the records one by one.",
              path, len(typed), len(body))
  usable = [record for index, record in enumerate(body) if index not in unreadable]
  typed = []
  if usable:
    with _cache_directory(cache_dir) as scratch:
      rewritten = Path(scratch) / "usable_rows.csv"
      with open(rewritten, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header.fields)
        writer.writerows(record.fields for record in usable)
      typed = _datasets_records(rewritten, "csv", scratch, error, shown=path)
  if len(typed) != len(usable):
    raise error(f"{path}: datasets read {len(typed)} rows from the {len(usable)} usable CSV records; "
                "cannot tell which row is which.")
  typed_rows = iter(typed)
  return [Row("line", record.line, None, unreadable[index], record.raw) if index in unreadable
          else Row("line", record.line, next(typed_rows), None, record.raw)
          for index, record in enumerate(body)]


# --- writing --------------------------------------------------------------------------


def write_json_lines(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> None:
  """Writes one JSON object per line, atomically (a temporary file renamed into place);
  NaN and infinities are refused (they are not JSON). No records: an empty file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
  os.replace(tmp, path)


def write_rejects(path: str | os.PathLike[str], rejects: Sequence[Reject], *, layout: str = "record") -> None:
  """Writes rejects as JSON Lines (atomically) in the record layout (`Reject.to_json`)
  or the line layout (`Reject.to_line_json`)."""
  if layout not in ("record", "line"):
    raise ValueError(f"unknown rejects layout {layout!r}; expected 'record' or 'line'.")
  write_json_lines(path, [reject.to_json() if layout == "record" else reject.to_line_json()
                          for reject in rejects])


def append_rejects(path: str | os.PathLike[str], rejects: Sequence[Reject]) -> None:
  """Adds rejects found after reading (a later check of accepted rows) to the rejects
  file the reader wrote, if any, keeping file order (record layout, atomically)."""
  path = Path(path)
  earlier = []
  if path.exists():
    earlier = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
  merged = earlier + [reject.to_json() for reject in rejects]
  write_json_lines(path, sorted(merged, key=lambda r: r.get("line", r.get("row", 0))))


def describe_first_reject(path: str | os.PathLike[str]) -> str:
  """The first row of a rejects file (either layout), worded as `Reject.describe` words
  it (for one-line summaries of a command's output)."""
  with open(path, encoding="utf-8") as f:
    first = json.loads(f.readline())
  location = "line" if "line" in first else "row"
  return Reject(file=first["file"], location=location, number=first[location], field=first.get("field"),
                code=first.get("code", ""), reason=first["reason"]).describe()
