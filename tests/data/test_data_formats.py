"""Tests for reading preference, SFT and KTO files: formats, rejects, real HH-RLHF data."""

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_jax import data
from rlhf_jax.data import formats

HH_FILE = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hh-rlhf"
           / "harmless-base-test-head1500.jsonl.gz")

PREFIX = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:"
HH_PAIR = {"chosen": PREFIX + " Fine, thanks.", "rejected": PREFIX + " Go away."}


def write_lines(path, lines):
  """Writes raw lines (str or bytes) to a file, one per line."""
  with open(path, "wb") as f:
    for line in lines:
      f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
  return path


def read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


# --- HH-RLHF ------------------------------------------------------------------------


def test_split_hh_dialogue_on_hand_written_dialogue():
  prompt, completion = data.split_hh_dialogue(HH_PAIR["chosen"])
  assert prompt == ("\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?"
                    "\n\nAssistant:")
  assert completion == " Fine, thanks."


def test_hh_pair_is_split_into_shared_prompt_and_two_completions(tmp_path):
  path = write_lines(tmp_path / "hh.jsonl", [json.dumps(HH_PAIR)])
  pairs = data.load_preference_data(path)
  assert pairs.report.format == "hh_rlhf"
  assert pairs.prompts == (PREFIX,)
  assert pairs.chosen == (" Fine, thanks.",)
  assert pairs.rejected == (" Go away.",)
  np.testing.assert_array_equal(pairs.target_prob, [1.0])
  np.testing.assert_array_equal(pairs.weight, [1.0])
  np.testing.assert_array_equal(pairs.is_tie, [False])
  np.testing.assert_array_equal(pairs.annotator, [-1])
  assert pairs.sources == (f"{path}:line 1",)


def test_every_kind_of_bad_hh_record_is_rejected_with_its_line(tmp_path):
  good = json.dumps(HH_PAIR)
  other_prompt = "\n\nHuman: Something else\n\nAssistant:"
  lines = [
      good,                                                                     # 1
      "",                                                                       # 2 blank
      '{"chosen": "x" "rejected": "y"}',                                        # 3
      "[1, 2]",                                                                 # 4
      json.dumps({"chosen": 5, "rejected": HH_PAIR["rejected"]}),               # 5
      json.dumps({"chosen": HH_PAIR["chosen"]}),                                # 6
      json.dumps({"chosen": HH_PAIR["chosen"], "rejected": other_prompt + " No."}),  # 7
      json.dumps({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: ho"}),     # 8
      json.dumps({"chosen": PREFIX + "  ", "rejected": HH_PAIR["rejected"]}),   # 9
      json.dumps({"chosen": HH_PAIR["chosen"], "rejected": HH_PAIR["chosen"]}),  # 10
      b'{"chosen": "caf\xe9", "rejected": "x"}',                                # 11 latin-1
      good,                                                                     # 12
  ]
  path = write_lines(tmp_path / "bad.jsonl", lines)
  rejects_path = tmp_path / "out" / "rejects.jsonl"
  pairs = data.load_preference_data(path, format="hh_rlhf", rejects_path=rejects_path)
  report = pairs.report
  assert (report.read, report.accepted, report.rejected) == (11, 2, 9)
  assert report.read == report.accepted + report.rejected
  assert pairs.sources == (f"{path}:line 1", f"{path}:line 12")
  rejects = read_jsonl(rejects_path)
  got = [(r["line"], r["field"], r["code"]) for r in rejects]
  assert got == [
      (3, None, "bad_json"),
      (4, None, "not_an_object"),
      (5, "chosen", "wrong_type"),
      (6, "rejected", "missing_field"),
      (7, "rejected", "prompt_mismatch"),
      (8, "chosen", "no_assistant_turn"),
      (9, "chosen", "empty_completion"),
      (10, "rejected", "identical_completions"),
      (11, None, "not_utf8"),
  ]
  assert all(r["file"] == str(path) and r["reason"] for r in rejects)
  assert rejects[2]["record"] == {"chosen": 5, "rejected": HH_PAIR["rejected"]}
  assert rejects[0]["record"] == '{"chosen": "x" "rejected": "y"}'
  assert sum(report.reasons.values()) == report.rejected


def test_type_errors_found_by_the_datasets_reader_keep_physical_line_numbers(tmp_path):
  # Valid JSON throughout (read by `datasets`, mixed types), with a blank line.
  lines = [json.dumps(HH_PAIR), "", json.dumps({"chosen": 5, "rejected": "x"}), json.dumps(HH_PAIR)]
  path = write_lines(tmp_path / "mixed.jsonl", lines)
  pairs = data.load_preference_data(path, rejects_path=tmp_path / "rejects.jsonl")
  assert pairs.sources == (f"{path}:line 1", f"{path}:line 4")
  (reject,) = read_jsonl(tmp_path / "rejects.jsonl")
  assert (reject["line"], reject["field"], reject["code"]) == (3, "chosen", "wrong_type")


def test_without_rejects_path_a_bad_record_is_a_clear_error(tmp_path):
  path = write_lines(tmp_path / "bad.jsonl", [json.dumps(HH_PAIR), json.dumps({"chosen": 5, "rejected": "x"})])
  with pytest.raises(data.DataError) as error:
    data.load_preference_data(path)
  message = str(error.value)
  assert str(path) in message and "line 2" in message and "'chosen'" in message
  assert "expected a string, got int 5" in message and "rejects_path" in message


@pytest.mark.parametrize("content, expected", [
    ("", "holds no records"),
    ('[{"chosen": "a", "rejected": "b"}]', "JSON array"),
])
def test_empty_and_array_files_are_errors(tmp_path, content, expected):
  path = tmp_path / "file.jsonl"
  path.write_text(content)
  with pytest.raises(data.DataError, match=expected):
    data.load_preference_data(path)


def test_missing_file_unknown_suffix_and_urls_are_errors(tmp_path):
  with pytest.raises(data.DataError, match="no such file"):
    data.load_preference_data(tmp_path / "absent.jsonl")
  (tmp_path / "data.xml").write_text("<a/>")
  with pytest.raises(data.DataError, match="unsupported file type"):
    data.load_preference_data(tmp_path / "data.xml")
  with pytest.raises(data.DataError, match="only local files"):
    data.load_preference_data("https://example.com/data.jsonl")
  with pytest.raises(ValueError, match="unknown preference format"):
    data.load_preference_data(tmp_path / "data.xml", format="hh")


def test_all_records_rejected_is_an_error_after_writing_rejects(tmp_path):
  path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"chosen": 1, "rejected": 2})])
  with pytest.raises(data.DataError, match="none of the 1 records"):
    data.load_preference_data(path, format="hh_rlhf", rejects_path=tmp_path / "r.jsonl")
  assert len(read_jsonl(tmp_path / "r.jsonl")) == 1


