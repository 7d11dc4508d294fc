"""Label audit: planted flipped labels and planted bad annotators are found near the top;
the per-annotator numbers and the balance weights match hand computations."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax import feedback
from rlhf_jax.feedback.workflow import audit

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("audit")
  # 40 annotators: 36 good, 4 adversaries (planted bad annotators).
  config = feedback.SimulationConfig(
      num_items=600, num_annotators=40, annotations_per_item=5, good_share=0.9,
      adversary_share=0.1, position_biased_share=0.0, length_biased_share=0.0,
      spammer_share=0.0, fast_share=0.0, drifting_share=0.0)
  sim = feedback.simulate_annotations(jax.random.key(3), config)
  path = tmp / "prefs.jsonl"
  feedback.write_jsonl(sim, path, with_text=False)
  enc = feedback.read_annotations(path, format="jsonl").annotations
  result = feedback.dawid_skene(enc.items, enc.annotators, enc.labels, num_classes=3)
  posteriors = np.asarray(result.posteriors, np.float64)
  truth = np.asarray([sim.true_labels[int(i.split("-")[1])] for i in enc.item_ids])
  # Planted flipped labels: 15 items the crowd got right, a and b swapped.
  rng = np.random.default_rng(0)
  right = np.flatnonzero((np.argmax(posteriors, -1) == truth) & (truth < 2))
  flipped = rng.choice(right, 15, replace=False)
  posteriors[flipped] = posteriors[flipped][:, [1, 0, 2]]
  with open(tmp / "labels.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["item", "label", "confidence", "num_annotations", "p_a", "p_b", "p_tie"])
    for i, item in enumerate(enc.item_ids):
      writer.writerow([item, "x", posteriors[i].max(), 5, *posteriors[i]])
  # A good reward model: 0.85-0.99 on the true class of a/b items, ~0.5 on ties.
  p_true = rng.uniform(0.85, 0.99, enc.num_items)
  p_a = np.where(truth == 0, p_true, np.where(truth == 1, 1 - p_true, rng.uniform(0.4, 0.6, enc.num_items)))
  with open(tmp / "scores.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["item", "p_a"])
    writer.writerows(zip(enc.item_ids, p_a))
  bad = {f"annotator-{a}" for a in np.flatnonzero(np.asarray(sim.annotator_types) ==
                                                  feedback.ANNOTATOR_TYPES.index("adversary"))}
  with open(tmp / "groups.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["annotator", "group"])
    writer.writerows((a, "team1" if n % 2 else "team2") for n, a in enumerate(enc.annotator_ids))
  return {"tmp": tmp, "enc": enc, "flipped": {enc.item_ids[i] for i in flipped}, "bad": bad,
          "p_a": p_a, "posteriors": posteriors}


def test_planted_flips_and_bad_annotators_found(planted):
  enc = planted["enc"]
  model = audit.read_model_scores(planted["tmp"] / "scores.csv", enc.item_ids, enc.class_names)
  posteriors = planted["posteriors"]
  result = feedback.audit_labels(enc, np.argmax(posteriors, -1), posteriors.max(-1), model)
  top = [row["item_id"] for row in result.disputed[:len(planted["flipped"]) * 2]]
  assert len(planted["flipped"] & set(top)) >= len(planted["flipped"]) - 1
  assert len(planted["bad"]) == 4
  assert {c["annotator"] for c in result.cards[:4]} == planted["bad"]
  # The disputed answer rate of the top annotator, by hand.
  card = result.cards[0]
  a = enc.annotator_ids.index(card["annotator"])
  mine = np.flatnonzero(enc.annotators == a)
  p_a = planted["p_a"][enc.items[mine]]
  answers = enc.labels[mine]
  decided = answers < 2
  against = np.where(answers == 0, 1 - p_a, p_a)[decided]
  assert card["disputed_answer_rate"] == pytest.approx(np.mean(against >= 0.8))
  # Backers of a flipped label answered that (wrong) label.
  row = next(r for r in result.disputed if r["item_id"] in planted["flipped"])
  i = enc.item_ids.index(row["item_id"])
  answered = {enc.annotator_ids[enc.annotators[n]]: enc.class_names[enc.labels[n]]
              for n in np.flatnonzero(enc.items == i)}
  assert all(answered[b] == row["label"] for b in row["backers"])
  assert all(answered[d] != row["label"] for d in row["dissenters"])


def test_balance_weights_by_hand():
  rows = {r["tag"]: r for r in feedback.dataset_balance(
      np.asarray([0, 0, 1, 1]), ("a", "b"), [["x"], ["x"], ["x", "y"], ["y"]])}
  # N = 4 items, T = 2 tags, n_x = 3, n_y = 2.
  assert rows["x"]["weight"] == pytest.approx(4 / (2 * 3))
  assert rows["y"]["weight"] == pytest.approx(4 / (2 * 2))
  assert rows["x"]["label_share_a"] == pytest.approx(2 / 3)
  weights = audit.item_weights(list(rows.values()), [["x"], ["x"], ["x", "y"], ["y"]])
  np.testing.assert_allclose(weights, [2 / 3, 2 / 3, (2 / 3 + 1) / 2, 1.0])


def test_script_writes_cards_per_group(planted):
  tmp = planted["tmp"]
  out = tmp / "out"
  done = subprocess.run(
      [sys.executable, str(REPO / "scripts/audit_labels.py"),
       f"--config={REPO / 'configs/audit_labels.py'}", f"--config.annotations={tmp / 'prefs.jsonl'}",
       f"--config.labels={tmp / 'labels.csv'}", f"--config.scores={tmp / 'scores.csv'}",
       f"--config.annotator_groups={tmp / 'groups.csv'}", f"--config.output_dir={out}"],
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert (out / "cards_team1.png").stat().st_size > 0 and (out / "cards_team2.png").exists()
  with open(out / "annotator_cards.csv") as handle:
    cards = list(csv.DictReader(handle))
  assert len(cards) == 40 and {c["annotator"] for c in cards[:4]} == planted["bad"]
  with open(out / "disputed.csv") as handle:
    disputed = list(csv.DictReader(handle))
  assert len(disputed) == 50 and disputed[0]["rank"] == "1"
  summary = json.loads((out / "audit.json").read_text())
  assert summary["num_disputed"] >= 14
  missing = subprocess.run(
      [sys.executable, str(REPO / "scripts/audit_labels.py"),
       f"--config={REPO / 'configs/audit_labels.py'}"], capture_output=True, text=True)
  assert missing.returncode == 2 and "required" in missing.stderr
