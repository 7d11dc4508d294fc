"""Ablations: a grid of config overrides times seeds, resumable, with t-intervals.

`run(config, output_dir)` (see `runner`) executes the unfinished cells of an experiment
config (`experiments/NAME/config.py`), writes `results.jsonl`, the table (`report`), the
plots and the README. `stats` holds the interval arithmetic. A cell function that is a
`SeedProgram` (`vectorize`) runs all its seeds in one vmapped program where shapes allow.
"""

from rlhf_jax.ablate.runner import Experiment, RunSummary, cell_id, expand_grid, load_results, resolve_params, run
from rlhf_jax.ablate.stats import Interval, paired_difference, t_interval
from rlhf_jax.ablate.vectorize import SeedProgram, SeedRun, run_seeds

__all__ = ["Experiment", "Interval", "RunSummary", "SeedProgram", "SeedRun", "cell_id", "expand_grid", "load_results",
           "paired_difference", "resolve_params", "run", "run_seeds", "t_interval"]
