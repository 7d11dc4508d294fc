r"""Ablation 3, aggregation under bad annotators.

  python scripts/ablate.py --config=experiments/bad_annotators/config.py --seeds=5

A share of the crowd (0, 25 or 50%) is bad, split evenly between spammers, adversaries and
position-biased annotators; 1,000 pairs get 3 labels each. Methods: one label, majority
vote, the weighted formula of `feedback.annotator_weights`, Dawid-Skene, MACE, GLAD,
item-level Crowd-BT, and Crowd-BT joint with the reward model. Result:
experiments/bad_annotators/README.md.
"""

import ml_collections

from rlhf_jax.worlds import experiments


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.name = "bad_annotators"
  config.title = "Aggregation under bad annotators"
  config.question = ("As spammers, adversaries and position-biased annotators grow from 0 to 50% of the crowd, "
                     "which aggregation keeps the labels and the reward model accurate?")
  config.function = "rlhf_jax.worlds.experiments:bad_annotators"
  base = experiments.base_params(
      num_pairs=1000,
      bad_share=0.0,  # share of bad annotators
      bad_kind="mixed",  # spammer | adversary | position_biased | mixed (thirds)
      method="majority_vote",
      expert_rate=0.05,  # share of pairs with an expert label (the formula's expert agreement)
  )
  base["crowd"]["repeat_rate"] = 0.1  # repeats for the formula's temporal consistency
  base["crowd"]["golden_rate"] = 0.1
  config.base = ml_collections.ConfigDict(base)
  config.grid = [("bad_share", [0.0, 0.25, 0.5]),
                 ("method", ["one_label", "majority_vote", "weighted_formula", "dawid_skene", "mace", "glad",
                             "crowd_bt", "crowd_bt_joint"])]
  config.cells = []
  config.baseline = {"method": "majority_vote"}
  config.seeds = 5
  config.metrics = ["label_accuracy", "rm_accuracy"]
  config.plots = [
      {"metric": "label_accuracy", "x": "bad_share", "series": "method", "file": "label_accuracy.png",
       "xlabel": "share of bad annotators", "ylabel": "label accuracy against gold"},
      {"metric": "rm_accuracy", "x": "bad_share", "series": "method", "file": "rm_accuracy.png",
       "xlabel": "share of bad annotators", "ylabel": "reward model accuracy on held-out gold"},
  ]
  return config
