r"""Ablation 4, golden items and drift detection.

  python scripts/ablate.py --config=experiments/golden_drift/config.py --seeds=5

40% of 40 annotators are good until a change point (between 30% and 70% of the two-week
span), then judge with Bradley-Terry temperature 3-10 (close to random). 2,000 pairs with 3
labels each; golden items at 0, 5 or 10%; a Bernoulli CUSUM per annotator on golden
correctness or on agreement with the item's other labels, or none; an alarm zeroes the
annotator's later labels in the vote. Result: experiments/golden_drift/README.md.
"""

import ml_collections

from rlhf_jax.worlds import experiments


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.name = "golden_drift"
  config.title = "Golden items and drift detection"
  config.question = ("When annotators' quality drops at a change point, do golden items (0, 5, 10%) with a drift "
                     "detector acting on the vote weights keep the labels accurate, how fast do they detect the "
                     "change, and at how many false alarms?")
  config.function = "rlhf_jax.worlds.experiments:golden_drift"
  config.base = ml_collections.ConfigDict(experiments.base_params(
      num_pairs=2000, drifting_share=0.4, golden_rate=0.0, detection="off",
      p0=0.75, p1=0.5, threshold=3.0))  # CUSUM: accuracy 0.75 -> 0.5, decision interval 3 (log-LR)
  config.grid = [("golden_rate", [0.0, 0.05, 0.1]), ("detection", ["off", "golden", "consensus"])]
  config.cells = []
  config.baseline = {"detection": "off"}
  config.seeds = 5
  config.metrics = ["label_accuracy", "late_label_accuracy", "detection_rate", "false_alarms", "delay_days",
                    "label_accuracy_third_1", "label_accuracy_third_2", "label_accuracy_third_3"]
  config.plots = [{"metrics": ["label_accuracy_third_1", "label_accuracy_third_2", "label_accuracy_third_3"],
                   "x_values": [1, 2, 3], "series": "detection", "fixed": {"golden_rate": 0.1},
                   "metric": "label_accuracy_third_3", "x": "detection", "file": "label_accuracy_over_time.png",
                   "xlabel": "third of the two-week span (golden items 10%)",
                   "ylabel": "label accuracy against gold", "title": "Label accuracy over time"},
                  {"metric": "late_label_accuracy", "x": "golden_rate", "series": "detection",
                   "file": "late_label_accuracy.png", "xlabel": "share of golden items",
                   "ylabel": "label accuracy, last third of the span"}]
  return config
