"""Tests for rlhf_jax.io.ingest, the one reading path of the data and feedback layers:
rows numbered as an editor shows them, one reason for one bad row whichever layer reads
it, read = accepted + rejected in every format, the two rejects layouts, lineage."""

import csv
import gzip
import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_jax.data import records as data_records
from rlhf_jax.data.sources import DataError
from rlhf_jax.feedback.io.records import FeedbackInputError, read_annotations
from rlhf_jax.io import ingest


def _json_reason(text: str) -> str:
  """The bad-JSON reason, worded from the standard library's own parse error."""
  try:
    json.loads(text)
  except json.JSONDecodeError as e:
    return f"not valid JSON: invalid JSON at column {e.colno} ({e.msg}); expected one JSON object per line"
  raise AssertionError(f"{text!r} is valid JSON")


# --- line readers ------------------------------------------------------------------------


def test_json_lines_are_numbered_by_physical_line_and_bad_lines_say_why():
  data = (b"\xef\xbb\xbf" + b'{"a": 1}\r\n'  # 1, with a byte-order mark and a CRLF end
          b"\n"                              # 2 blank
          b"  \n"                            # 3 blank
          b'{"a": 2\n'                       # 4 bad JSON
          b"[1]\n"                           # 5 not an object
          b'{"a": "\xff"}\n'                 # 6 not UTF-8 (0xff at offset 7)
          b'{"a": 3}')                       # 7, no final newline
  rows = list(ingest.json_line_rows(data))
  assert [(r.number, r.record) for r in rows] == [
      (1, {"a": 1}), (4, None), (5, None), (6, None), (7, {"a": 3})]
  assert [r.location for r in rows] == ["line"] * 5
  errors = {r.number: (r.error.code, r.error.field, r.error.reason) for r in rows if r.error}
  assert errors == {
      4: ("bad_json", None, _json_reason('{"a": 2')),
      5: ("not_an_object", None, "expected a JSON object per line, got list"),
      6: ("not_utf8", None, "line is not valid UTF-8 (byte 0xff at offset 7); expected UTF-8 text"),
  }
  assert [r.raw for r in rows] == ['{"a": 1}', '{"a": 2', "[1]", '{"a": "\\xff"}', '{"a": 3}']


def test_csv_records_number_a_record_by_its_first_line_and_keep_strings():
  data = (b'id,text\r\n'                     # 1 header
          b'007,"two\nlines"\r\n'            # 2-3 one record, "007" stays a string
          b"\r\n"                            # 4 blank
          b"8,caf\xe9\r\n"                   # 5 latin-1 byte
          b'9,"never closed\r\n')            # 6 unterminated quote
  records = ingest.csv_records(data)
  assert [(r.line, r.fields) for r in records] == [
      (1, ["id", "text"]), (2, ["007", "two\nlines"]), (5, None), (6, None)]
  assert records[1].raw == '007,"two\nlines"'
  assert (records[2].error.code, records[2].error.reason) == (
      "not_utf8", "line 5 is not valid UTF-8 (byte 0xe9 at offset 5); expected UTF-8 text")
  assert records[3].error.code == "bad_csv" and "unterminated quoted field" in records[3].error.reason
  assert ingest.column_count_error(["a", "b", "c"], 2).reason == (
      "expected 3 columns (a,b,c) as in the header, got 2")


# --- field readers -------------------------------------------------------------------------


