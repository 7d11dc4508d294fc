r"""Ablation 6, label noise and the DPO family.

  python scripts/ablate.py --config=experiments/dpo_noise/config.py --seeds=5

Each of 1,000 pairs gets 3 labels, each the gold preference flipped with probability
0-40%. DPO, cDPO and robust DPO (told the majority label's true flip rate) and IPO train on
the majority label, DPO on soft Dawid-Skene targets on the posterior. The policy is a
unigram model (`rlhf_jax.worlds.models`). Result: experiments/dpo_noise/README.md.
"""

import ml_collections

from rlhf_jax.worlds import experiments


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.name = "dpo_noise"
  config.title = "Label noise and the DPO family"
  config.question = ("Under symmetric label flips from 0 to 40%, do the robust DPO variants (cDPO, robust DPO, "
                     "IPO) or DPO on soft Dawid-Skene targets keep the implicit reward more accurate than DPO?")
  config.function = "rlhf_jax.worlds.experiments:dpo_noise"
  config.base = ml_collections.ConfigDict(experiments.base_params(
      num_pairs=1000, labels_per_pair=3, flip_rate=0.0, loss="dpo", num_annotators=20,
      beta=0.1, steps=300, learning_rate=0.05))
  config.grid = [("flip_rate", [0.0, 0.1, 0.2, 0.3, 0.4]), ("loss", ["dpo", "cdpo", "robust", "ipo", "dpo_soft"])]
  config.cells = []
  config.baseline = {"loss": "dpo"}
  config.seeds = 5
  config.metrics = ["implicit_reward_accuracy", "label_accuracy"]
  config.plots = [{"metric": "implicit_reward_accuracy", "x": "flip_rate", "series": "loss",
                   "file": "implicit_reward_accuracy.png", "xlabel": "label flip probability",
                   "ylabel": "implicit-reward accuracy on held-out gold"}]
  return config
