"""The `make run` job end to end on a reduced config, checked against the simulated truth."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from experiments import pipeline
from rlhf_jax import cli


def _small_config():
  config = cli.load_config_file(Path(__file__).resolve().parents[2] / "configs" / "pipeline.py")
  config.task.num_pairs = 240
  config.task.num_eval = 64
  config.reward_model.train.steps = 80
  config.dpo.train.steps = 0  # The DPO trainer has its own tests; keep this one short.
  return config


@pytest.mark.slow
def test_pipeline_recovers_truth_and_trains_reward_model(tmp_path):
  config = _small_config()
  summary = pipeline.run(config, tmp_path)

  # Independent check of the reported label accuracy: labels.csv against the task truth,
  # re-derived here from the annotations file (which response is the polite one).
  truth = {}
  with open(tmp_path / "annotations.jsonl", encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      a_polite = any(w in record["response_a"].split() for w in pipeline.POLITE_WORDS)
      truth[record["item_id"]] = "a" if a_polite else "b"
  with open(tmp_path / "feedback" / "labels.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == config.task.num_pairs
  accuracy = np.mean([row["label"] == truth[row["item"]] for row in rows])
  assert accuracy == pytest.approx(summary["label_accuracy"]["dawid_skene"], abs=1e-9)
  # A population with 20% spammers and adversaries: Dawid-Skene must beat majority vote.
  assert summary["label_accuracy"]["dawid_skene"] > summary["label_accuracy"]["majority_vote"]
  assert summary["label_accuracy"]["dawid_skene"] >= 0.85

  # Items routed to expert review are kept out of training: training rows = the rest.
  review = sum(row["expert_review"] == "1" for row in rows)  # labels.csv writes 0/1
  assert summary["expert_review_items"] == review
  assert summary["training_pairs"] == config.task.num_pairs - review

  # The planted rule is learnable from the aggregated (noisy, soft) labels.
  assert summary["reward_model_eval_accuracy"] >= 0.95
  assert (tmp_path / "summary.json").exists()
