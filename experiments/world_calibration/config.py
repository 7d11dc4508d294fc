r"""The graded world's difficulty: a reward model on noise-free gold preferences.

  python scripts/ablate.py --config=experiments/world_calibration/config.py --seeds=5

At the default budget (1,000 pairs, what 3,000 crowd labels buy at 3 per pair) the
held-out accuracy should sit well below 1 (aim 0.75-0.90), so that label noise and
aggregation can move it; tests/worlds/test_graded.py asserts the band for seed 0.
Result: experiments/world_calibration/README.md.
"""

import ml_collections

from rlhf_jax.worlds import experiments


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.name = "world_calibration"
  config.title = "Difficulty of the graded world"
  config.question = ("How accurate is a reward model trained on noise-free gold preferences, as the number of "
                     "training pairs grows? (The default budget is 1,000 pairs.)")
  config.function = "rlhf_jax.worlds.experiments:gold_baseline"
  config.base = ml_collections.ConfigDict(experiments.base_params(num_pairs=1000))
  config.grid = [("num_pairs", [250, 500, 1000, 2000, 4000])]
  config.cells = []
  config.baseline = {"num_pairs": 1000}
  config.seeds = 5
  config.metrics = ["rm_accuracy"]
  config.plots = [{"metric": "rm_accuracy", "x": "num_pairs", "series": "", "file": "rm_accuracy.png",
                   "xlabel": "gold-labelled training pairs", "ylabel": "reward model accuracy on held-out gold"}]
  return config