def test_reference_files_are_read_whole_or_refused_naming_the_line(tmp_path):
  # A byte-order mark (spreadsheet exports) and spaces around header names are accepted.
  path = tmp_path / "annotators.csv"
  path.write_bytes(b"\xef\xbb\xbfannotator , skill\nu1,0.9\n\n\"u,2\",\n")
  assert ingest.read_reference_csv(path, ("annotator", "skill")) == (
      ["annotator", "skill"], [(2, {"annotator": "u1", "skill": "0.9"}), (4, {"annotator": "u,2", "skill": ""})])
  with pytest.raises(FeedbackInputError, match=r"annotators.csv:1: the header lacks required column\(s\) group"):
    ingest.read_reference_csv(path, ("annotator", "group"), FeedbackInputError)
  path.write_bytes(b"annotator,skill\nu1,0.9\nu2,0.8,extra\n")
  with pytest.raises(DataError, match=r"annotators.csv:3: expected 2 columns \(annotator,skill\) as in the "
                                      r"header, got 3: 'u2,0.8,extra'"):
    ingest.read_reference_csv(path, ("annotator",), DataError)
  path.write_bytes(b"")
  with pytest.raises(ingest.IngestError, match="the file is empty; expected a header line with columns annotator"):
    ingest.read_reference_csv(path, ("annotator",))
  lines = tmp_path / "items.jsonl"
  lines.write_bytes(b'{"item_id": 1}\n\n{"item_id": 2}\n')
  assert ingest.read_reference_json_lines(lines) == [(1, {"item_id": 1}), (3, {"item_id": 2})]
  lines.write_bytes(b'{"item_id": 1}\n["item", 2]\n')
  with pytest.raises(DataError, match="items.jsonl:2: expected a JSON object per line, got list"):
    ingest.read_reference_json_lines(lines, DataError)


def test_field_readers_word_each_problem_once():
  record = {"id": " x1 ", "n": 7, "blank": "  ", "f": 1.5, "flag": True, "text": 5}
  assert [ingest.read_id(record, k) for k in ("id", "n", "blank", "absent")] == ["x1", "7", None, None]
  for field, got in (("f", "float 1.5"), ("flag", "bool True")):
    with pytest.raises(ingest.RecordError) as error:
      ingest.read_id(record, field)
    assert (error.value.code, error.value.field, error.value.reason) == (
        "wrong_type", field, f"expected a string or integer id, got {got}")
  assert ingest.read_string({"t": " keep "}, "t", required=True) == " keep "
  assert ingest.read_string({}, "t", required=False) is None
  with pytest.raises(ingest.RecordError, match="^missing required field t$"):
    ingest.read_string({"t": None}, "t", required=True)
  with pytest.raises(ingest.RecordError, match="^expected a string, got int 5$"):
    ingest.read_string(record, "text", required=False)
  assert ingest.missing_field("item_id", "the comparison id").reason == (
      "missing required field item_id; expected the comparison id")
  error = ingest.unknown_choice("choice", "c", ("a", "b", "tie"))
  assert (error.code, error.reason) == ("bad_label", "unknown choice 'c'; expected one of a, b, tie (any case)")
  assert ingest.describe_value("x" * 100) == "str '" + "x" * 56 + "..."


# --- rejects and lineage -------------------------------------------------------------------


def test_a_reject_in_both_layouts_and_the_rejects_file(tmp_path):
  row = ingest.Row("line", 3, {"item_id": 1.5}, None, '{"item_id": 1.5}')
  reject = ingest.Reject.from_row("a.jsonl", row, ingest.RecordError("wrong_type", "item_id", "why"))
  assert reject.to_json() == {"file": "a.jsonl", "line": 3, "field": "item_id", "code": "wrong_type",
                              "reason": "why", "record": {"item_id": 1.5}}
  assert reject.to_line_json() == {"file": "a.jsonl", "line": 3, "field": "item_id", "reason": "why",
                                   "raw": '{"item_id": 1.5}'}
  # A typed-table row has no raw text: the line layout shows the record as JSON.
  table_row = ingest.Reject("t.parquet", "row", 2, None, "c", "r", record={"x": 1})
  assert table_row.to_json()["row"] == 2 and table_row.to_line_json()["raw"] == '{"x": 1}'
  assert reject.describe() == "a.jsonl line 3 field 'item_id': why"

  path = tmp_path / "r" / "rejects.jsonl"
  ingest.write_rejects(path, [reject], layout="line")
  assert [json.loads(line) for line in path.read_text().splitlines()] == [reject.to_line_json()]
  assert ingest.describe_first_reject(path) == reject.describe()
  with pytest.raises(ValueError, match="unknown rejects layout"):
    ingest.write_rejects(path, [reject], layout="csv")

  # Rejects found after reading join the reader's file in file order.
  ingest.write_rejects(path, [reject])
  late = [ingest.Reject("a.jsonl", "line", n, None, "late", "r") for n in (5, 1)]
  ingest.append_rejects(path, late)
  assert [json.loads(line)["line"] for line in path.read_text().splitlines()] == [1, 3, 5]
  ingest.append_rejects(tmp_path / "fresh.jsonl", late[:1])
  assert len((tmp_path / "fresh.jsonl").read_text().splitlines()) == 1

  ingest.check_accounting(5, 3, 2)
  with pytest.raises(AssertionError, match="read 5 != accepted 3 \\+ rejected 1"):
    ingest.check_accounting(5, 3, 1)
  assert ingest.source("a.jsonl", "line", 3) == "a.jsonl:line 3"


