"""Tests for rlhf_jax.feedback.io.training: resolved labels -> train.jsonl, awaiting_review.jsonl,
train_rejects.jsonl, on a hand-made campaign whose every row is worked out here; and the
two commands end to end (`scripts/aggregate.py` then `scripts/train.py`)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax.feedback.workflow import pipeline

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "aggregate.py"

# Items (prompt, response a, response b) and their annotations (annotator, choice):
#   q1: a a a        -> a, vote share 1            -> trained
#   q2: a a b        -> a, vote share 2/3          -> below 0.7 confidence: review; the
#                       expert says b              -> trained with label b (expert)
#   q3: b b a        -> b, share 2/3               -> review, no expert decision: awaiting
#   q4: a a a, identical responses                 -> rejected (identical_completions)
#   q5: b b b b, no prompt text                    -> rejected (missing_field prompt)
#   q6: a b tie tie  -> tie, share 1/2             -> review, no decision: awaiting
ITEMS = {
    "q1": ("Say hi.", " hello there", " go away", "aaa"),
    "q2": ("Name a fruit.", " apple", " rock", "aab"),
    "q3": ("Count to two.", " one three", " one two", "bba"),
    "q4": ("Repeat.", " same", " same", "aaa"),
    "q5": (None, " polite", " rude", "bbbb"),
    "q6": ("Pick.", " left", " right", "ab=="),
}
CHOICE = {"a": "a", "b": "b", "=": "tie"}


def _write_campaign(tmp_path: Path) -> tuple[Path, Path]:
  rows = []
  for item, (prompt, response_a, response_b, choices) in ITEMS.items():
    for n, choice in enumerate(choices):
      row = {"item_id": item, "annotator_id": f"w{n}", "choice": CHOICE[choice],
             "annotation_id": f"{item}-{n}", "prompt": prompt, "response_a": response_a,
             "response_b": response_b}
      rows.append({key: value for key, value in row.items() if value is not None})
  annotations = tmp_path / "annotations.jsonl"
  annotations.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
  experts = tmp_path / "experts.csv"
  experts.write_text("question,truth\nq2,b\n", encoding="utf-8")
  return annotations, experts


def _config(annotations: Path, experts: Path, output_dir: Path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("_aggregate_config_for_training", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.input, config.format, config.output_dir = str(annotations), "jsonl", str(output_dir)
  config.method, config.expert_labels, config.classes = "majority_vote", str(experts), "a,b,tie"
  config.report.plots = False
  config.progress = "off"
  return config


def _jsonl(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_item_is_trained_awaiting_or_rejected(tmp_path):
  annotations, experts = _write_campaign(tmp_path)
  outputs = pipeline.run(_config(annotations, experts, tmp_path / "out"), progress=False)
  out = tmp_path / "out"
  train = {row["item"]: row for row in _jsonl(out / "train.jsonl")}
  awaiting = {row["item"]: row for row in _jsonl(out / "awaiting_review.jsonl")}
  rejects = {row["item"]: row for row in _jsonl(out / "train_rejects.jsonl")}
  assert sorted(train) == ["q1", "q2"]
  assert sorted(awaiting) == ["q3", "q6"]
  assert sorted(rejects) == ["q4", "q5"]
  assert rejects["q4"]["code"] == "identical_completions"
  assert (rejects["q5"]["code"], rejects["q5"]["field"]) == ("missing_field", "prompt")
  with open(out / "labels.csv", newline="", encoding="utf-8") as handle:
    labelled = [row["item"] for row in csv.DictReader(handle)]
  # The count check: each labelled item in exactly one of the three files.
  assert sorted(labelled) == sorted([*train, *awaiting, *rejects])
  report = outputs.training
  assert (report.num_items, report.num_trained, report.num_awaiting, report.num_rejected) == (6, 2, 2, 2)
  assert report.num_expert == 1 and dict(report.reasons) == {"identical_completions": 1, "missing_field": 1}
  assert outputs.summary["training"]["written"] and outputs.summary["training"]["num_trained"] == 2

  # Texts, soft targets (vote shares, not the one-hot vote), weights and lineage.
  q1, q2 = train["q1"], train["q2"]
  assert (q1["prompt"], q1["response_a"], q1["response_b"]) == ITEMS["q1"][:3]
  assert q1["label"] == "a" and q1["target_prob"] == pytest.approx(1.0) and q1["confidence"] == pytest.approx(1.0)
  assert q1["annotation_ids"] == ["q1-0", "q1-1", "q1-2"] and q1["annotator_ids"] == ["w0", "w1", "w2"]
  assert q1["label_source"] == "crowd"
  # The expert decision replaces the crowd's: label b with confidence 1, P(a) = 0.
  assert q2["label"] == "b" and q2["label_source"] == "expert"
  assert q2["target_prob"] == pytest.approx(0.0) and q2["confidence"] == pytest.approx(1.0)
  # Awaiting items keep their crowd label and vote-share target for the reviewer.
  assert awaiting["q3"]["label"] == "b" and awaiting["q3"]["target_prob"] == pytest.approx(1 / 3)
  assert awaiting["q3"]["confidence"] == pytest.approx(2 / 3)
  assert awaiting["q6"]["label"] == "tie" and awaiting["q6"]["target_prob"] == 0.5


def test_the_data_layer_reads_the_training_file_unchanged(tmp_path):
  from rlhf_jax.data import formats, sources  # pylint: disable=g-import-not-at-top
  annotations, experts = _write_campaign(tmp_path)
  pipeline.run(_config(annotations, experts, tmp_path / "out"), progress=False)
  accepted, report = sources.load_records(
      tmp_path / "out" / "train.jsonl", None, format_name="auto",
      detect=lambda rows: ("feedback_labels", formats.parse_feedback_labels))
  assert (report.read, report.accepted, report.rejected) == (2, 2, 0)
  examples = {example.example_id: example for _, example in accepted}
  # Chosen is the preferred side; the weight is the confidence; lineage is kept.
  assert (examples["q2"].chosen, examples["q2"].rejected) == (" rock", " apple")
  assert examples["q2"].target_prob == pytest.approx(1.0) and examples["q2"].weight == pytest.approx(1.0)
  assert examples["q1"].annotation_ids == ("q1-0", "q1-1", "q1-2")


def test_a_task_that_is_not_pairwise_writes_no_training_file(tmp_path):
  answers = tmp_path / "answers.csv"
  answers.write_text("question,worker,answer\n1,w1,0\n1,w2,1\n2,w1,1\n2,w2,1\n", encoding="utf-8")
  config = _config(answers, tmp_path / "none.csv", tmp_path / "out")
  config.format, config.expert_labels, config.classes = "crowd_csv", "", ""
  outputs = pipeline.run(config, progress=False)
  assert outputs.training is None and not (tmp_path / "out" / "train.jsonl").exists()
  assert "not those of a pairwise preference" in outputs.summary["training"]["reason"]


@pytest.mark.slow
def test_annotations_to_trained_reward_model_through_the_two_commands(tmp_path):
  annotations, experts = _write_campaign(tmp_path)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  aggregate = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "aggregate.py"), f"--config={CONFIG}",
       f"--config.input={annotations}", "--config.format=jsonl", f"--config.output_dir={tmp_path / 'labels'}",
       "--config.method=majority_vote", f"--config.expert_labels={experts}", "--config.classes=a,b,tie",
       "--config.report.plots=false"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert aggregate.returncode == 0, aggregate.stderr
  assert "Training file train.jsonl: 2 items (1 expert-labelled); 2 awaiting review" in aggregate.stdout
  train_file = tmp_path / "labels" / "train.jsonl"
  workdir = tmp_path / "rm"
  trained = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "train.py"), "--config=configs/reward_model.py:preset=tiny",
       f"--workdir={workdir}", f"--config.data.train={train_file}", "--config.train.steps=3",
       "--config.train.batch_size=2", "--config.optim.warmup_steps=1", "--config.eval.every=0",
       "--config.train.progress_bar=false", "--config.data.tokenizer_vocab_size=300"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert trained.returncode == 0, trained.stderr
  run = json.loads((workdir / "run.json").read_text())
  counts = run["data"]["train"]
  assert (counts["format"], counts["read"], counts["accepted"], counts["rejected"]) == ("feedback_labels", 2, 2, 0)
  # A reward model came out: a checkpoint at the last step.
  assert any(path.name == "3" for path in (workdir / "checkpoints").iterdir()), list(workdir.iterdir())
  # Nothing lost: trained (read by the trainer) + awaiting + rejected = items labelled.
  awaiting = _jsonl(tmp_path / "labels" / "awaiting_review.jsonl")
  rejected = _jsonl(tmp_path / "labels" / "train_rejects.jsonl")
  assert counts["accepted"] + len(awaiting) + len(rejected) == len(ITEMS)
  assert np.all([row["reason"] for row in rejected])
