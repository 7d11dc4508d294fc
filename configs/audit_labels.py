r"""Audit labels against a reward model: disputed labels, annotator report cards, balance
(rlhf_jax/feedback/workflow/audit.py).

Launch (annotations and labels from scripts/aggregate.py; model probabilities from a
scores file, or a reward-model run of scripts/train.py with --config.reward_model):

  python scripts/audit_labels.py --config=configs/audit_labels.py \
    --config.annotations=prefs.jsonl --config.format=jsonl \
    --config.labels=runs/labels/labels.csv --config.reward_model=runs/rm \
    --config.output_dir=runs/audit

It writes runs/audit/{disputed.csv, annotator_cards.csv, balance.csv, cards_<group>.png,
audit.json}. No figures are recorded for this job.
"""

import ml_collections


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.annotations = ""  # The annotations behind the labels (required).
  config.format = "jsonl"  # jsonl | csv | parquet | crowd_csv.
  config.labels = ""  # labels.csv with p_<class> columns (required).
  config.scores = ""  # Model scores per item: CSV/JSONL with p_<class>, p_a, score_a/score_b or margin.
  config.reward_model = ""  # Or: a reward-model run directory of scripts/train.py.
  config.output_dir = ""  # Required.
  config.dispute_threshold = 0.8  # The model gives another class at least this probability.
  config.top = 50  # Rows of disputed.csv.
  config.annotator_groups = ""  # CSV annotator,group: one PNG of report cards per group.
  config.item_tags = ""  # CSV item,tag (several rows per item allowed) for the balance table.
  return config
