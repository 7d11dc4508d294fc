"""Accuracy of every class-level aggregation method on the crowd data sets with gold truth.

Reads `../shared/data/crowd/{duck,product,dog}/answers.csv` (`question,worker,answer`) and
`truth.csv` (`question,truth`), runs each method of `rlhf_jax.feedback (models.voting, models.dawid_skene)`, and
prints a Markdown table of accuracies against the gold labels (items with a gold label
and at least one answer), next to crowd-kit 1.4.2's published numbers. The table in
`docs/feedback.md` is this script's output:

  .venv/bin/python experiments/crowd_accuracy.py

`--data_dir` points elsewhere; `--sensitivity` adds rows for other Dawid-Skene smoothing
and Bayesian prior settings. "prior a/b" is `prior_correct`/`prior_incorrect`.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import jax
import numpy as np

from rlhf_jax import feedback as aggregation

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "crowd"
DATASETS = ("duck", "product", "dog")

# crowd-kit 1.4.2, default settings (../shared/data/README.md).
CROWD_KIT = {
    "MajorityVote": {"duck": 0.759, "product": 0.897, "dog": 0.812},
    "DawidSkene": {"duck": 0.889, "product": 0.940, "dog": 0.843},
    "OneCoinDawidSkene": {"duck": 0.583, "product": 0.908, "dog": 0.830},
    "GLAD": {"duck": 0.722, "product": 0.928, "dog": 0.834},
    "MACE": {"duck": 0.852, "product": 0.929, "dog": 0.835},
}


def _read_rows(path: Path, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
  if not path.is_file():
    sys.exit(f"error: {path} does not exist (expected a CSV with header {','.join(columns)}).")
  with open(path, newline="", encoding="utf-8") as handle:
    reader = csv.reader(handle)
    header = tuple(next(reader, ()))
    if header != columns:
      sys.exit(f"error: {path}:1: header must be {','.join(columns)}, got {','.join(header)}.")
    rows = []
    for line, row in enumerate(reader, start=2):
      if len(row) != len(columns) or not all(row):
        sys.exit(f"error: {path}:{line}: expected {len(columns)} non-empty fields {columns}, got {row}.")
      rows.append(tuple(row))
  return rows


def _class_sort_key(name: str):
  return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def load_crowd(folder: Path) -> dict:
  """Flat annotation arrays and gold labels of one crowd folder (indices by first sight)."""
  answers = _read_rows(folder / "answers.csv", ("question", "worker", "answer"))
  truth = _read_rows(folder / "truth.csv", ("question", "truth"))
  class_names = sorted({a for _, _, a in answers} | {t for _, t in truth}, key=_class_sort_key)
  class_index = {name: k for k, name in enumerate(class_names)}
  item_index: dict[str, int] = {}
  annotator_index: dict[str, int] = {}
  items = np.array([item_index.setdefault(q, len(item_index)) for q, _, _ in answers], np.int32)
  annotators = np.array(
      [annotator_index.setdefault(w, len(annotator_index)) for _, w, _ in answers], np.int32
  )
  labels = np.array([class_index[a] for _, _, a in answers], np.int32)
  gold = np.full(len(item_index), -1, np.int32)
  for question, label in truth:
    if question in item_index:
      gold[item_index[question]] = class_index[label]
  return {
      "items": items, "annotators": annotators, "labels": labels, "gold": gold,
      "num_classes": len(class_names), "num_items": len(item_index),
      "num_annotators": len(annotator_index),
  }


def methods(sensitivity: bool) -> dict:
  table = {
      "majority_vote (tie_break=lowest)": lambda d: aggregation.majority_vote(
          d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"]),
      "majority_vote (tie_break=random, key 0)": lambda d: aggregation.majority_vote(
          d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"],
          tie_break="random", key=jax.random.key(0)),
      "weighted_vote (weights = dawid_skene reliability)": lambda d: aggregation.weighted_vote(
          d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"],
          annotator_weights=aggregation.dawid_skene(
              d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"]
          ).annotator_params["reliability"]),
      "dawid_skene (defaults: num_iters=50, tol=1e-5)": lambda d: aggregation.dawid_skene(
          d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"]),
      "dawid_skene (num_iters=100)": lambda d: aggregation.dawid_skene(
          d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"],
          num_iters=100),
      "dawid_skene (num_iters=1000: converged)": lambda d: aggregation.dawid_skene(
          d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"],
          num_iters=1000, tol=1e-7),
      "dawid_skene (stop_on=objective: crowd-kit's kind of stopping rule)": lambda d: aggregation.dawid_skene(
          d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"], stop_on="objective"),
      "one_coin_dawid_skene": lambda d: aggregation.one_coin_dawid_skene(
          d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"]),
      "bayesian_dawid_skene (map, default prior 2/1)": lambda d: aggregation.bayesian_dawid_skene(
          d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"]),
      "bayesian_dawid_skene (variational, default prior 2/1)": lambda d: aggregation.bayesian_dawid_skene(
          d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"],
          method="variational"),
  }
  if sensitivity:
    for smoothing in (0.01, 0.1, 1.0):
      table[f"dawid_skene (smoothing={smoothing})"] = (
          lambda d, s=smoothing: aggregation.dawid_skene(
              d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"],
              smoothing=s))
    for method in aggregation.BAYESIAN_METHODS:
      for correct, incorrect in ((1.0, 1.0), (4.0, 1.0), (0.5, 0.5)):
        table[f"bayesian_dawid_skene ({method}, prior {correct:g}/{incorrect:g})"] = (
            lambda d, m=method, c=correct, i=incorrect: aggregation.bayesian_dawid_skene(
                d["items"], d["annotators"], d["labels"], num_classes=d["num_classes"],
                method=m, prior_correct=c, prior_incorrect=i))
  return table


def accuracy(result, gold: np.ndarray) -> float:
  has_gold = gold >= 0
  return float(np.mean(np.asarray(result.labels)[has_gold] == gold[has_gold]))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", type=Path, default=DATA_DIR)
  parser.add_argument("--sensitivity", action="store_true")
  args = parser.parse_args()
  data = {name: load_crowd(args.data_dir / name) for name in DATASETS}
  print(f"jax {jax.__version__}, backend {jax.default_backend()}")
  print("| method | " + " | ".join(DATASETS) + " | EM iterations |")
  print("|---|" + "---|" * (len(DATASETS) + 1))
  for name, run in methods(args.sensitivity).items():
    scores, iterations = [], []
    for dataset in DATASETS:
      result = run(data[dataset])
      scores.append(f"{accuracy(result, data[dataset]['gold']):.4f}")
      if "num_iters" in result.extras:
        iterations.append(str(int(result.extras["num_iters"])))
    print(f"| {name} | " + " | ".join(scores) + f" | {'/'.join(iterations) or '-'} |")
  for name, row in CROWD_KIT.items():
    print(f"| crowd-kit 1.4.2 {name} | " + " | ".join(f"{row[d]:.3f}" for d in DATASETS) + " | |")


if __name__ == "__main__":
  main()
