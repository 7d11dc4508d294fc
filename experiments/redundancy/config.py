r"""Ablation 1, redundancy vs volume at an equal labelling budget.

  python scripts/ablate.py --config=experiments/redundancy/config.py --seeds=5

3,000 crowd labels buy 3,000 pairs labelled once, 1,000 labelled three times or 600 five
times. Targets: the majority label (hard), the Dawid-Skene posterior as a soft target,
the Dawid-Skene label weighted by its confidence, and the gold preference of the same
pairs (the ceiling of that volume). The crowd is `worlds.annotate.CrowdConfig()`: 40
annotators, 70% good (Bradley-Terry temperature 0.2-0.6), 5% each position-biased,
length-biased, spammer, adversary, fast and drifting. Result: experiments/redundancy/README.md.
"""

import ml_collections

from rlhf_jax.worlds import experiments


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.name = "redundancy"
  config.title = "Redundancy vs volume at an equal labelling budget"
  config.question = ("With 3,000 crowd labels, is a reward model better trained on 3,000 pairs labelled once, "
                     "or on fewer pairs labelled 3 or 5 times, with hard majority labels, Dawid-Skene soft "
                     "targets or confidence weights?")
  config.function = "rlhf_jax.worlds.experiments:redundancy"
  config.base = ml_collections.ConfigDict(experiments.base_params(
      budget=3000,  # crowd labels bought
      annotations_per_item=1,  # labels per pair (pairs = budget / this)
      target="hard",  # hard | soft | weighted | gold
  ))
  config.grid = [("annotations_per_item", [1, 3, 5]), ("target", ["hard", "soft", "weighted", "gold"])]
  config.cells = []
  config.baseline = {"annotations_per_item": 1, "target": "hard"}  # volume: every label on its own pair
  config.seeds = 5
  config.metrics = ["rm_accuracy", "label_accuracy", "training_pairs"]
  config.plots = [{"metric": "rm_accuracy", "x": "annotations_per_item", "series": "target",
                   "file": "rm_accuracy.png", "xlabel": "annotations per pair (budget 3,000 labels)",
                   "ylabel": "reward model accuracy on held-out gold"}]
  return config
