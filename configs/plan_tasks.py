r"""Plan the next batch of annotation tasks from the current labels (rlhf_jax/feedback/workflow/plan.py).

Launch (after `scripts/aggregate.py` wrote runs/labels/{labels.csv, annotators.csv}):

  python scripts/plan_tasks.py --config=configs/plan_tasks.py \
    --config.labels=runs/labels/labels.csv --config.annotators=runs/labels/annotators.csv \
    --config.annotations=prefs.jsonl --config.annotations_format=jsonl \
    --config.budget=500 --config.guideline_version=v2 --config.output_dir=runs/plan1

It writes runs/plan1/{tasks.jsonl, tasks_label_studio.json, unassigned.jsonl, plan.json}.
`--config.annotations_format=label_studio` reads a Label Studio JSON export instead.
No figures are recorded for this job; it is a bookkeeping step.
"""

import ml_collections


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  # ---- Inputs.
  config.labels = ""  # labels.csv (item, p_<class>, num_annotations): required.
  config.annotators = ""  # annotators.csv with a skill column: required.
  config.skill_column = "reliability"  # Column of annotators.csv used as skill.
  config.annotations = ""  # Annotation history: who labelled what, golden items, texts.
  config.annotations_format = "jsonl"  # jsonl | csv | parquet | crowd_csv | label_studio.
  config.golden = ""  # Extra golden items, CSV question,truth.
  config.new_items = ""  # JSONL of unlabelled items: item_id, prompt, response_a, response_b.
  config.output_dir = ""  # Where the tasks go: required.
  # ---- Budget and stamping.
  config.budget = 0.0  # Total price of the batch (> 0): required.
  config.guideline_version = ""  # Stamped on every task: required.
  config.round = 0  # Planning round; folded into the PRNG key so rounds differ.
  config.seed = 0
  # ---- Adaptive redundancy.
  config.confidence_threshold = 0.8  # Another answer while the label's posterior is below.
  config.min_annotations = 2  # Another answer while an item has fewer.
  config.max_annotations = 5  # Never more than this many answers per item.
  config.initial_annotations = 2  # Tasks per new item.
  # ---- Price per task: base_price * (1 + (hard_multiplier - 1) * difficulty).
  config.base_price = 1.0
  config.hard_multiplier = 2.0
  # ---- Routing.
  config.hard_threshold = 0.5  # Difficulty (normalised entropy) from which an item is hard.
  config.skilled_share = 0.25  # Top share of annotators by skill that takes hard items.
  config.load_cap = 200  # Most tasks per annotator in this batch.
  config.min_skill = 0.0  # Annotators below get no tasks.
  # ---- Golden items.
  config.golden_rate = 0.07  # Share of each queue.
  config.golden_active_share = 0.5  # Least exposed share of the golden set used this round.
  return config
