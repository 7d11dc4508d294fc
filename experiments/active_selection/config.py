r"""Ablation 7, active selection of the pairs to label.

  python scripts/ablate.py --config=experiments/active_selection/config.py --seeds=3

A pool of 2,000 pairs; 200 random pairs are bought first (3 crowd labels each, majority
vote), then 200 per round up to 1,000, chosen at random, by the disagreement of an
ensemble of 3 reward models (bootstrap weights, different initialisations), or by the
smallest margin of the ensemble's mean reward. Result: experiments/active_selection/README.md.
"""

import ml_collections

from rlhf_jax.worlds import experiments


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.name = "active_selection"
  config.title = "Active selection of pairs to label"
  config.question = ("At a fixed budget, does choosing the pairs to label by reward-model uncertainty (ensemble "
                     "disagreement or margin) beat choosing them at random?")
  config.function = "rlhf_jax.worlds.experiments:active_selection"
  config.base = ml_collections.ConfigDict(experiments.base_params(
      pool_pairs=2000, budget=1000, batch=200, ensemble=3, ensemble_seed_offset=0, strategy="random"))
  config.grid = [("strategy", ["random", "disagreement", "margin"])]
  config.cells = []
  config.baseline = {"strategy": "random"}
  config.seeds = 3
  config.metrics = ["accuracy_at_200", "accuracy_at_400", "accuracy_at_600", "accuracy_at_800", "accuracy_at_1000",
                    "bought_label_accuracy", "bought_abs_difference"]
  config.plots = [{"metrics": ["accuracy_at_200", "accuracy_at_400", "accuracy_at_600", "accuracy_at_800",
                               "accuracy_at_1000"], "x_values": [200, 400, 600, 800, 1000],
                   "series": "strategy", "metric": "accuracy_at_1000", "x": "strategy",
                   "file": "accuracy_vs_labels.png", "xlabel": "pairs bought (3 crowd labels each)",
                   "ylabel": "reward model accuracy on held-out gold"}]
  return config