def test_unknown_layout_cannot_be_auto_detected(tmp_path):
  path = write_lines(tmp_path / "x.jsonl", [json.dumps({"question": "q", "answer": "a"})])
  with pytest.raises(data.DataError, match="cannot detect the preference format"):
    data.load_preference_data(path)


# --- explicit and messages -----------------------------------------------------------


def test_explicit_format_with_optional_label_fields(tmp_path):
  rows = [
      {"prompt": "Q1", "chosen": " yes", "rejected": " no"},
      {"prompt": "Q2", "chosen": " a", "rejected": " b", "target_prob": 0.75, "weight": 2.0,
       "is_tie": False, "annotator": "w7", "id": "pair-2"},
      {"prompt": "Q3", "chosen": " a", "rejected": " b", "target_prob": 1.5},
      {"prompt": "Q4", "chosen": " a", "rejected": " b", "weight": -1},
      {"prompt": "Q5", "chosen": " a", "rejected": " b", "is_tie": "yes"},
      {"prompt": "Q6", "chosen": " a", "rejected": " b", "target_prob": True},
  ]
  path = write_lines(tmp_path / "explicit.jsonl", [json.dumps(r) for r in rows])
  pairs = data.load_preference_data(path, rejects_path=tmp_path / "r.jsonl")
  assert pairs.report.format == "explicit"
  assert pairs.prompts == ("Q1", "Q2")
  np.testing.assert_allclose(pairs.target_prob, [1.0, 0.75])
  np.testing.assert_allclose(pairs.weight, [1.0, 2.0])
  np.testing.assert_array_equal(pairs.annotator, [-1, 0])
  assert pairs.annotator_names == ("w7",)
  assert pairs.example_ids == (f"{path}:line 1", "pair-2")
  got = [(r["line"], r["field"], r["code"]) for r in read_jsonl(tmp_path / "r.jsonl")]
  assert got == [(3, "target_prob", "bad_value"), (4, "weight", "bad_value"),
                 (5, "is_tie", "wrong_type"), (6, "target_prob", "wrong_type")]


