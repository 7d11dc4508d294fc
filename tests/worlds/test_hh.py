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
  ])
  data = hh.load(path, vocab_size=100, max_length=8)
  assert len(data) == 1 and data.lines_read == 5
  assert [line for line, _ in data.rejects] == [2, 3, 4, 5]
  assert "identical final turns" in data.rejects[2][1]
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
