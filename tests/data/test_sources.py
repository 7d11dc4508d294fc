"""Reading local files (`data.sources`): rows numbered as a reader would count them,
every bad line rejected with its reason (read = accepted + rejected), fingerprints of
the bytes, and refusals of what cannot be read."""

import gzip
import hashlib
import json

import numpy as np
import pytest

from rlhf_jax.data import sources


def _parse(record):
  # Arrow gives every row the file's columns: a field a row lacks reads as None.
  if record.get("x") is None:
    raise sources.RecordError("missing_field", "x", "field 'x' is missing")
  if not isinstance(record["x"], int):
    raise sources.RecordError("wrong_type", "x", f"'x' must be an integer, got {record['x']!r}")
  return record["x"]


def _write_lines(path, lines, compress=False):
  data = b"".join(line if isinstance(line, bytes) else line.encode() for line in lines)
  if compress:
    data = gzip.compress(data)
  path.write_bytes(data)
  return path


def test_json_lines_keep_their_physical_line_numbers(tmp_path):
  path = _write_lines(tmp_path / "a.jsonl", ['{"x": 1}\n', "\n", '{"x": 2}\n', '{"x": 3}\n'])
  rows = sources.read_rows(path)
  assert [(r.location, r.number, r.record) for r in rows] == [
      ("line", 1, {"x": 1}), ("line", 3, {"x": 2}), ("line", 4, {"x": 3})]
  gz = _write_lines(tmp_path / "a.jsonl.gz", ['{"x": 1}\n', "\n", '{"x": 2}\n'], compress=True)
  assert [r.number for r in sources.read_rows(gz)] == [1, 3]


def test_bad_lines_are_rejected_with_their_reasons(tmp_path):
  lines = ['{"x": 1}\n', "{not json\n", "[1, 2]\n", b'{"x": "\xff"}\n', '{"y": 2}\n', '{"x": "two"}\n',
           '{"x": 7}\n']
  path = _write_lines(tmp_path / "mixed.jsonl", lines)
  rejects_path = tmp_path / "rejects.jsonl"
  accepted, report = sources.load_records(path, _parse, format_name="ints", rejects_path=rejects_path)
  assert [value for _, value in accepted] == [1, 7]
  assert (report.read, report.accepted, report.rejected) == (7, 2, 5)
  assert report.reasons == {"bad_json": 1, "not_an_object": 1, "not_utf8": 1, "missing_field": 1,
                            "wrong_type": 1}
  written = [json.loads(line) for line in rejects_path.read_text().splitlines()]
  assert [(r["line"], r["code"], r["field"]) for r in written] == [
      (2, "bad_json", None), (3, "not_an_object", None), (4, "not_utf8", None), (5, "missing_field", "x"),
      (6, "wrong_type", "x")]
  assert written[4]["record"] == {"x": "two"} and written[0]["record"] == "{not json"
  assert report.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
  assert "rejected 5" in report.summary() and str(rejects_path) in report.summary()


def test_without_a_rejects_file_the_first_problems_are_listed(tmp_path):
  path = _write_lines(tmp_path / "bad.jsonl", ['{"y": 0}\n'] * 7 + ['{"x": 1}\n'])
  with pytest.raises(sources.DataError) as error:
    sources.load_records(path, _parse, format_name="ints")
  message = str(error.value)
  assert "7 of 8 records cannot be used as ints" in message
  assert f"{path} line 1 field 'x': field 'x' is missing" in message
  assert "... and 2 more" in message and "rejects_path" in message


def test_csv_rows_are_numbered_from_the_first_data_row(tmp_path):
  path = tmp_path / "a.csv"
  path.write_text("x,name\n4,a\n5,b\n")
  rows = sources.read_rows(path)
  assert [(r.location, r.number, r.record) for r in rows] == [("row", 1, {"x": 4, "name": "a"}),
                                                                ("row", 2, {"x": 5, "name": "b"})]


def test_rows_read_by_the_caller_are_sorted_and_reported_the_same_way(tmp_path):
  # A format read_rows does not open (here: a text file of numbers, one per line).
  path = _write_lines(tmp_path / "numbers.txt", ["4\n", "\xff\n", "x\n"])
  bad = sources.RecordError("not_utf8", None, "not UTF-8")
  rows = [sources.Row("line", 1, {"x": 4}), sources.Row("line", 2, None, bad, "\\xff"),
          sources.Row("line", 3, {"x": "x"})]
  accepted, report = sources.load_records(path, _parse, format_name="text", rejects_path=tmp_path / "r.jsonl",
                                          rows=rows)
  assert [(row.number, x) for row, x in accepted] == [(1, 4)]
  assert (report.read, report.accepted, report.rejected, report.format) == (3, 1, 2, "text")
  assert report.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
  assert [(r["line"], r["code"], r["record"]) for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())
          ] == [(2, "not_utf8", "\\xff"), (3, "wrong_type", {"x": "x"})]