def test_messages_with_separate_prompt_render_with_the_documented_template(tmp_path):
  record = {
      "prompt": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}],
      "chosen": [{"role": "assistant", "content": "Hello!"}],
      "rejected": [{"role": "assistant", "content": "What?"}],
  }
  path = write_lines(tmp_path / "m.jsonl", [json.dumps(record)])
  pairs = data.load_preference_data(path)
  assert pairs.report.format == "messages"
  assert pairs.prompts == ("\n\nSystem: Be nice.\n\nHuman: Hi\n\nAssistant:",)
  assert pairs.chosen == (" Hello!",)
  assert pairs.rejected == (" What?",)


def test_messages_as_full_conversations_split_like_hh_rlhf(tmp_path):
  def conversation(reply):
    return [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": reply}]
  good = {"chosen": conversation("Fine, thanks."), "rejected": conversation("Go away.")}
  mismatch = {"chosen": conversation("A"),
              "rejected": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "B"}]}
  bad_role = {"chosen": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}],
              "rejected": conversation("B")}
  ends_with_user = {"chosen": conversation("A")[:3], "rejected": conversation("B")}
  path = write_lines(tmp_path / "m.jsonl", [json.dumps(r) for r in (good, mismatch, bad_role, ends_with_user)])
  pairs = data.load_preference_data(path, format="messages", rejects_path=tmp_path / "r.jsonl")
  # The same dialogue as HH_PAIR, so it must split into the same strings.
  hh_prompt, hh_chosen = data.split_hh_dialogue(HH_PAIR["chosen"])
  assert pairs.prompts == (hh_prompt,)
  assert pairs.chosen == (hh_chosen,)
  assert pairs.rejected == (" Go away.",)
  got = [(r["line"], r["field"], r["code"]) for r in read_jsonl(tmp_path / "r.jsonl")]
  assert got == [(2, "rejected", "prompt_mismatch"), (3, "chosen", "bad_role"), (4, "chosen", "bad_role")]


# --- feedback labels -----------------------------------------------------------------


FEEDBACK_ROWS = [
    # label, target_prob, confidence, annotator_ids, annotation_ids, expert_review
    dict(item="i1", prompt="P1", response_a=" A1", response_b=" B1", label="a", target_prob=0.8,
         confidence=0.9, annotator_ids=["w1", "w2"], annotation_ids=["n1", "n2"], expert_review=False),
    dict(item="i2", prompt="P2", response_a=" A2", response_b=" B2", label="b", target_prob=0.3,
         confidence=0.6, annotator_ids=["w1"], annotation_ids=["n3"], expert_review=False),
    dict(item="i3", prompt="P3", response_a=" A3", response_b=" B3", label="tie", target_prob=None,
         confidence=None, annotator_ids=["w3"], annotation_ids=["n4"], expert_review=False),
    dict(item="i4", prompt="P4", response_a=" A4", response_b=" B4", label="b", target_prob=None,
         confidence=1.0, annotator_ids=["w3"], annotation_ids=["n5"], expert_review=False),
    dict(item="i5", prompt="P5", response_a=" A5", response_b=" B5", label="a", target_prob=0.2,
         confidence=0.5, annotator_ids=["w1"], annotation_ids=["n6"], expert_review=False),
    dict(item="i6", prompt="P6", response_a=" A6", response_b=" B6", label="c", target_prob=None,
         confidence=None, annotator_ids=["w1"], annotation_ids=["n7"], expert_review=False),
    dict(item="i7", prompt="P7", response_a=" A7", response_b=" B7", label="a", target_prob=0.9,
         confidence=0.9, annotator_ids=["w2"], annotation_ids=["n8"], expert_review=True),
]