def test_whole_file_problems_raise_the_callers_error_class(tmp_path):
  assert issubclass(DataError, ingest.IngestError) and issubclass(FeedbackInputError, ingest.IngestError)
  assert issubclass(ingest.IngestError, ValueError)
  broken = tmp_path / "a.jsonl.gz"
  broken.write_bytes(b"not gzip")
  for error_class in (DataError, FeedbackInputError):
    with pytest.raises(error_class, match="not a readable gzip file"):
      ingest.read_bytes(broken, error_class)
  with pytest.raises(DataError, match="only local files are read"):
    ingest.check_local_file("https://example.com/a.jsonl", DataError)
  with pytest.raises(FeedbackInputError, match="unsupported file type"):
    ingest.file_kind("a.txt", FeedbackInputError)
  assert [ingest.file_kind(n) for n in ("A.JSONL.GZ", "b.parquet", "c.csv.gz")] == ["json", "parquet", "csv"]
  (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
  with pytest.raises(FeedbackInputError, match="not a readable Parquet file"):
    ingest.read_parquet(tmp_path / "bad.parquet", FeedbackInputError)


# --- both layers through the one path ------------------------------------------------------


def _pair(item, annotator, choice, **extra):
  return {"item_id": item, "annotator_id": annotator, "choice": choice, "prompt": f"Question {item}?",
          "response_a": f" Answer A to {item}.", "response_b": f" Answer B to {item}.", **extra}


def _through_both_layers(tmp_path, name, lines):
  """Writes `lines` to `name`, reads the file as preference pairs (data layer) and as
  annotations (feedback layer); returns the path, both reports and, per layer, the
  (line, field, reason) of its rejects."""
  path = tmp_path / name
  path.write_bytes(b"\n".join(lines) + b"\n")
  data = data_records.load_preference_data(path, format="feedback_labels", rejects_path=tmp_path / "data.jsonl")
  annotations = read_annotations(path, format=path.suffix[1:], rejects_path=tmp_path / "feedback.jsonl")
  reasons = [[(r["line"], r["field"], r["reason"]) for r in map(json.loads, (tmp_path / f).read_text().splitlines())]
             for f in ("data.jsonl", "feedback.jsonl")]
  return path, data, annotations, *reasons


def test_the_same_bad_row_gets_the_same_reason_through_both_layers(tmp_path):
  lines = [
      json.dumps(_pair("q1", "w1", "a")).encode(),                    # 1 ok
      b'{"item_id": "q2", "choice": ',                                # 2 bad JSON
      json.dumps(_pair("q3", "w1", "b")).encode()[:-1] + b', "x": "\xff"}',  # 3 not UTF-8
      b'["q4", "w1", "a"]',                                           # 4 not an object
      json.dumps(_pair(4.5, "w1", "a")).encode(),                     # 5 item id of the wrong type
      json.dumps(_pair("q6", "w1", "c")).encode(),                    # 6 unknown choice
      json.dumps({**_pair("q7", "w1", "a"), "prompt": 5}).encode(),   # 7 prompt not a string
      json.dumps(_pair("q8", "w2", "tie")).encode(),                  # 8 ok
  ]
  path, data, annotations, data_reasons, feedback_reasons = _through_both_layers(tmp_path, "labels.jsonl", lines)
  offset = len(json.dumps(_pair("q3", "w1", "b"))) - 1 + len(', "x": "')
  expected = [
      (2, None, _json_reason('{"item_id": "q2", "choice": ')),
      (3, None, f"line is not valid UTF-8 (byte 0xff at offset {offset}); expected UTF-8 text"),
      (4, None, "expected a JSON object per line, got list"),
      (5, "item_id", "expected a string or integer id, got float 4.5"),
      (6, "choice", "unknown choice 'c'; expected one of a, b, tie (any case)"),
      (7, "prompt", "expected a string, got int 5"),
  ]
  assert data_reasons == expected
  assert feedback_reasons == expected
  assert data.report.fingerprint == annotations.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
  assert data.sources == (f"{path}:line 1", f"{path}:line 8")
  assert annotations.annotations.annotation_ids == ("labels.jsonl:1", "labels.jsonl:8")


def test_the_same_bad_csv_row_gets_the_same_reason_through_both_layers(tmp_path):
  columns = ["item_id", "annotator_id", "choice", "prompt", "response_a", "response_b"]
  header = ",".join(columns)

  def line(item, choice):
    return ",".join(str(_pair(item, "w1", choice)[c]) for c in columns).encode()

  lines = [
      header.encode(),                                # 1 header
      line("q2", "a"),                                # 2 ok
      line("q3", "b") + b",surplus",                  # 3 one column too many
      b"q4,w1,b,Question q4?, Answer A.",             # 4 one column short
      b"q5,w1,a,Caf\xe9?, Answer A., Answer B.",       # 5 not UTF-8 (latin-1)
      line("q6", "tie"),                              # 6 ok
      b'q7,w1,"a,Question q7?, A., B.',               # 7 a quote left open to the end of the file
  ]
  path, data, annotations, data_reasons, feedback_reasons = _through_both_layers(tmp_path, "labels.csv", lines)
  expected = [
      (3, None, f"expected 6 columns ({header}) as in the header, got 7"),
      (4, None, f"expected 6 columns ({header}) as in the header, got 5"),
      (5, None, "line 5 is not valid UTF-8 (byte 0xe9 at offset 11); expected UTF-8 text"),
      (7, None, "unterminated quoted field (a \" without its closing \" before the end of the file)"),
  ]
  assert data_reasons == expected
  assert feedback_reasons == expected
  assert (data.report.read, data.report.accepted, data.report.rejected) == (6, 2, 4)
  assert (annotations.num_read, annotations.num_accepted, annotations.num_rejected) == (6, 2, 4)
  assert data.sources == (f"{path}:line 2", f"{path}:line 6")


def _write_table(path, rows, kind):
  """Rows (dicts with the same keys) as JSON Lines, CSV or Parquet, gzipped for `.gz`."""
  if kind == "parquet":
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
  if kind == "json":
    text = "".join(json.dumps(row) + "\n" for row in rows)
  else:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
  data = text.encode()
  path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
  return path


@pytest.mark.parametrize("name, kind", [("p.jsonl", "json"), ("p.csv.gz", "csv"), ("p.parquet", "parquet")])
def test_data_layer_accepted_plus_rejected_is_read_in_every_format(tmp_path, name, kind):
  rows = [{"prompt": f"Q{i}?", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(8)]
  rows[2]["rejected"] = rows[2]["chosen"]  # identical completions
  rows[5]["chosen"] = None                 # missing (an empty CSV cell)
  path = _write_table(tmp_path / name, rows, kind)
  data = data_records.load_preference_data(path, format="explicit", rejects_path=tmp_path / "r.jsonl")
  rejects = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
  location = "line" if kind == "json" else "row"
  assert [(r[location], r["code"]) for r in rejects] == [(3, "identical_completions"), (6, "missing_field")]
  assert (data.report.read, data.report.accepted, data.report.rejected) == (8, 6, 2)
  assert data.report.accepted + data.report.rejected == data.report.read == len(rows)
  assert data.chosen == tuple(rows[i]["chosen"] for i in (0, 1, 3, 4, 6, 7))


@pytest.mark.parametrize("name, kind", [("a.jsonl.gz", "json"), ("a.csv", "csv"), ("a.parquet", "parquet")])
def test_feedback_layer_accepted_plus_rejected_is_read_in_every_format(tmp_path, name, kind):
  rows = [{"item_id": f"q{i}", "annotator_id": f"w{i % 3}", "choice": "ab"[i % 2]} for i in range(9)]
  rows[1]["choice"] = "sideways"   # unknown choice
  rows[4]["annotator_id"] = None   # missing annotator
  rows[7]["item_id"] = None        # missing item
  path = _write_table(tmp_path / name, rows, kind)
  fmt = {"json": "jsonl", "csv": "csv", "parquet": "parquet"}[kind]
  report = read_annotations(path, format=fmt, rejects_path=tmp_path / "r.jsonl")
  # Lines (a CSV header is line 1) or Parquet rows, 1-based.
  first = 2 if kind == "csv" else 1
  assert [(r["line"], r["field"]) for r in report.rejects] == [
      (first + 1, "choice"), (first + 4, "annotator_id"), (first + 7, "item_id")]
  assert (report.num_read, report.num_accepted, report.num_rejected) == (9, 6, 3)
  assert report.num_accepted + report.num_rejected == report.num_read == len(rows)
  assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3


def test_crowd_csv_accepted_plus_rejected_is_read(tmp_path):
  path = tmp_path / "answers.csv"
  path.write_bytes(b"question,worker,answer\nq1,w1,0\nq1,w2\nq2,w1,\nq2,w2,1\nq3,w1,1,extra\nq3,w2,0\n")
  report = read_annotations(path, format="crowd_csv", rejects_path=tmp_path / "r.jsonl")
  assert [(r["line"], r["field"], r["reason"]) for r in report.rejects] == [
      (3, None, "expected 3 columns (question,worker,answer) as in the header, got 2"),
      (4, "answer", "missing required field answer; expected a non-empty value"),
      (6, None, "expected 3 columns (question,worker,answer) as in the header, got 4")]
  assert (report.num_read, report.num_accepted, report.num_rejected) == (6, 3, 3)


# --- lean lineage and scanning -------------------------------------------------------------


def test_row_ids_word_file_and_number_on_demand_like_a_tuple_of_them():
  import numpy as np  # pylint: disable=g-import-not-at-top

  ids = ingest.RowIds("a.csv", range(2, 7))
  expected = ("a.csv:2", "a.csv:3", "a.csv:4", "a.csv:5", "a.csv:6")
  assert ids == expected and expected == ids and list(ids) == list(expected) and len(ids) == 5
  assert ids[0] == "a.csv:2" and ids[-1] == "a.csv:6" and ids[1:3] == expected[1:3]
  assert "a.csv:4" in ids and "a.csv:7" not in ids and "a.csv:04" not in ids and "b.csv:4" not in ids
  taken = ids.take(np.array([4, 0, 2]))
  assert taken == ("a.csv:6", "a.csv:2", "a.csv:4") and "a.csv:6" in taken and "a.csv:3" not in taken
  assert ids != expected[:4] and ids != ("a.csv:2", "a.csv:3", "a.csv:4", "a.csv:5", "a.csv:7")
  assert ingest.RowIds("a.csv", np.array([2, 3, 4, 5, 6])) == ids


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_scan_text_fingerprints_and_counts_lines_as_the_line_readers_do(tmp_path, ending):
  body = b"\xef\xbb\xbfquestion,worker,answer\r\n" + b"\n".join(b"q%d,w%d,1" % (i, i) for i in range(50)) + ending
  plain, packed = tmp_path / "c.csv", tmp_path / "c.csv.gz"
  plain.write_bytes(body)
  packed.write_bytes(gzip.compress(body))
  lines = ingest.physical_lines(ingest.strip_bom(body))
  for block_size in (7, 1 << 20):  # a block boundary inside lines, and one block
    scan = ingest.scan_text(plain, block_size=block_size)
    assert scan.fingerprint == hashlib.sha256(body).hexdigest() and scan.data is None
    assert scan.first_line == b"question,worker,answer" and scan.num_lines == len(lines) == 51
  scan = ingest.scan_text(packed)
  assert scan.fingerprint == hashlib.sha256(packed.read_bytes()).hexdigest()
  assert scan.data == ingest.strip_bom(body) and scan.num_lines == 51
  assert scan.first_line == b"question,worker,answer"
