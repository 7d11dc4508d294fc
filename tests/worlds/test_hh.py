"""The semi-real HH-RLHF world: reading, rejects, sides and the truth."""
import gzip
import json
import zlib

import numpy as np
import pytest

from rlhf_jax.worlds import graded, hh


def _write(path, rows):
  with gzip.open(path, "wt", encoding="utf-8") as f:
    for row in rows:
      f.write(row if isinstance(row, str) else json.dumps(row))
      f.write("\n")


def test_reads_final_turns_and_rejects_unusable_rows(tmp_path):
  path = tmp_path / "pairs.jsonl.gz"
  _write(path, [
      {"chosen": "\n\nHuman: hi\n\nAssistant: Hello there!", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
      "{not json",
      {"chosen": "no turns", "rejected": "\n\nAssistant: x"},
      {"chosen": "\n\nHuman: a\n\nAssistant: same", "rejected": "\n\nHuman: b\n\nAssistant: same"},
      {"chosen": 3, "rejected": "x"},
      "",                                                    # blank: skipped, not counted
      {"chosen": "\n\nAssistant: x"},                         # no `rejected`
  ])
  with gzip.open(path, "ab") as f:
    f.write(b'{"chosen": "\xff", "rejected": "x"}\n')     # not UTF-8
  data = hh.load(path, vocab_size=100, max_length=8)
  assert len(data) == 1 and data.lines_read == 7 == len(data) + len(data.rejects)
  # The reasons of the ingestion module (rlhf_jax.io.ingest) for what it reads.
  try:
    json.loads("{not json")
  except json.JSONDecodeError as error:
    bad_json = f"not valid JSON: invalid JSON at column {error.colno} ({error.msg}); expected one JSON object per line"
  assert data.rejects == (
      (2, bad_json),
      (3, "no assistant turn"),
      (4, "identical final turns (no preference to learn)"),
      (5, "field 'chosen': expected a string, got int 3"),
      (7, "field 'rejected': missing required field rejected"),
      (8, "line is not valid UTF-8 (byte 0xff at offset 12); expected UTF-8 text"),
  )
  expected = [graded.FIRST_WORD + zlib.crc32(w.encode()) % 97 for w in ("hello", "there")]
  assert data.chosen[0, :2].tolist() == expected and data.lengths[0].tolist() == [2, 2]


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothere.jsonl.gz"):
    hh.load(tmp_path / "nothere.jsonl.gz")


@pytest.mark.skipif(not hh.DEFAULT_PATH.is_file(), reason=f"HH-RLHF pairs not present at {hh.DEFAULT_PATH} "
                    "(../shared/data beside the checkout; see ../shared/data/README.md)")
def test_shared_hh_pairs_truth_is_the_data_set_label():
  data = hh.load()
  assert len(data) + len(data.rejects) == data.lines_read == 1500
  pairs, order = hh.to_pairs(data, seed=3)
  a_is_chosen = pairs.gold_prefers_a
  assert 0.45 < a_is_chosen.mean() < 0.55  # random sides
  # Side a holds the chosen response exactly where the truth says a.
  np.testing.assert_array_equal(pairs.tokens[a_is_chosen, 0], data.chosen[order][a_is_chosen])
  np.testing.assert_array_equal(pairs.tokens[~a_is_chosen, 1], data.chosen[order][~a_is_chosen])
  again, _ = hh.to_pairs(data, seed=3)
  np.testing.assert_array_equal(again.gold, pairs.gold)
