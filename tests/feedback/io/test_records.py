"""Tests for rlhf_jax.feedback.io.records: validation, accounting, policies, encoding, lineage.

Fixtures are written into tmp_path by the tests; expected values are written out by hand
or computed here with the csv/json modules and plain Python dictionaries.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_jax.feedback.io import records
from rlhf_jax.feedback import types
from rlhf_jax.feedback.io.records import FeedbackInputError, item_lineage, read_annotations, read_truth

CROWD_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "crowd"


def _needs_crowd(name: str) -> Path:
  folder = CROWD_DIR / name
  if not (folder / "answers.csv").exists():
    pytest.skip(f"shared crowd data not found at {folder} (../shared/data beside the repo)")
  return folder


def _write_jsonl(path: Path, lines: list) -> Path:
  """Each entry is a dict (dumped as JSON), a str (written as is) or bytes (raw)."""
  with path.open("wb") as f:
    for line in lines:
      if isinstance(line, dict):
        line = json.dumps(line)
      if isinstance(line, str):
        line = line.encode("utf-8")
      f.write(line + b"\n")
  return path


def _row(item, annotator, choice, **extra):
  return {"item_id": item, "annotator_id": annotator, "choice": choice, **extra}


def _read_rejects(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------------------
# Every reject reason, with its line number.


def test_jsonl_every_reject_reason_with_line_numbers(tmp_path):
  lines = [
      _row("q1", "w1", "a"),                                                 # 1 ok
      '{"item_id": "q1", "annotator_id": "w2", "choice": "a"',               # 2 bad JSON
      b'{"item_id": "q\xff", "annotator_id": "w2", "choice": "a"}',          # 3 non-UTF-8
      {"annotator_id": "w3", "choice": "b"},                                 # 4 no item_id
      {"item_id": "q1", "choice": "b"},                                      # 5 no annotator
      _row("q1", "w4", "c"),                                                 # 6 unknown choice
      _row("q1", "w5", "a", timestamp="yesterday"),                          # 7 bad timestamp
      _row("q1", "w6", "a", response_ms=-5),                                 # 8 negative ms
      _row("q1", "w7", "a", response_ms="fast"),                             # 9 non-numeric ms
      _row("q1", "w8", "a", strength=1.5),                                   # 10 strength > 1
      _row("q2", "w1", "b", is_golden=True),                                 # 11 golden, no answer
      "   ",                                                                 # 12 blank line
      "[1, 2, 3]",                                                           # 13 not an object
      _row("q2", "w2", "TIE", annotation_id="x1"),                           # 14 ok (upper case)
      _row("q3", "w2", "a", annotation_id="x1"),                             # 15 id used twice
      {"item_id": "q3", "annotator_id": "w2"},                               # 16 no choice
      _row("q4", "w2", "b", golden_answer="maybe", is_golden=True),          # 17 bad golden answer
      _row("q4", "w2", "b", is_golden="perhaps"),                            # 18 bad bool
  ]
  path = _write_jsonl(tmp_path / "ann.jsonl", lines)
  rejects_path = tmp_path / "out" / "rejects.jsonl"
  report = read_annotations(path, format="jsonl", rejects_path=rejects_path)

  expected = {  # line -> (field, words the reason must contain)
      2: (None, "invalid JSON"),
      3: (None, "not valid UTF-8"),
      4: ("item_id", "missing required field item_id"),
      5: ("annotator_id", "missing required field annotator_id"),
      6: ("choice", "unknown choice 'c'; expected one of a, b, tie"),
      7: ("timestamp", "expected an ISO 8601"),
      8: ("response_ms", "negative"),
      9: ("response_ms", "expected a number, got 'fast'"),
      10: ("strength", "outside [0, 1]"),
      11: ("golden_answer", "is_golden is true but golden_answer is missing"),
      13: (None, "expected a JSON object per line, got list"),
      15: ("annotation_id", "already used at line 14"),
      16: ("choice", "missing required field choice"),
      17: ("golden_answer", "unknown choice 'maybe'"),
      18: ("is_golden", "expected a boolean"),
  }
  got = {r["line"]: r for r in report.rejects}
  assert sorted(got) == sorted(expected)
  for line, (field, words) in expected.items():
    assert got[line]["field"] == field, (line, got[line])
    assert words in got[line]["reason"], (line, got[line]["reason"])
    assert got[line]["file"] == "ann.jsonl"
  assert "\\xff" in got[3]["raw"]  # the undecodable byte is shown, not dropped
  assert report.num_read == 17  # 18 lines, one blank
  assert report.num_accepted == 2
  assert report.num_rejected == 15
  assert report.num_accepted + report.num_rejected == report.num_read
  assert _read_rejects(rejects_path) == report.rejects
  enc = report.annotations
  assert enc.annotation_ids == ("ann.jsonl:1", "x1")
  assert enc.labels.tolist() == [types.A_PREFERRED, types.TIE]
  assert enc.class_names == ("a", "b", "tie")


def test_csv_reject_reasons_quoted_newlines_and_line_numbers(tmp_path):
  text = (
      b"item_id,annotator_id,choice,prompt,response_ms\r\n"        # 1 header
      b"q1,w1,a,hello,100\r\n"                                       # 2 ok
      b"q1,w2,b\r\n"                                                 # 3 wrong column count
      b'q2,w1,B,"a prompt\nover two lines, with a comma",5\r\n'      # 4-5 ok (one record)
      b"q3,,a,p,5\r\n"                                               # 6 no annotator
      b"q3,w1,a,p\xe9,5\r\n"                                         # 7 latin-1 byte
      b"\r\n"                                                        # 8 blank
      b"q3,w2,yes,p,5\r\n"                                           # 9 unknown choice
      b"q4,w2,a,p,1e3\r\n"                                           # 10 ok
      b'q5,w2,a,"never closed,5\r\n'                                 # 11 unterminated quote
  )
  path = tmp_path / "ann.csv"
  path.write_bytes(text)
  report = read_annotations(path, format="csv")
  got = {r["line"]: (r["field"], r["reason"]) for r in report.rejects}
  assert sorted(got) == [3, 6, 7, 9, 11]
  assert got[3][0] is None and "expected 5 columns" in got[3][1] and "got 3" in got[3][1]
  assert got[6][0] == "annotator_id"
  assert got[7][0] is None and "byte 0xe9" in got[7][1]
  assert got[9][0] == "choice" and "'yes'" in got[9][1]
  assert got[11][0] is None and "unterminated" in got[11][1]
  assert report.num_read == 8 and report.num_accepted == 3 and report.num_rejected == 5
  enc = report.annotations
  assert enc.annotation_ids == ("ann.csv:2", "ann.csv:4", "ann.csv:10")
  assert enc.labels.tolist() == [0, 1, 0]
  assert enc.response_ms.tolist() == [100.0, 5.0, 1000.0]
  assert enc.item_payloads[1] == {"prompt": "a prompt\nover two lines, with a comma"}


def test_crowd_csv_dirty_file_goes_through_the_per_line_reader(tmp_path):
  text = (
      b"question,worker,answer\n"   # 1
      b"q1,w1,1\n"                  # 2
      b"q1,w2\n"                    # 3 wrong column count
      b"q2,w1,\n"                   # 4 empty answer
      b"\n"                         # 5 blank
      b"q2,\xff\xfe,0\n"            # 6 non-UTF-8
      b" q2 , w2 , 10 \n"           # 7 ok, whitespace stripped
      b"q3,w1,2,extra\n"            # 8 wrong column count
  )
  for quoted in (False, True):  # the unquoted tight loop and the csv-module reader
    data = text + (b'"q4",w1,2\n' if quoted else b"q4,w1,2\n")  # 9
    path = tmp_path / f"answers{int(quoted)}.csv"
    path.write_bytes(data)
    report = read_annotations(path, format="crowd_csv")
    got = {r["line"]: r["field"] for r in report.rejects}
    assert got == {3: None, 4: "answer", 6: None, 8: None}
    assert report.num_read == 7 and report.num_accepted == 3
    enc = report.annotations
    assert enc.class_names == ("1", "2", "10")  # numeric, not lexicographic, order
    assert [enc.item_ids[i] for i in enc.items] == ["q1", "q2", "q4"]
    assert [enc.annotator_ids[a] for a in enc.annotators] == ["w1", "w2", "w1"]
    assert [enc.class_names[k] for k in enc.labels] == ["1", "10", "2"]
    assert enc.annotation_ids == (f"{path.name}:2", f"{path.name}:7", f"{path.name}:9")


def test_parquet_rejects_are_numbered_by_row(tmp_path):
  rows = [_row("q1", "w1", "a"), _row(None, "w1", "b"), _row("q2", "w2", "sideways")]
  path = tmp_path / "ann.parquet"
  pq.write_table(pa.Table.from_pylist(rows), path)
  report = read_annotations(path, format="parquet")
  assert [(r["line"], r["field"]) for r in report.rejects] == [(2, "item_id"), (3, "choice")]
  assert report.num_accepted == 1
  with pytest.raises(FeedbackInputError, match="row 1 field item_id"):
    pq.write_table(pa.Table.from_pylist(rows[1:]), path)
    read_annotations(path, format="parquet")


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(
    ["ok", "tie", "bad_json", "no_item", "bad_choice", "bad_ms", "bad_strength", "latin1",
     "blank"]), min_size=1, max_size=40))
def test_accepted_plus_rejected_is_read_and_exactly_the_bad_lines_are_rejected(kinds):
  import tempfile  # pylint: disable=g-import-not-at-top

  lines, bad, records_written = [], set(), 0
  for n, kind in enumerate(kinds):
    item, annotator = f"q{n}", f"w{n % 3}"  # distinct items: no duplicates
    if kind == "ok":
      lines.append(_row(item, annotator, "a", strength=0.5))
    elif kind == "tie":
      lines.append(_row(item, annotator, "Tie"))
    elif kind == "bad_json":
      lines.append('{"item_id": ')
    elif kind == "no_item":
      lines.append({"annotator_id": annotator, "choice": "a"})
    elif kind == "bad_choice":
      lines.append(_row(item, annotator, 1))
    elif kind == "bad_ms":
      lines.append(_row(item, annotator, "b", response_ms=-1))
    elif kind == "bad_strength":
      lines.append(_row(item, annotator, "b", strength=-0.1))
    elif kind == "latin1":
      row = _row(item, annotator, "b", prompt="caf\u00e9")
      lines.append(json.dumps(row, ensure_ascii=False).encode("latin-1"))
    else:
      lines.append("")
    if kind != "blank":
      records_written += 1
    if kind not in ("ok", "tie", "blank"):
      bad.add(n + 1)
  with tempfile.TemporaryDirectory() as tmp:
    path = _write_jsonl(Path(tmp) / "a.jsonl", lines)
    if records_written == len(bad):
      with pytest.raises(FeedbackInputError):
        read_annotations(path, format="jsonl")
      return
    report = read_annotations(path, format="jsonl")
  assert report.num_read == records_written
  assert {r["line"] for r in report.rejects} == bad
  assert report.num_accepted + report.num_rejected == report.num_read
  assert report.num_accepted == records_written - len(bad)


# ----------------------------------------------------------------------------------------
# Duplicates and self-contradictions.


DUPLICATE_LINES = [
    _row("q1", "w1", "a", timestamp="2024-01-01T00:00:30Z"),  # 1
    _row("q1", "w1", "b", timestamp="2024-01-01T00:00:50Z"),  # 2 latest
    _row("q1", "w1", "a", timestamp="2024-01-01T00:00:10Z"),  # 3 earliest, last line
    _row("q1", "w2", "a"),                                    # 4
    _row("q2", "w1", "b"),                                    # 5
    _row("q2", "w1", "b"),                                    # 6 no timestamps: by line
]


@pytest.mark.parametrize("policy, kept_lines", [
    ("keep_last", [2, 4, 6]),
    ("keep_first", [3, 4, 5]),
    ("keep_all", [1, 2, 3, 4, 5, 6]),
    ("reject_all", [4]),
])
def test_duplicate_policies(tmp_path, policy, kept_lines):
  path = _write_jsonl(tmp_path / "d.jsonl", DUPLICATE_LINES)
  report = read_annotations(path, format="jsonl", duplicate_policy=policy)
  enc = report.annotations
  assert enc.annotation_ids == tuple(f"d.jsonl:{n}" for n in kept_lines)
  assert report.duplicates == [f"d.jsonl:{n}" for n in (1, 2, 3, 5, 6)]
  rejected = sorted(r["line"] for r in report.rejects)
  assert rejected == sorted(set(range(1, 7)) - set(kept_lines))
  assert report.num_accepted + report.num_rejected == report.num_read == 6
  for r in report.rejects:
    assert r["field"] == "item_id,annotator_id"
    if policy in ("keep_last", "keep_first"):
      kept = {1: 2, 3: 2, 5: 6, 6: 5} if policy == "keep_last" else {1: 3, 2: 3, 5: 5, 6: 5}
      assert r["reason"].startswith(f"duplicate of d.jsonl:{kept[r['line']]}")
    else:
      assert "reject_all" in r["reason"]
  # Whatever the policy, q1/w1 (a, b, a) is a self-contradiction and q2/w1 (b, b) is not.
  assert [(c["annotator_id"], c["item_ids"], c["choices"]) for c in report.contradictions] == [
      ("w1", ["q1"], ["a", "b", "a"])]


def test_duplicate_policy_falls_back_to_line_order_when_a_timestamp_is_missing(tmp_path):
  lines = [_row("q1", "w1", "a", timestamp=50), _row("q1", "w1", "b")]
  path = _write_jsonl(tmp_path / "d.jsonl", lines)
  report = read_annotations(path, format="jsonl", duplicate_policy="keep_last")
  assert report.annotations.annotation_ids == ("d.jsonl:2",)


def test_contradiction_across_swapped_presentations(tmp_path):
  pair = dict(prompt="p", response_a="x", response_b="y")
  swapped = dict(prompt="p", response_a="y", response_b="x")
  lines = [
      _row("q1", "w1", "a", **pair),      # 1 w1 prefers x
      _row("q2", "w1", "a", **swapped),   # 2 w1 prefers y: contradicts line 1
      _row("q3", "w2", "a", **pair),      # 3 w2 prefers x
      _row("q4", "w2", "b", **swapped),   # 4 w2 prefers x again: consistent
      _row("q5", "w3", "tie", **pair),    # 5 tie on (x, y)
      _row("q6", "w3", "tie", **swapped),  # 6 tie on (y, x): consistent
      _row("q7", "w3", "a", prompt="other", response_a="x", response_b="y"),  # 7 other prompt
      _row("q8", "w3", "b", prompt="other", response_a_id="r1", response_b_id="r2"),  # 8
      _row("q9", "w3", "b", prompt="other", response_a_id="r2", response_b_id="r1"),  # 9
  ]
  path = _write_jsonl(tmp_path / "c.jsonl", lines)
  report = read_annotations(path, format="jsonl")
  assert report.duplicates == []  # different item ids
  assert report.num_accepted == 9  # flagged, not dropped
  assert report.contradictions == [
      {"annotator_id": "w1", "kind": "same_pair", "item_ids": ["q1", "q2"],
       "annotation_ids": ["c.jsonl:1", "c.jsonl:2"], "lines": [1, 2], "choices": ["a", "a"]},
      {"annotator_id": "w3", "kind": "same_pair", "item_ids": ["q8", "q9"],
       "annotation_ids": ["c.jsonl:8", "c.jsonl:9"], "lines": [8, 9], "choices": ["b", "b"]},
  ]
  assert "2 self-contradictions" in report.summary()


def test_item_shown_with_a_different_pair_is_rejected(tmp_path):
  lines = [
      _row("q1", "w1", "a", prompt="p", response_a="x", response_b="y"),
      _row("q1", "w2", "a", prompt="p", response_a="y", response_b="x"),
      _row("q1", "w3", "b", prompt="p"),  # fewer fields, no conflict
  ]
  path = _write_jsonl(tmp_path / "c.jsonl", lines)
  report = read_annotations(path, format="jsonl")
  assert [(r["line"], r["field"]) for r in report.rejects] == [(2, "response_a")]
  assert "shown with a different response_a at line 1" in report.rejects[0]["reason"]
  assert report.annotations.item_payloads == (
      {"prompt": "p", "response_a": "x", "response_b": "y"},)


# ----------------------------------------------------------------------------------------
# Lineage, encoding and the round trip through three formats.


PAIRWISE_ROWS = [
    dict(annotation_id="n1", item_id="cmp-9", prompt="Say hi", response_a="hi", response_b="yo",
         annotator_id="ann-b", choice="a", strength=0.75, timestamp="2024-01-01T00:00:00Z",
         response_ms=1200.0, is_golden=False, guideline_version="v1"),
    dict(annotation_id="n2", item_id="cmp-9", prompt="Say hi", response_a="hi", response_b="yo",
         annotator_id="ann-a", choice="B", timestamp=1704067260.5, response_ms=800.0,
         guideline_version="v2"),
    dict(annotation_id="n3", item_id="cmp-1", prompt="2+2?", response_a="4", response_b="5",
         annotator_id="ann-b", choice="tie", strength=0.0,
         timestamp="2024-01-01T01:00:00+01:00", is_golden=True, golden_answer="a",
         guideline_version="v1"),
    dict(annotation_id="n4", item_id="cmp-1", prompt="2+2?", response_a="4", response_b="5",
         annotator_id="ann-c", choice="a", response_ms=0.0, is_golden=True, golden_answer="A",
         guideline_version="v1"),
    dict(annotation_id="n5", item_id="cmp-5", prompt="x", response_a="y", response_b="z",
         annotator_id="ann-a", choice="b"),
]


def _write_all_formats(tmp_path: Path) -> dict[str, Path]:
  paths = {"jsonl": _write_jsonl(tmp_path / "r.jsonl", PAIRWISE_ROWS)}
  columns = sorted({k for row in PAIRWISE_ROWS for k in row})
  paths["csv"] = tmp_path / "r.csv"
  with paths["csv"].open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in PAIRWISE_ROWS:
      writer.writerow({k: (str(v).lower() if isinstance(v, bool) else v) for k, v in row.items()})
  paths["parquet"] = tmp_path / "r.parquet"
  # Timestamps are mixed (ISO strings and epoch numbers): a string column in Parquet.
  table = pa.Table.from_pylist(
      [{k: (str(row[k]) if k == "timestamp" and k in row else row.get(k)) for k in columns}
       for row in PAIRWISE_ROWS],
      schema=pa.schema([(k, pa.float64() if k in ("strength", "response_ms") else
                         pa.bool_() if k == "is_golden" else pa.string()) for k in columns]))
  pq.write_table(table, paths["parquet"])
  return paths


def test_round_trip_jsonl_csv_parquet_give_identical_arrays(tmp_path):
  paths = _write_all_formats(tmp_path)
  reports = {fmt: read_annotations(p, format=fmt) for fmt, p in paths.items()}
  # Independent expectation, written by hand.
  expected_items = [0, 0, 1, 1, 2]  # first-seen: cmp-9, cmp-1, cmp-5
  expected_annotators = [0, 1, 0, 2, 1]  # ann-b, ann-a, ann-c
  expected_labels = [0, 1, 2, 0, 1]
  expected_time = [1704067200.0, 1704067260.5, 1704067200.0, np.nan, np.nan]
  for fmt, report in reports.items():
    enc = report.annotations
    assert report.num_rejected == 0, (fmt, report.rejects)
    assert enc.items.dtype == enc.annotators.dtype == enc.labels.dtype == np.int32
    assert enc.items.tolist() == expected_items, fmt
    assert enc.annotators.tolist() == expected_annotators, fmt
    assert enc.labels.tolist() == expected_labels, fmt
    assert enc.item_ids == ("cmp-9", "cmp-1", "cmp-5")
    assert enc.annotator_ids == ("ann-b", "ann-a", "ann-c")
    assert enc.annotation_ids == ("n1", "n2", "n3", "n4", "n5")
    np.testing.assert_array_equal(enc.timestamps, expected_time)
    np.testing.assert_array_equal(enc.response_ms, [1200.0, 800.0, np.nan, 0.0, np.nan])
    np.testing.assert_array_equal(enc.strength, np.float32([0.75, np.nan, 0.0, np.nan, np.nan]))
    assert enc.is_golden.tolist() == [False, False, True, True, False]
    assert enc.golden_labels.tolist() == [-1, -1, 0, 0, -1]
    assert enc.guideline_versions == ("v1", "v2", "v1", "v1", "")
    assert enc.item_payloads[1] == {"prompt": "2+2?", "response_a": "4", "response_b": "5"}
  assert len({tuple(r.annotations.item_payloads[0].items()) for r in reports.values()}) == 1


def test_item_lineage(tmp_path):
  report = read_annotations(_write_all_formats(tmp_path)["jsonl"], format="jsonl")
  assert item_lineage(report.annotations) == [
      {"item": 0, "item_id": "cmp-9", "annotation_ids": ["n1", "n2"],
       "guideline_versions": ["v1", "v2"]},
      {"item": 1, "item_id": "cmp-1", "annotation_ids": ["n3", "n4"],
       "guideline_versions": ["v1"]},
      {"item": 2, "item_id": "cmp-5", "annotation_ids": ["n5"], "guideline_versions": []},
  ]


def test_timestamps_iso_offsets_and_epoch(tmp_path):
  stamps = ["1970-01-01T00:00:10Z", "1970-01-01T01:00:10+01:00", "1970-01-01 00:00:10.5",
            "86400", 86400.25, "2024-01-01T00:00:00Z"]
  lines = [_row(f"q{n}", "w1", "a", timestamp=t) for n, t in enumerate(stamps)]
  report = read_annotations(_write_jsonl(tmp_path / "t.jsonl", lines), format="jsonl")
  # 2024-01-01T00:00:00Z is 19723 days after the epoch (54 years with 13 leap days).
  assert report.annotations.timestamps.tolist() == [
      10.0, 10.0, 10.5, 86400.0, 86400.25, 19723 * 86400.0]


def test_gzip_input(tmp_path):
  path = tmp_path / "a.jsonl.gz"
  path.write_bytes(gzip.compress(b'{"item_id": 7, "annotator_id": 3, "choice": "a"}\n'))
  enc = read_annotations(path, format="jsonl").annotations
  assert enc.item_ids == ("7",) and enc.annotator_ids == ("3",)


def test_first_seen_encoders_agree_with_a_dictionary(tmp_path):
  del tmp_path
  rng = np.random.default_rng(0)
  values = [f"id{v}" for v in rng.integers(0, 50, 500)]
  reference: dict[str, int] = {}
  expected = [reference.setdefault(v, len(reference)) for v in values]
  codes, table = records._encode_first_seen(np.asarray(values))  # pylint: disable=protected-access
  assert codes.tolist() == expected and table.tolist() == list(reference)
  codes, table = records._encode_first_seen(pa.array(values))  # pylint: disable=protected-access
  assert codes.tolist() == expected and table.tolist() == list(reference)


# ----------------------------------------------------------------------------------------
# Real crowdsourcing data (counts from ../shared/data/README.md).


def test_crowd_csv_duck_counts_and_encoding():
  folder = _needs_crowd("duck")
  report = read_annotations(folder / "answers.csv", format="crowd_csv")
  enc = report.annotations
  assert (enc.num_annotations, enc.num_items, enc.num_annotators, enc.num_classes) == (
      4212, 108, 39, 2)
  assert report.num_read == 4212 and report.num_rejected == 0
  with (folder / "answers.csv").open(newline="") as f:
    rows = list(csv.DictReader(f))
  assert [enc.item_ids[i] for i in enc.items] == [r["question"] for r in rows]
  assert [enc.annotator_ids[a] for a in enc.annotators] == [r["worker"] for r in rows]
  assert [enc.class_names[k] for k in enc.labels] == [r["answer"] for r in rows]
  truth = read_truth(folder / "truth.csv")
  assert len(truth) == 108 and set(truth) == set(enc.item_ids)


def test_crowd_fast_path_and_per_line_reader_agree(tmp_path):
  folder = _needs_crowd("dog")
  clean = read_annotations(folder / "answers.csv", format="crowd_csv").annotations
  dirty_path = tmp_path / "answers.csv"
  dirty_path.write_bytes((folder / "answers.csv").read_bytes() + b"1,2\n")
  dirty = read_annotations(dirty_path, format="crowd_csv")
  assert [(r["line"], r["field"]) for r in dirty.rejects] == [(8072, None)]
  for name in ("items", "annotators", "labels"):
    np.testing.assert_array_equal(getattr(dirty.annotations, name), getattr(clean, name))
  assert dirty.annotations.item_ids == clean.item_ids
  assert dirty.annotations.class_names == clean.class_names == ("0", "1", "2", "3")


def test_crowd_class_order_is_lexicographic_for_non_integers(tmp_path):
  path = tmp_path / "a.csv"
  path.write_text("worker,question,answer,note\nw1,q1,dog,x\nw2,q1,Cat,y\nw1,q2,cat,z\n")
  enc = read_annotations(path, format="crowd_csv").annotations
  assert enc.class_names == ("Cat", "cat", "dog")
  assert enc.labels.tolist() == [2, 0, 1]
  assert enc.item_ids == ("q1", "q2") and enc.annotator_ids == ("w1", "w2")


# ----------------------------------------------------------------------------------------
# Whole-file problems.


def test_empty_inputs_raise_feedback_input_error(tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_bytes(b"\n\n")
  with pytest.raises(FeedbackInputError, match="no annotation records"):
    read_annotations(empty, format="jsonl")
  header_only = tmp_path / "h.csv"
  header_only.write_text("question,worker,answer\n")
  with pytest.raises(FeedbackInputError, match="no annotation records"):
    read_annotations(header_only, format="crowd_csv")
  nothing = tmp_path / "nothing.csv"
  nothing.write_text("")
  with pytest.raises(FeedbackInputError, match="empty"):
    read_annotations(nothing, format="crowd_csv")
  assert issubclass(FeedbackInputError, ValueError)


def test_all_rejected_raises_and_still_writes_rejects(tmp_path):
  path = _write_jsonl(tmp_path / "bad.jsonl", [_row("q1", "w1", "x"), "{"])
  rejects_path = tmp_path / "rejects.jsonl"
  with pytest.raises(FeedbackInputError) as info:
    read_annotations(path, format="jsonl", rejects_path=rejects_path)
  message = str(info.value)
  assert "read 2, accepted 0, rejected 2" in message
  assert str(rejects_path) in message and "bad.jsonl" in message
  assert [r["line"] for r in _read_rejects(rejects_path)] == [1, 2]
  dup = _write_jsonl(tmp_path / "dup.jsonl", [_row("q1", "w1", "a"), _row("q1", "w1", "a")])
  with pytest.raises(FeedbackInputError, match="accepted 0, rejected 2"):
    read_annotations(dup, format="jsonl", duplicate_policy="reject_all")


def test_clean_file_writes_an_empty_rejects_file(tmp_path):
  path = _write_jsonl(tmp_path / "ok.jsonl", [_row("q1", "w1", "a")])
  rejects_path = tmp_path / "rejects.jsonl"
  report = read_annotations(path, format="jsonl", rejects_path=rejects_path)
  assert rejects_path.read_bytes() == b""
  assert "only one annotator" in report.summary()


def test_file_and_header_errors(tmp_path):
  missing = tmp_path / "nope.csv"
  with pytest.raises(FileNotFoundError, match="nope.csv"):
    read_annotations(missing, format="csv")
  crowd = tmp_path / "crowd.csv"
  crowd.write_text("question,worker,answer\nq,w,1\n")
  with pytest.raises(FeedbackInputError, match="lacks required column.*item_id.*crowd_csv"):
    read_annotations(crowd, format="csv")
  bad_header = tmp_path / "bad.csv"
  bad_header.write_text("question,annotator,answer\nq,w,1\n")
  with pytest.raises(FeedbackInputError, match="bad.csv:1: .*worker"):
    read_annotations(bad_header, format="crowd_csv")
  with pytest.raises(ValueError, match="jsonl, csv, parquet, crowd_csv"):
    read_annotations(crowd, format="tsv")
  with pytest.raises(ValueError, match="keep_last"):
    read_annotations(crowd, format="crowd_csv", duplicate_policy="newest")
  not_parquet = tmp_path / "x.parquet"
  not_parquet.write_text("hello")
  with pytest.raises(FeedbackInputError, match="not a readable Parquet file"):
    read_annotations(not_parquet, format="parquet")


def test_read_truth_errors(tmp_path):
  path = tmp_path / "truth.csv"
  path.write_text("question,truth\nq1,0\nq2,1\nq1,1\n")
  with pytest.raises(FeedbackInputError, match="truth.csv:4: .*line 2"):
    read_truth(path)
  path.write_text("question,truth\nq1,0\nq2\n")
  with pytest.raises(FeedbackInputError, match="truth.csv:3: expected 2 columns"):
    read_truth(path)
  with pytest.raises(FileNotFoundError, match="absent.csv"):
    read_truth(tmp_path / "absent.csv")


# ----------------------------------------------------------------------------------------
# Scale (speed itself is measured in benchmarks/, not asserted here).


@pytest.mark.slow
def test_one_million_crowd_rows_are_all_accounted_for(tmp_path):
  rng = np.random.default_rng(1)
  n = 1_000_000
  questions = rng.integers(0, 100_000, n)
  workers = rng.integers(0, 2_000, n)
  answers = rng.integers(0, 3, n)
  path = tmp_path / "answers.csv"
  with path.open("w") as f:
    f.write("question,worker,answer\n")
    f.write("".join(f"q{q},w{w},{a}\n" for q, w, a in zip(questions, workers, answers)))
  report = read_annotations(path, format="crowd_csv")
  # Reference counts with NumPy on the generating arrays.
  pairs = np.unique(questions * 2_000 + workers)
  assert report.num_read == n
  assert report.num_accepted == pairs.size  # keep_last leaves one per (item, annotator)
  assert report.annotations.num_items == np.unique(questions).size


# ----------------------------------------------------------------------------------------
# Declared classes: an answer outside them is a reject, not a new class.


def _crowd_rows_with_typos() -> list[tuple[str, str, str]]:
  """40 workers answer 0/1 on 5 questions; line 9 says "O" and line 30 says "yes"."""
  rows = [(f"q{i % 5}", f"w{i}", str((i * 7) % 3 % 2)) for i in range(40)]
  rows[7] = (rows[7][0], rows[7][1], "O")  # line 9 (header is line 1)
  rows[28] = (rows[28][0], rows[28][1], "yes")  # line 30
  return rows


@pytest.mark.parametrize("dirty", [False, True])
def test_crowd_csv_declared_classes_reject_typos_with_line(tmp_path, dirty):
  rows = _crowd_rows_with_typos()
  path = tmp_path / "answers.csv"
  text = "question,worker,answer\n" + "".join(f"{q},{w},{a}\n" for q, w, a in rows)
  if dirty:  # a quoted field sends the file through the per-line reader
    text = text.replace("q3,w3,", '"q3",w3,')
  path.write_text(text, encoding="utf-8")
  undeclared = read_annotations(path, format="crowd_csv")
  assert undeclared.annotations.class_names == ("0", "1", "O", "yes")  # today's behaviour
  rejects_path = tmp_path / "rejects.jsonl"
  report = read_annotations(path, format="crowd_csv", classes="0,1", rejects_path=rejects_path)
  enc = report.annotations
  assert enc.class_names == ("0", "1")
  assert report.num_read == 40 and report.num_rejected == 2 and report.num_accepted == 38
  assert report.num_accepted + report.num_rejected == report.num_read
  rejects = _read_rejects(rejects_path)
  assert [(r["file"], r["line"], r["field"]) for r in rejects] == [
      ("answers.csv", 9, "answer"), ("answers.csv", 30, "answer")]
  assert rejects[0]["reason"] == "answer 'O' is not one of the declared classes 0, 1"
  assert rejects[1]["reason"] == "answer 'yes' is not one of the declared classes 0, 1"
  assert rejects[0]["raw"] == "q2,w7,O"
  # The accepted rows, in file order, with their own labels and line ids.
  kept = [r for n, r in enumerate(rows) if n not in (7, 28)]
  assert [enc.class_names[k] for k in enc.labels] == [a for _, _, a in kept]
  assert [enc.item_ids[i] for i in enc.items] == [q for q, _, _ in kept]
  assert [enc.annotator_ids[a] for a in enc.annotators] == [w for _, w, _ in kept]
  assert "answers.csv:9" not in enc.annotation_ids and "answers.csv:10" in enc.annotation_ids


def test_crowd_csv_declared_class_order_and_unseen_class(tmp_path):
  path = tmp_path / "answers.csv"
  path.write_text("question,worker,answer\nq1,w1,cat\nq1,w2,dog\nq2,w1,dog\n", encoding="utf-8")
  enc = read_annotations(path, format="crowd_csv", classes=["dog", "cat", "bird"]).annotations
  assert enc.class_names == ("dog", "cat", "bird")  # declared order; bird has no answer
  assert enc.labels.tolist() == [1, 0, 0]


def test_pairwise_declared_classes_reject_ties(tmp_path):
  lines = [
      _row("q1", "w1", "a"),                                             # 1 ok
      _row("q1", "w2", "tie"),                                           # 2 tie: not declared
      _row("q2", "w1", "B", is_golden=True, golden_answer="tie"),        # 3 golden tie
      _row("q2", "w2", "c"),                                             # 4 unknown choice
      _row("q3", "w3", "b", is_golden=False, golden_answer="tie"),       # 5 ok: not golden
  ]
  path = _write_jsonl(tmp_path / "ann.jsonl", lines)
  report = read_annotations(path, format="jsonl", classes=("b", "A"))
  assert report.annotations.class_names == ("a", "b")  # the schema's order, lower case
  assert report.annotations.labels.tolist() == [types.A_PREFERRED, types.B_PREFERRED]
  assert [(r["line"], r["field"], r["reason"]) for r in report.rejects] == [
      (2, "choice", "choice 'tie' is not one of the declared classes a, b"),
      (3, "golden_answer", "golden_answer 'tie' is not one of the declared classes a, b"),
      (4, "choice", "unknown choice 'c'; expected one of a, b (any case)"),
  ]
  # Undeclared, the schema's three classes as before.
  assert read_annotations(path, format="jsonl").annotations.class_names == ("a", "b", "tie")


@pytest.mark.parametrize("classes, format, message", [
    ("0", "crowd_csv", "declares 1 class"),
    ("0,,1", "crowd_csv", "has an empty name"),
    ("0, 1,0", "crowd_csv", "names 0 more than once"),
    ("a,c", "jsonl", "c is not a choice of the pairwise schema"),
    ("a,tie", "csv", "must include a and b"),
])
def test_declared_classes_errors_name_the_problem(tmp_path, classes, format, message):
  with pytest.raises(ValueError, match=message):
    records.declared_classes(classes, format=format)
  path = tmp_path / "answers.csv"
  path.write_text("question,worker,answer\nq1,w1,0\n", encoding="utf-8")
  with pytest.raises(ValueError, match=message):
    read_annotations(path, format=format, classes=classes)


def test_read_annotator_truth(tmp_path):
  path = tmp_path / "annotator_truth.csv"
  path.write_text("annotator,type,change_time,accuracy\nann-1,good,,0.9\n"
                  "ann-2,drifting,1700000100.5,0.8\nann-3,drifting,2023-11-14T22:15:00Z,0.8\n",
                  encoding="utf-8")
  truth = records.read_annotator_truth(path)
  assert truth["ann-1"][0] == "good" and np.isnan(truth["ann-1"][1])
  assert truth["ann-2"] == ("drifting", 1700000100.5)
  assert truth["ann-3"] == ("drifting", 1700000100.0)
  path.write_text("annotator,type,change_time\nann-1,good,\nann-1,spammer,\n", encoding="utf-8")
  with pytest.raises(FeedbackInputError, match=":3: annotator 'ann-1' is listed twice"):
    records.read_annotator_truth(path)
  path.write_text("annotator,type,change_time\nann-1,drifting,soon\n", encoding="utf-8")
  with pytest.raises(FeedbackInputError, match=":2: change_time: expected an ISO 8601"):
    records.read_annotator_truth(path)
  path.write_text("annotator,kind\nann-1,good\n", encoding="utf-8")
  with pytest.raises(FeedbackInputError, match="lacks required column"):
    records.read_annotator_truth(path)


def test_crowd_quoted_header_takes_the_fast_path(tmp_path, monkeypatch):
  # pyarrow's CSV writer and R's write.csv quote the header; the rows stay bare.
  rows = "q1,w1,a\nq1,w2,b\nq2,w1,b\n"
  bare, quoted = tmp_path / "bare.csv", tmp_path / "quoted.csv"
  bare.write_text("question,worker,answer\n" + rows)
  quoted.write_text('"question","worker","answer"\n' + rows)
  expected = read_annotations(bare, format="crowd_csv").annotations
  # The per-line reader is not reached: the fast path read the quoted file.
  monkeypatch.setattr(records, "_crowd_records", lambda *a: pytest.fail("per-line reader used"))
  monkeypatch.setattr(records, "_crowd_unquoted_lines", lambda *a: pytest.fail("per-line reader used"))
  got = read_annotations(quoted, format="crowd_csv").annotations
  assert (got.item_ids, got.annotator_ids, got.class_names) == (("q1", "q2"), ("w1", "w2"), ("a", "b"))
  assert (got.items.tolist(), got.annotators.tolist(), got.labels.tolist()) == ([0, 0, 1], [0, 1, 0], [0, 1, 1])
  for name in ("items", "annotators", "labels"):
    np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))


@pytest.mark.parametrize("classes, policy", [(None, "keep_last"), (("0", "1"), "keep_first"),
                                             (None, "reject_all")])
def test_crowd_fast_path_matches_the_per_line_reader_on_spaces_duplicates_and_typos(
    tmp_path, monkeypatch, classes, policy):
  # Ids equal once stripped (" q1" and "q1") share a code; w1 answers q1 twice (a
  # duplicate and a contradiction); "O" is outside the declared classes.
  path = tmp_path / "answers.csv"
  path.write_bytes(b"question,worker,answer\r\n q1,w1,0\r\nq1 ,w2\t,1\r\nq2,w1, 1\r\nq1,w1,1\r\n"
                   b"q3,w3,O\r\nq2,w2,0\r\n")
  calls = []
  fast_path = records._crowd_fast_path
  monkeypatch.setattr(records, "_crowd_fast_path", lambda p: calls.append(p) or fast_path(p))
  fast = read_annotations(path, format="crowd_csv", classes=classes, duplicate_policy=policy)
  assert len(calls) == 1 and fast_path(path) is not None  # the fast path read it
  monkeypatch.setattr(records, "_crowd_fast_path", lambda p: None)
  slow = read_annotations(path, format="crowd_csv", classes=classes, duplicate_policy=policy)
  a, b = fast.annotations, slow.annotations
  for name in ("items", "annotators", "labels"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  assert (a.item_ids, a.annotator_ids, a.class_names) == (b.item_ids, b.annotator_ids, b.class_names)
  assert a.annotation_ids == b.annotation_ids and list(a.annotation_ids) == list(b.annotation_ids)
  assert (fast.rejects, fast.duplicates, fast.contradictions, fast.fingerprint) == (
      slow.rejects, slow.duplicates, slow.contradictions, slow.fingerprint)
  assert item_lineage(a) == item_lineage(b)
  assert a.item_ids[:2] == ("q1", "q2") and "answers.csv:3" in a.annotation_ids
