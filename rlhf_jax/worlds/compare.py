"""The `make run` job: on the graded world, do the feedback methods differ? By how much?

One crowd (the population mix of `configs/pipeline.py`: 55% good annotators, 10%
position-biased, 5% length-biased, 10% spammers, 10% adversaries, 5% fast, 5% drifting)
labels 1,000 pairs of the graded world three times each (`rlhf_jax.worlds.annotate`), for
each of `num_seeds` seeds (world, pairs and crowd all change with the seed). Then:

1. label accuracy against the gold preference of majority vote, Dawid-Skene and item-level
   Crowd-BT (`rlhf_jax.feedback`);
2. held-out accuracy of the reward model (`rlhf_jax.worlds.models`) trained on the
   Dawid-Skene labels as hard labels, with confidence weights, and on the gold preferences
   of the same pairs (the ceiling).

Every figure is a mean with a 95% t-interval over the seeds; each comparison is a paired
difference over the same seeds, followed by a one-line reading that says whether the
interval excludes zero. The measured figures and the exact command are recorded in
experiments/make_run/README.md (not repeated here).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rlhf_jax import feedback
from rlhf_jax.ablate import stats
from rlhf_jax.worlds import experiments

__all__ = ["compare", "format_report", "reading"]

PIPELINE_MIX = dict(good_share=0.55, position_biased_share=0.1, length_biased_share=0.05, spammer_share=0.1,
                    adversary_share=0.1, fast_share=0.05, drifting_share=0.05)


def compare(num_seeds: int = 3, num_pairs: int = 1000, annotations_per_item: int = 3) -> dict[str, Any]:
  """Runs the comparison; returns per-seed values {name: [S]} and the seconds taken."""
  start = time.time()
  params = experiments.base_params(num_pairs=num_pairs)
  params["crowd"].update(PIPELINE_MIX, annotations_per_item=annotations_per_item)
  world_key = experiments._key(params["world"])  # pylint: disable=protected-access
  crowd_key = experiments._key(params["crowd"])  # pylint: disable=protected-access
  seeds = list(range(num_seeds))
  values: dict[str, list[float]] = {k: [] for k in ("majority_vote", "dawid_skene", "crowd_bt")}
  train, hard, confidence, gold = [], [], [], []
  for s in seeds:
    pairs = experiments._pairs(s, world_key, num_pairs, "train")  # pylint: disable=protected-access
    crowd = experiments._crowd_cached(s, world_key, num_pairs, num_pairs, crowd_key)  # pylint: disable=protected-access
    truth = np.where(pairs.gold_prefers_a, feedback.A_PREFERRED, feedback.B_PREFERRED)
    for method in values:
      labels, prob_a = experiments.aggregate(method, crowd, num_pairs, seed=s)
      values[method].append(float(np.mean(labels == truth)))
      if method == "dawid_skene":
        hard.append((labels == feedback.A_PREFERRED).astype(np.float32))
        confidence.append(np.where(labels == feedback.A_PREFERRED, prob_a, 1.0 - prob_a).astype(np.float32))
    train.append(pairs)
    gold.append(pairs.gold_prefers_a.astype(np.float32))
  ones = [np.ones(num_pairs, np.float32)] * num_seeds
  rm = {
      "rm_hard": experiments._train_rm(params, seeds, train, hard, ones),  # pylint: disable=protected-access
      "rm_confidence_weighted": experiments._train_rm(params, seeds, train, hard, confidence),  # pylint: disable=protected-access
      "rm_gold": experiments._train_rm(params, seeds, train, gold, ones),  # pylint: disable=protected-access
  }
  out = {k: list(v) for k, v in values.items()}
  out.update({k: [float(x) for x in v] for k, v in rm.items()})
  return {"values": out, "seeds": seeds, "num_pairs": num_pairs,
          "annotations": num_pairs * annotations_per_item, "seconds": time.time() - start}


def reading(name: str, other: str, difference: stats.Interval, what: str) -> str:
  """One line: the paired difference and whether the seeds let us tell the two apart."""
  if not np.isfinite(difference.half_width):
    return f"{name} vs {other}: {difference.mean:+.3f} {what} (one seed: no interval)."
  if difference.excludes_zero():
    verb = "beats" if difference.mean > 0 else "trails"
    return (f"{name} {verb} {other} by {abs(difference.mean):.3f} {what} ({difference.format()}, paired over "
            f"{difference.n} seeds; the interval excludes 0).")
  return (f"{name} and {other} cannot be told apart here: {difference.format()} {what} (paired over "
          f"{difference.n} seeds; the interval includes 0).")


def format_report(result: dict[str, Any]) -> str:
  """The printed table and readings."""
  v = result["values"]
  seeds = result["seeds"]
  def interval(name):
    return stats.t_interval(v[name]).format()
  def paired(a, b):
    return stats.paired_difference(dict(zip(seeds, v[a])), dict(zip(seeds, v[b])))
  lines = [
      f"Graded world: {result['num_pairs']} pairs, {result['annotations']} crowd labels per seed "
      f"(55% good annotators, 45% biased, spamming, adversarial, fast or drifting), "
      f"{len(seeds)} seeds; mean ± 95% t-interval.",
      "",
      "Label accuracy against the gold preference:",
      f"  majority vote  {interval('majority_vote')}",
      f"  Dawid-Skene    {interval('dawid_skene')}",
      f"  Crowd-BT       {interval('crowd_bt')}",
      "  " + reading("Dawid-Skene", "majority vote", paired("dawid_skene", "majority_vote"), "label accuracy"),
      "  " + reading("Crowd-BT", "majority vote", paired("crowd_bt", "majority_vote"), "label accuracy"),
      "  " + reading("Crowd-BT", "Dawid-Skene", paired("crowd_bt", "dawid_skene"), "label accuracy"),
      "",
      "Reward model, held-out accuracy against gold (trained on the Dawid-Skene labels):",
      f"  hard labels                  {interval('rm_hard')}",
      f"  confidence-weighted          {interval('rm_confidence_weighted')}",
      f"  gold labels (ceiling)        {interval('rm_gold')}",
      "  " + reading("Confidence weighting", "hard labels", paired("rm_confidence_weighted", "rm_hard"),
                     "accuracy"),
      "  " + reading("Training on gold labels", "Dawid-Skene hard labels", paired("rm_gold", "rm_hard"),
                     "accuracy"),
      "",
      f"Total {result['seconds']:.0f} s. The ablations behind these claims: experiments/*/README.md.",
  ]
  return "\n".join(lines)
