"""The campaign around the models: `golden` (golden-set injection), `routing` (expert
review, hard items, prices, budgets), `pipeline` (one file of annotations to labels and a
report, behind `scripts/aggregate.py`) and `report` (the files it writes); `stream`
(incremental aggregation of arriving batches, `scripts/aggregate.py --follow`), `plan`
(the next batch of tasks, `scripts/plan_tasks.py`) and `audit` (labels against a reward
model, annotator report cards, balance; `scripts/audit_labels.py`)."""
