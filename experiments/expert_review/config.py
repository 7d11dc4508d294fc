r"""Ablation 2, agreement filter and expert review vs more crowd labels.

  python scripts/ablate.py --config=experiments/expert_review/config.py --seeds=5

1,000 pairs with 3 crowd labels each (price 1 per label), Dawid-Skene; pairs whose
posterior confidence is below the threshold go to an expert (price 10, Bradley-Terry
temperature 0.05) whose label replaces the crowd's (`review`). `volume` spends the same
money on more crowd-labelled pairs instead (3 labels each, from the same pool).
Result: experiments/expert_review/README.md.
"""

import ml_collections

from rlhf_jax.worlds import experiments


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.name = "expert_review"
  config.title = "Agreement filter and expert review vs more crowd labels"
  config.question = ("Sending low-confidence pairs to an expert at 10x the price: does it buy more reward-model "
                     "accuracy than spending the same money on more crowd-labelled pairs?")
  config.function = "rlhf_jax.worlds.experiments:expert_review"
  config.base = ml_collections.ConfigDict(experiments.base_params(
      num_pairs=1000, pool_pairs=4000, threshold=0.0, strategy="review"))
  config.grid = [("threshold", [0.0, 0.7, 0.8, 0.9, 0.95]), ("strategy", ["review", "volume"])]
  config.cells = []
  config.baseline = {"strategy": "review"}
  config.seeds = 5
  config.metrics = ["rm_accuracy", "label_accuracy", "cost", "reviewed_share"]
  config.plots = [{"metric": "rm_accuracy", "x": "threshold", "series": "strategy", "file": "rm_accuracy.png",
                   "xlabel": "review threshold (volume: same money as review at this threshold)",
                   "ylabel": "reward model accuracy on held-out gold"}]
  return config
