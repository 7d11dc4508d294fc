"""Loaded data sets (`data.records`): row i is example i with its source line, single
annotators indexed in order of appearance, content fingerprints that ignore the file and
follow the examples, and every loader's counts (read = accepted + rejected)."""

import json

import numpy as np
import pytest

from rlhf_jax.data import records


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  return path


def test_preference_pairs_keep_their_sources_labels_and_annotators(tmp_path):
  rows = [
      {"prompt": "p1", "chosen": " a", "rejected": " b", "annotator": "ann-7"},
      {"prompt": "p2", "chosen": " c", "rejected": " d", "target_prob": 0.75, "weight": 2.0, "annotator": "ann-3"},
      {"prompt": "p3", "chosen": " e"},  # no rejected: rejected
      {"prompt": "p4", "chosen": " g", "rejected": " h", "annotator": "ann-7"},
      {"prompt": "p5", "chosen": " i", "rejected": " j"},
  ]
  path = _jsonl(tmp_path / "pairs.jsonl", rows)
  data = records.load_preference_data(path, rejects_path=tmp_path / "rejects.jsonl")
  assert len(data) == 4 and data.prompts == ("p1", "p2", "p4", "p5")
  assert data.sources == tuple(f"{path}:line {n}" for n in (1, 2, 4, 5))
  np.testing.assert_allclose(data.target_prob, [1.0, 0.75, 1.0, 1.0])
  np.testing.assert_allclose(data.weight, [1.0, 2.0, 1.0, 1.0])
  # Annotators numbered in order of first appearance; -1 without a single annotator.
  assert data.annotator_names == ("ann-7", "ann-3")
  np.testing.assert_array_equal(data.annotator, [0, 1, 0, -1])
  assert (data.report.read, data.report.accepted, data.report.rejected) == (5, 4, 1)
  assert data.report.format == "explicit"
  rejected = json.loads((tmp_path / "rejects.jsonl").read_text())
  assert rejected["line"] == 3 and rejected["field"] == "rejected"


def test_fingerprint_follows_the_content_not_the_file(tmp_path):
  rows = [{"prompt": "p", "chosen": " a", "rejected": " b"}, {"prompt": "q", "chosen": " c", "rejected": " d"}]
  first = records.load_preference_data(_jsonl(tmp_path / "one.jsonl", rows))
  second = records.load_preference_data(_jsonl(tmp_path / "two.jsonl", rows))
  assert first.fingerprint == second.fingerprint
  assert first.fingerprint == records.PreferenceData.from_lists(["p", "q"], [" a", " c"], [" b", " d"]).fingerprint
  soft = records.PreferenceData.from_lists(["p", "q"], [" a", " c"], [" b", " d"], target_prob=[1.0, 0.9])
  swapped = records.PreferenceData.from_lists(["q", "p"], [" c", " a"], [" d", " b"])
  assert len({first.fingerprint, soft.fingerprint, swapped.fingerprint}) == 3
  sft = records.SFTData.from_lists(["p"], [" a"])
  assert sft.fingerprint != records.SFTData.from_lists(["p"], [" b"]).fingerprint


def test_sft_and_unpaired_loaders(tmp_path):
  sft = records.load_sft_data(_jsonl(tmp_path / "sft.jsonl", [
      {"prompt": "p", "completion": " x"}, {"prompt": "q", "completion": " y", "id": "ex-2"}]))
  assert sft.completions == (" x", " y") and sft.report.format == "prompt_completion"
  assert sft.example_ids == (f"{tmp_path / 'sft.jsonl'}:line 1", "ex-2")
  kto = records.load_unpaired_data(_jsonl(tmp_path / "kto.jsonl", [
      {"prompt": "p", "completion": " good", "label": True},
      {"prompt": "q", "completion": " bad", "label": False},
      {"prompt": "r", "completion": " ?"}]), rejects_path=tmp_path / "kto_rejects.jsonl")
  np.testing.assert_array_equal(kto.is_desirable, [True, False])
  assert (kto.report.read, kto.report.accepted, kto.report.rejected) == (3, 2, 1)


def test_inconsistent_columns_and_unknown_formats_are_refused(tmp_path):
  with pytest.raises(ValueError, match="`chosen` has 1 entries, `prompts` has 2"):
    records.PreferenceData(prompts=("a", "b"), chosen=("c",), rejected=("d", "e"),
                           target_prob=np.ones(2), weight=np.ones(2), is_tie=np.zeros(2, bool),
                           annotator=np.full(2, -1), annotator_names=(), annotator_ids=((), ()),
                           annotation_ids=((), ()), example_ids=("x", "y"), sources=("x", "y"))
  with pytest.raises(ValueError, match="2 prompts but 1 completions"):
    records.SFTData.from_lists(["a", "b"], ["c"])
  with pytest.raises(ValueError, match="unknown preference format 'explict'"):
    records.load_preference_data(tmp_path / "x.jsonl", format="explict")
  with pytest.raises(ValueError, match="unknown SFT format 'chat'"):
    records.load_sft_data(tmp_path / "x.jsonl", format="chat")
