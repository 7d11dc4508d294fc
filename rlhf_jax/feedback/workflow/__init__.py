"""The campaign around the models: `golden` (golden-set injection), `routing` (expert
review, hard items, prices, budgets), `pipeline` (one file of annotations to labels and a
report, behind `scripts/aggregate.py`) and `report` (the files it writes)."""
