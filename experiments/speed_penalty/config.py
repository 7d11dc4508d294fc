r"""Ablation 5, the speed penalty with fast random clickers in the pool.

  python scripts/ablate.py --config=experiments/speed_penalty/config.py --seeds=5

A share (0, 20 or 40%) of the crowd are fast clickers (median response 1.5 s, Bradley-Terry
temperature 3-10: close to random); labels are the weighted vote of
`feedback.annotator_weights` with the penalty for a median response under 3 s at 0.7 (the
project's default), 0 (fast annotators ignored) or 1 (no penalty). Result:
experiments/speed_penalty/README.md.
"""

import ml_collections

from rlhf_jax.worlds import experiments


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.name = "speed_penalty"
  config.title = "Speed penalty with fast random clickers"
  config.question = ("Does multiplying the weight of annotators faster than 3 s by 0.7 (or 0) protect the labels "
                     "and the reward model when fast random clickers join the pool?")
  config.function = "rlhf_jax.worlds.experiments:speed_penalty"
  base = experiments.base_params(num_pairs=1000, fast_share=0.0, fast_penalty=0.7)
  base["crowd"]["golden_rate"] = 0.1
  config.base = ml_collections.ConfigDict(base)
  config.grid = [("fast_share", [0.0, 0.2, 0.4]), ("fast_penalty", [1.0, 0.7, 0.0])]
  config.cells = []
  config.baseline = {"fast_penalty": 1.0}
  config.seeds = 5
  config.metrics = ["label_accuracy", "rm_accuracy"]
  config.plots = [{"metric": "label_accuracy", "x": "fast_share", "series": "fast_penalty",
                   "file": "label_accuracy.png", "xlabel": "share of fast random clickers",
                   "ylabel": "label accuracy against gold"}]
  return config
