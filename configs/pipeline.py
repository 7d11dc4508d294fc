r"""The end-to-end job of `make pipeline`: simulated human feedback -> labels -> reward model, DPO.

Launch (what `make pipeline` does):

  python scripts/run.py --config=configs/pipeline.py --workdir=runs/pipeline

It prints the labels' accuracy against the truth (and majority vote's), the reward
model's held-out accuracy and calibration and the DPO policy's held-out implicit-reward
accuracy; what it gave when recorded, with its running time, is in docs/benchmarks.md
("Demo runs: the configs and make run"). A run's numbers are in
`runs/pipeline/summary.json`, the aggregation report in `runs/pipeline/feedback/report.md`.

Overrides: `--config.aggregate.method=mace`, `--config.annotators.spammer_share=0.3
--config.annotators.good_share=0.35` (the shares must sum to 1),
`--config.reward_model.loss.name=bradley_terry`, `--config.dpo.train.steps=0` (skip DPO).
Into a workdir that holds a run with another config, add `--force_new` (or choose
another `--workdir`): a rerun never mixes settings.
"""

from pathlib import Path

import ml_collections

from rlhf_jax import train
from rlhf_jax.cli import load_config_file


def get_config(arg=None):
  """`arg` is unused; the default is the CPU demonstration."""
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds the task, the simulated annotators and both training runs.

  config.task = ml_collections.ConfigDict()
  config.task.num_pairs = 600  # Comparisons sent to the simulated annotators.
  config.task.num_eval = 200  # Held-out pairs labelled by the truth, for evaluation.

  # The annotator population (fields of `rlhf_jax.feedback.SimulationConfig`).
  config.annotators = ml_collections.ConfigDict()
  config.annotators.num_annotators = 40
  config.annotators.annotations_per_item = 5
  config.annotators.num_classes = 2  # Every comparison has a strict preference (no true ties).
  # Shares of annotator types (they sum to 1): accurate, biased toward position a or
  # toward the longer response, uniformly random, mostly inverted, fast and sloppy, and
  # accurate until a change point.
  config.annotators.good_share = 0.55
  config.annotators.position_biased_share = 0.1
  config.annotators.length_biased_share = 0.05
  config.annotators.spammer_share = 0.1
  config.annotators.adversary_share = 0.1
  config.annotators.fast_share = 0.05
  config.annotators.drifting_share = 0.05
  config.annotators.golden_rate = 0.07  # Share of known-answer items.

  # Aggregation (fields of configs/aggregate.py; input/format/output_dir are set by the job).
  config.aggregate = load_config_file(Path(__file__).with_name("aggregate.py"))
  config.aggregate.classes = "a,b"  # No ties (annotators.num_classes = 2; 3 needs "a,b,tie").
  # Items whose label confidence is below aggregate.routing.confidence_threshold go to
  # expert review, not training.

  # Reward model on the aggregated labels: confidence-weighted (soft) Bradley-Terry.
  config.reward_model = train.base_config("reward_model", "tiny")
  config.reward_model.loss.name = "bradley_terry_soft"
  # DPO policy on the same labels (chosen = the side the label prefers).
  config.dpo = train.base_config("dpo", "tiny")
  for stage in (config.reward_model, config.dpo):  # The two stages read the same file.
    stage.train.steps = 150
    stage.data.tokenizer_vocab_size = 384  # 256 byte-fallback pieces + the task's small vocabulary.
    stage.data.max_length = 64
    stage.data.max_prompt_length = 32
  return config
