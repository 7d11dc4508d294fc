r"""Ablation 1 on real text: redundancy vs volume on the HH-RLHF pairs.

  python scripts/ablate.py --config=experiments/hh_redundancy/config.py --seeds=5

1,200 crowd labels on the HH-RLHF harmless-base pairs of ../shared/data (truth: the data
set's label; annotators judge hidden margins, `rlhf_jax.worlds.hh`); 300 pairs held out.
Needs ../shared/data (a cell fails with FileNotFoundError naming the file otherwise).
Result: experiments/hh_redundancy/README.md.
"""

import ml_collections

from rlhf_jax.worlds import experiments


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.name = "hh_redundancy"
  config.title = "Redundancy vs volume on the HH-RLHF pairs"
  config.question = ("On real preference text (HH-RLHF harmless-base), with 1,200 crowd labels, is a reward "
                     "model better trained on 1,200 pairs labelled once or 400 labelled three times?")
  config.function = "rlhf_jax.worlds.experiments:hh_redundancy"
  base = experiments.base_params(budget=1200, annotations_per_item=1, target="hard",
                                 hh={"path": "", "vocab_size": 4096, "max_length": 64, "margin_mean": 0.6})
  base["eval_pairs"] = 300
  config.base = ml_collections.ConfigDict(base)
  config.grid = [("annotations_per_item", [1, 3]), ("target", ["hard", "soft", "weighted", "gold"])]
  config.cells = []
  config.baseline = {"annotations_per_item": 1, "target": "hard"}
  config.seeds = 5
  config.metrics = ["rm_accuracy", "label_accuracy", "training_pairs"]
  config.plots = [{"metric": "rm_accuracy", "x": "annotations_per_item", "series": "target",
                   "file": "rm_accuracy.png", "xlabel": "annotations per pair (budget 1,200 labels)",
                   "ylabel": "reward model accuracy on held-out HH labels"}]
  return config
