"""Wawa, zero-based skill, GoldMV, KOS and M-MSR against crowd-kit on the crowd data sets.

  .venv/bin/python experiments/crowd_kit_methods.py [--data_dir=../shared/data/crowd]

For duck, product and dog (`../shared/data/crowd/*/answers.csv`, `truth.csv`), runs each
method of `rlhf_jax.feedback` and, when the `bench` extra is installed (crowd-kit), the
crowd-kit class of the same name on the same answers, at both libraries' defaults, and
prints a Markdown table: accuracy against the gold labels and seconds per call (ours:
the first call, with its compilation, and a second call; crowd-kit: one call, in a
forked child stopped after `--crowd_kit_timeout` seconds). GoldMV
sees the gold label of every fifth gold item (by item order) and both libraries are
scored on the other items. KOS is defined for two classes only: dog (4 classes) is
skipped. Without crowd-kit its columns read "absent". The table in docs/feedback.md
is this script's output.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from experiments.crowd_accuracy import DATA_DIR, DATASETS, load_crowd  # pylint: disable=g-import-not-at-top,wrong-import-position
from rlhf_jax import feedback  # pylint: disable=g-import-not-at-top,wrong-import-position

GOLD_EVERY = 5  # GoldMV: every fifth gold item is given as golden.


def _ours(name: str, data: dict, gold_given: np.ndarray):
  args = (data["items"], data["annotators"], data["labels"])
  sizes = dict(num_classes=data["num_classes"], num_items=data["num_items"],
               num_annotators=data["num_annotators"])
  if name == "gold_majority_vote":
    return lambda: feedback.gold_majority_vote(*args, num_classes=data["num_classes"], gold_labels=gold_given,
                                               num_annotators=data["num_annotators"], missing_accuracy=0.5)
  return lambda: feedback.AGGREGATION_METHODS.get(name)(*args, **sizes)


def _crowd_kit(name: str, data: dict, gold_given: np.ndarray):
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from crowdkit import aggregation as ck  # pylint: disable=g-import-not-at-top
  frame = pd.DataFrame({"task": data["items"], "worker": data["annotators"], "label": data["labels"]})
  if name == "gold_majority_vote":
    known = np.flatnonzero(gold_given >= 0)
    true_labels = pd.Series(gold_given[known], index=known)
    def gold_mv():
      # crowd-kit refuses annotators without a golden answer: they get the skill 0.5, as ours.
      skills = ck.GoldMajorityVote().fit(frame, true_labels).skills_
      skills = skills.reindex(pd.unique(frame.worker)).fillna(0.5)
      return ck.MajorityVote().fit_predict(frame, skills)
    return gold_mv
  model = {"wawa": ck.Wawa, "zero_based_skill": ck.ZeroBasedSkill, "kos": ck.KOS, "mmsr": ck.MMSR}[name]()
  if name in ("wawa", "zero_based_skill"):
    # Their `predict` calls scikit-learn's `check_is_fitted`, which scikit-learn >= 1.6
    # refuses for crowd-kit 1.4.2's classes; this is the rest of their `_apply`.
    return lambda: ck.MajorityVote().fit(frame, skills=model.fit(frame).skills_).labels_
  return lambda: model.fit_predict(frame)


def _crowd_kit_child(name, data, gold_given, queue):
  labels, seconds = _timed(_crowd_kit(name, data, gold_given))
  queue.put((labels.reindex(range(data["num_items"])).to_numpy(), seconds))


def _crowd_kit_with_timeout(name, data, gold_given, timeout):
  """crowd-kit's call in a forked child (it uses no JAX), stopped after `timeout` seconds."""
  context = multiprocessing.get_context("fork")
  queue = context.Queue()
  child = context.Process(target=_crowd_kit_child, args=(name, data, gold_given, queue))
  child.start()
  child.join(timeout)
  if child.is_alive():
    child.terminate()
    child.join()
    return None, None
  return queue.get()


def _accuracy(labels, gold: np.ndarray, scored: np.ndarray) -> float:
  return float(np.mean(np.asarray(labels)[scored] == gold[scored]))


def _timed(call):
  start = time.perf_counter()
  out = call()
  if isinstance(out, feedback.AggregationResult):
    jax.block_until_ready(out)
  return out, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", type=Path, default=DATA_DIR)
  parser.add_argument("--crowd_kit_timeout", type=float, default=900.0,
                      help="Seconds after which a crowd-kit call is stopped (reported as such).")
  args = parser.parse_args()
  try:
    import crowdkit  # pylint: disable=g-import-not-at-top,unused-import
    have_crowd_kit = True
  except ImportError:
    have_crowd_kit = False
  print("| method | data set | ours: accuracy | crowd-kit: accuracy | ours: s (first / second call) | crowd-kit: s |")
  print("|---|---|---|---|---|---|")
  for dataset in DATASETS:
    data = load_crowd(args.data_dir / dataset)
    gold = data["gold"]
    gold_items = np.flatnonzero(gold >= 0)
    gold_given = np.full_like(gold, -1)
    gold_given[gold_items[::GOLD_EVERY]] = gold[gold_items[::GOLD_EVERY]]
    for name in ("wawa", "zero_based_skill", "gold_majority_vote", "kos", "mmsr"):
      if name == "kos" and data["num_classes"] != 2:
        print(f"| {name} | {dataset} | skipped: {data['num_classes']} classes, KOS is binary | | | |")
        continue
      scored = (gold >= 0) & (gold_given < 0) if name == "gold_majority_vote" else gold >= 0
      ours_first, first_seconds = _timed(_ours(name, data, gold_given))
      _, second_seconds = _timed(_ours(name, data, gold_given))
      ours = _accuracy(ours_first.labels, gold, scored)
      if have_crowd_kit:
        theirs, theirs_seconds = _crowd_kit_with_timeout(name, data, gold_given, args.crowd_kit_timeout)
        if theirs is None:
          theirs_text, theirs_time = "stopped", f"> {args.crowd_kit_timeout:g}"
        else:
          theirs_text, theirs_time = f"{_accuracy(theirs, gold, scored):.4f}", f"{theirs_seconds:.2f}"
      else:
        theirs_text = theirs_time = "absent (pip install -e '.[bench]')"
      print(f"| {name} | {dataset} | {ours:.4f} | {theirs_text} | {first_seconds:.2f} / {second_seconds:.2f} "
            f"| {theirs_time} |")


if __name__ == "__main__":
  main()