def check_feedback_pairs(pairs, rejects_path, path, location):
  # Chosen is the preferred side; target_prob is P(chosen preferred).
  assert pairs.prompts == ("P1", "P2", "P3", "P4")
  assert pairs.chosen == (" A1", " B2", " A3", " B4")
  assert pairs.rejected == (" B1", " A2", " B3", " A4")
  np.testing.assert_allclose(pairs.target_prob, [0.8, 0.7, 0.5, 1.0], rtol=1e-6)
  np.testing.assert_allclose(pairs.weight, [0.9, 0.6, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_array_equal(pairs.is_tie, [False, False, True, False])
  # Single-annotator labels get an index (first appearance order), pooled ones -1.
  assert pairs.annotator_names == ("w1", "w3")
  np.testing.assert_array_equal(pairs.annotator, [-1, 0, 1, 1])
  assert pairs.annotator_ids == (("w1", "w2"), ("w1",), ("w3",), ("w3",))
  assert pairs.annotation_ids == (("n1", "n2"), ("n3",), ("n4",), ("n5",))
  assert pairs.example_ids == ("i1", "i2", "i3", "i4")
  rejects = read_jsonl(rejects_path)
  got = [(r[location], r["field"], r["code"]) for r in rejects]
  first = 5  # 1-based data rows (Parquet) and lines (JSONL) coincide here
  assert got == [(first, "target_prob", "contradiction"), (first + 1, "label", "bad_label"),
                 (first + 2, "expert_review", "expert_review")]
  assert all(r["file"] == str(path) for r in rejects)


def test_feedback_labels_from_parquet(tmp_path):
  path = tmp_path / "labels.parquet"
  pq.write_table(pa.Table.from_pylist(FEEDBACK_ROWS), path)
  pairs = data.load_preference_data(path, rejects_path=tmp_path / "r.jsonl")
  assert pairs.report.format == "feedback_labels"
  assert (pairs.report.read, pairs.report.accepted, pairs.report.rejected) == (7, 4, 3)
  check_feedback_pairs(pairs, tmp_path / "r.jsonl", path, "row")


def test_feedback_labels_from_jsonl(tmp_path):
  path = write_lines(tmp_path / "labels.jsonl", [json.dumps(r) for r in FEEDBACK_ROWS])
  pairs = data.load_preference_data(path, format="feedback_labels", rejects_path=tmp_path / "r.jsonl")
  check_feedback_pairs(pairs, tmp_path / "r.jsonl", path, "line")


def test_feedback_labels_from_csv_with_joined_ids(tmp_path):
  path = tmp_path / "labels.csv"
  path.write_text(
      "item,prompt,response_a,response_b,label,confidence,annotator_ids,annotation_ids\n"
      "i1,P1, A1, B1,a,0.75,w1;w2,n1;n2\n"
      "i2,P2, A2, B2,b,,w3,n3\n"
      "i3,P3, A3, B3,maybe,,w3,n4\n")
  pairs = data.load_preference_data(path, rejects_path=tmp_path / "r.jsonl")
  assert pairs.chosen == (" A1", " B2")
  np.testing.assert_allclose(pairs.weight, [0.75, 1.0])
  assert pairs.annotator_ids == (("w1", "w2"), ("w3",))
  np.testing.assert_array_equal(pairs.annotator, [-1, 0])
  assert pairs.sources == (f"{path}:row 1", f"{path}:row 2")
  (reject,) = read_jsonl(tmp_path / "r.jsonl")
  assert (reject["row"], reject["field"], reject["code"]) == (3, "label", "bad_label")


def test_raw_feedback_annotations_give_one_pair_per_annotator(tmp_path):
  # The per-annotation schema of rlhf_jax.feedback.io.records (`choice`, `annotator_id`).
  rows = [
      {"annotation_id": "x1", "item_id": "c1", "prompt": "P", "response_a": " A",
       "response_b": " B", "annotator_id": "ann-2", "choice": "b"},
      {"annotation_id": "x2", "item_id": "c1", "prompt": "P", "response_a": " A",
       "response_b": " B", "annotator_id": "ann-1", "choice": "A"},
      {"annotation_id": "x3", "item_id": "c1", "prompt": "P", "response_a": " A",
       "response_b": " B", "annotator_id": "ann-2", "choice": "left"},
  ]
  path = write_lines(tmp_path / "annotations.jsonl", [json.dumps(r) for r in rows])
  pairs = data.load_preference_data(path, rejects_path=tmp_path / "r.jsonl")
  assert pairs.report.format == "feedback_labels"
  assert pairs.chosen == (" B", " A")
  assert pairs.annotator_names == ("ann-2", "ann-1")
  np.testing.assert_array_equal(pairs.annotator, [0, 1])
  assert pairs.annotation_ids == (("x1",), ("x2",))
  assert pairs.example_ids == ("c1", "c1")
  (reject,) = read_jsonl(tmp_path / "r.jsonl")
  assert (reject["line"], reject["field"], reject["code"]) == (3, "choice", "bad_label")


# --- SFT and unpaired ----------------------------------------------------------------


def test_sft_formats(tmp_path):
  text = write_lines(tmp_path / "text.jsonl", [json.dumps({"text": "Once upon a time."})])
  sft = data.load_sft_data(text)
  assert (sft.prompts, sft.completions) == (("",), ("Once upon a time.",))
  pc = write_lines(tmp_path / "pc.jsonl", [json.dumps({"prompt": "Q:", "completion": " A."})])
  sft = data.load_sft_data(pc)
  assert (sft.prompts, sft.completions) == (("Q:",), (" A.",))
  messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
  chat = write_lines(tmp_path / "chat.jsonl", [json.dumps({"messages": messages})])
  sft = data.load_sft_data(chat)
  assert (sft.prompts, sft.completions) == (("\n\nHuman: Hi\n\nAssistant:",), (" Hello",))


def test_unpaired_labels_and_rejects(tmp_path):
  rows = [
      {"prompt": "Q", "completion": " good", "label": True},
      {"prompt": "Q", "completion": " bad", "label": False},
      {"prompt": "Q", "completion": " meh", "label": "yes"},
      {"prompt": "Q", "completion": " meh"},
      {"prompt": "Q", "completion": "", "label": True},
  ]
  path = write_lines(tmp_path / "kto.jsonl", [json.dumps(r) for r in rows])
  unpaired = data.load_unpaired_data(path, rejects_path=tmp_path / "r.jsonl")
  np.testing.assert_array_equal(unpaired.is_desirable, [True, False])
  got = [(r["line"], r["field"], r["code"]) for r in read_jsonl(tmp_path / "r.jsonl")]
  assert got == [(3, "label", "wrong_type"), (4, "label", "missing_field"), (5, "completion", "empty_completion")]


# --- fingerprints and real data ------------------------------------------------------


def test_fingerprint_is_sha256_of_the_bytes(tmp_path):
  import hashlib
  path = tmp_path / "f.bin"
  path.write_bytes(b"abc")
  assert data.fingerprint(path) == hashlib.sha256(b"abc").hexdigest()
  assert data.fingerprint(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_real_hh_rlhf_file(tmp_path):
  if not HH_FILE.is_file():
    pytest.skip(f"real HH-RLHF data not found at {HH_FILE} (../shared/data is absent)")
  rejects_path = tmp_path / "rejects.jsonl"
  pairs = data.load_preference_data(HH_FILE, rejects_path=rejects_path)
  report = pairs.report
  assert report.format == "hh_rlhf"
  assert report.read == 1500
  assert report.accepted + report.rejected == 1500
  assert report.fingerprint == data.fingerprint(HH_FILE)
  assert all(p.endswith("\n\nAssistant:") for p in pairs.prompts)
  # Each accepted pair rebuilds its original dialogues exactly (read independently here).
  with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
    originals = [json.loads(line) for line in f]
  for source, prompt, chosen, rejected in zip(pairs.sources, pairs.prompts, pairs.chosen, pairs.rejected):
    line = int(source.rsplit("line ", 1)[1])
    assert prompt + chosen == originals[line - 1]["chosen"]
    assert prompt + rejected == originals[line - 1]["rejected"]
  # Found by inspection: four pairs whose chosen reply is empty, one whose two dialogues
  # differ before the last assistant turn (line 1255).
  rejects = read_jsonl(rejects_path)
  assert len(rejects) == report.rejected == 5
  assert sorted((r["line"], r["code"]) for r in rejects) == [
      (87, "empty_completion"), (517, "empty_completion"), (926, "empty_completion"),
      (1104, "empty_completion"), (1255, "prompt_mismatch")]


def test_render_messages_template():
  assert formats.render_messages([("user", "a"), ("assistant", "b")]) == "\n\nHuman: a\n\nAssistant: b"
  assert data.MESSAGE_TEMPLATE.format(role_name="System", content="c") == "\n\nSystem: c"