@pytest.mark.parametrize("lines, bad_line", [
    (["x,name\n", "4,a,extra\n", "5,b\n"], 2),  # first: pandas would take column 1 as an index and shift
    (["x,name\n", "5,b\n", "4,a,extra\n"], 3),  # later: datasets would fail the whole file
])
def test_a_csv_row_with_an_extra_column_is_rejected_alone(tmp_path, lines, bad_line):
  path = _write_lines(tmp_path / "a.csv", lines)
  accepted, report = sources.load_records(path, _parse, format_name="ints", rejects_path=tmp_path / "r.jsonl")
  good_line = 5 - bad_line
  # The usable row keeps its typed cells (x an integer, as `datasets` reads a clean file).
  assert [(row.location, row.number, row.record, x) for row, x in accepted] == [
      ("line", good_line, {"x": 5, "name": "b"}, 5)]
  assert (report.read, report.accepted, report.rejected) == (2, 1, 1)
  assert report.reasons == {"wrong_column_count": 1}
  assert [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()] == [
      {"file": str(path), "line": bad_line, "field": None, "code": "wrong_column_count",
       "reason": "expected 2 columns (x,name) as in the header, got 3", "record": "4,a,extra"}]


@pytest.mark.parametrize("name, content, message", [
    ("a.txt", "x", "unsupported file type"),
    ("array.jsonl", '[{"x": 1}]', "got a JSON array"),
])
def test_unreadable_files_are_refused(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_text(content)
  with pytest.raises(sources.DataError, match=message):
    sources.read_rows(path)


def test_urls_missing_and_empty_files(tmp_path):
  with pytest.raises(sources.DataError, match="only local files are read"):
    sources.read_rows("https://example.com/data.jsonl")
  with pytest.raises(sources.DataError, match="no such file"):
    sources.read_rows(tmp_path / "nowhere.jsonl")
  empty = _write_lines(tmp_path / "empty.jsonl", ["\n", "  \n"])
  assert sources.read_rows(empty) == []
  with pytest.raises(sources.DataError, match="holds no records"):
    sources.load_records(empty, _parse, format_name="ints")
  none_usable = _write_lines(tmp_path / "none.jsonl", ['{"y": 1}\n'])
  with pytest.raises(sources.DataError, match="none of the 1 records can be used"):
    sources.load_records(none_usable, _parse, format_name="ints", rejects_path=tmp_path / "r.jsonl")


def test_rejects_hold_json_safe_records(tmp_path):
  reject = sources.Reject(file="f", location="row", number=3, field="x", code="c", reason="r",
                          record={"a": np.float32(0.5), "b": float("nan"), "c": (np.int64(2),)})
  assert reject.to_json() == {"file": "f", "row": 3, "field": "x", "code": "c", "reason": "r",
                              "record": {"a": 0.5, "b": "nan", "c": [2]}}
  sources.write_rejects(tmp_path / "out" / "r.jsonl", [reject])
  assert json.loads((tmp_path / "out" / "r.jsonl").read_text()) == reject.to_json()
  with pytest.raises(AssertionError, match="read 3 != accepted 1 \\+ rejected 1"):
    sources.ReadReport(path="p", format="f", fingerprint="", read=3, accepted=1, rejected=1,
                       rejects_path=None, reasons={})


def test_json_lines_are_written_atomically_and_the_first_reject_is_described(tmp_path):
  path = tmp_path / "deep" / "out.jsonl"
  sources.write_json_lines(path, [{"a": 1, "text": "é"}, {"b": [1, 2]}])
  assert path.read_text(encoding="utf-8") == '{"a": 1, "text": "é"}\n{"b": [1, 2]}\n'
  assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]  # no temporary left behind
  with pytest.raises(ValueError):
    sources.write_json_lines(tmp_path / "nan.jsonl", [{"x": float("nan")}])
  rejects = [sources.Reject(file="in.csv", location="row", number=4, field="prompt", code="empty", reason="empty"),
             sources.Reject(file="in.csv", location="row", number=9, field=None, code="c", reason="other")]
  sources.write_rejects(tmp_path / "r.jsonl", rejects)
  assert sources.describe_first_reject(tmp_path / "r.jsonl") == "in.csv row 4 field 'prompt': empty"
  sources.write_rejects(tmp_path / "r2.jsonl", rejects[1:])
  assert sources.describe_first_reject(tmp_path / "r2.jsonl") == "in.csv row 9: other"
