"""The ablation runner behind `scripts/ablate.py`: a grid of config overrides times seeds.

An experiment is a config file `experiments/NAME/config.py` whose `get_config()` returns a
ConfigDict with

  name        short name (the folder's)
  title       one line, the README's heading
  question    what the ablation asks, in a sentence or two
  function    "module:function", called as function(params: dict, seeds: list[int]) ->
              list[dict[str, float]] (one metric dict per seed, same order); it may train
              all seeds in one vmapped program. A `vectorize.SeedProgram` is run by
              `vectorize.run_seeds`: its JAX stage vmapped over the seeds in one compiled
              program where their shapes agree, else seed after seed (said in the
              progress output and recorded as `seeds_vectorized` false)
  base        ConfigDict of parameters every cell starts from
  grid        list of (key, [values]) pairs: the cells are the product of the axes, the
              first slowest (keys may be dotted paths into `base`; a key that `base`
              lacks is an error). A ConfigDict {key: [values]} works too, but ConfigDict
              sorts its keys, so the axes then come in alphabetical order.
  cells       list of extra override dicts, appended after the grid (may be empty)
  baseline    override dict: a whole cell, which every cell is compared with by paired
              differences, or part of one ({"method": "majority_vote"}): each cell is
              compared with the cell that has its other settings and these (or None)
  seeds       default number of seeds (0 .. seeds - 1, shared by every cell: paired)
  metrics     the metrics shown in the table (every metric is kept in results.jsonl)
  plots       list of dicts {metric, x, series (or ""), file, xlabel, ylabel, title}

`run(...)` executes the cells not yet finished, appending one line per cell and seed to
`results.jsonl` (overrides, seed, every metric, seconds, error), so a stopped sweep resumes
where it stopped (a finished cell and seed is never rerun; failed ones are retried). The
lines carry a fingerprint of `function` and `base`: after either changes the earlier lines
no longer count (they are dropped, with a note). A cell that raises is recorded with its
error for every seed of the call, shown as FAILED in the table, and counted in the return
value (the script exits non-zero): never hidden. Then the table (mean and 95% t-interval per
cell, `stats.t_interval`; paired differences against the baseline over shared seeds),
the plots and the README (`report.write_readme`) are regenerated from all the lines.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib
import itertools
import json
import multiprocessing
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tqdm

from rlhf_jax.ablate import vectorize as seed_vectorize

__all__ = ["Experiment", "RunSummary", "cell_id", "expand_grid", "load_results", "resolve_params", "run"]

RESULTS_FILE = "results.jsonl"


def _plain(value: Any) -> Any:
  """Plain Python values; a ConfigDict (anything with `to_dict`) becomes a dict, so that
  this module needs no config library (the config stops at the script)."""
  if hasattr(value, "to_dict") and callable(value.to_dict):
    return _plain(value.to_dict())
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


@dataclasses.dataclass(frozen=True)
class Experiment:
  """An experiment config as plain Python values (see the module docstring)."""

  name: str
  title: str
  question: str
  function: str
  base: dict[str, Any]
  grid: dict[str, list[Any]]
  cells: list[dict[str, Any]]
  baseline: dict[str, Any] | None
  seeds: int
  metrics: list[str]
  plots: list[dict[str, Any]]

  @classmethod
  def from_config(cls, config: Any) -> "Experiment":
    """From the experiment config: a ConfigDict or a plain dict of the same fields."""
    c = _plain(config)
    missing = [k for k in ("name", "question", "function", "base", "grid") if k not in c]
    if missing:
      raise ValueError(f"experiment config: missing field(s) {missing}; expected name, question, function, base, "
                       "grid (and optionally title, cells, baseline, seeds, metrics, plots).")
    if ":" not in c["function"]:
      raise ValueError(f"experiment config field `function`: expected 'module:function', got {c['function']!r}.")
    grid = c["grid"]
    if isinstance(grid, list):
      if not all(isinstance(axis, (list, tuple)) and len(axis) == 2 for axis in grid):
        raise ValueError(f"experiment config field `grid`: expected (key, [values]) pairs, got {grid!r}.")
      grid = {key: values for key, values in grid}
    for key, values in grid.items():
      if not isinstance(values, list) or not values:
        raise ValueError(f"experiment config field `grid.{key}`: expected a non-empty list, got {values!r}.")
    return cls(name=c["name"], title=c.get("title") or c["name"], question=c["question"], function=c["function"],
               base=c["base"], grid=grid, cells=list(c.get("cells") or []), baseline=c.get("baseline") or None,
               seeds=int(c.get("seeds", 5)), metrics=list(c.get("metrics") or []), plots=list(c.get("plots") or []))

  def fingerprint(self) -> str:
    text = json.dumps({"function": self.function, "base": self.base}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

  def cell_overrides(self) -> list[dict[str, Any]]:
    return expand_grid(self.grid, self.cells)


def expand_grid(grid: dict[str, Sequence[Any]], cells: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
  """The product of the grid's axes (first key slowest), then `cells`; duplicates dropped."""
  keys = list(grid)
  out, seen = [], set()
  for values in itertools.product(*(grid[k] for k in keys)):
    overrides = dict(zip(keys, values))
    if cell_id(overrides) not in seen:
      seen.add(cell_id(overrides))
      out.append(overrides)
  for overrides in cells:
    if cell_id(overrides) not in seen:
      seen.add(cell_id(overrides))
      out.append(dict(overrides))
  return out


def cell_id(overrides: dict[str, Any]) -> str:
  """A stable name of a cell: `key=value` pairs joined by commas, in the given key order."""
  return ",".join(f"{k}={json.dumps(_plain(v), sort_keys=True)}" for k, v in overrides.items()) or "base"


def resolve_params(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
  """`base` with the (possibly dotted) override keys replaced; an unknown key is an error."""
  params = json.loads(json.dumps(base))
  for key, value in overrides.items():
    node = params
    parts = key.split(".")
    for part in parts[:-1]:
      if not isinstance(node, dict) or part not in node:
        raise KeyError(f"override {key!r}: {part!r} is not a field of the base config.")
      node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
      raise KeyError(f"override {key!r}: not a field of the base config (fields: {sorted(node)}).")
    node[parts[-1]] = _plain(value)
  return params


def _resolve_function(name: str) -> Callable[..., Any]:
  module_name, _, function_name = name.partition(":")
  return getattr(importlib.import_module(module_name), function_name)


@dataclasses.dataclass(frozen=True)
class _CellOutcome:
  """One call of a cell function: metrics per seed or the error, its wall time, and for a
  SeedProgram whether its seeds ran vmapped (None for a plain function) and why not."""

  metrics: list[dict[str, float]] | None
  error: str | None
  seconds: float
  vectorized: bool | None = None
  note: str | None = None


def _run_cell(function: str, params: dict[str, Any], seeds: list[int], vectorize: bool = True) -> _CellOutcome:
  """Runs one cell; an exception becomes the outcome's error text."""
  start = time.perf_counter()
  vectorized, note = None, None
  try:
    cell_function = _resolve_function(function)
    if isinstance(cell_function, seed_vectorize.SeedProgram):
      seed_run = seed_vectorize.run_seeds(cell_function, params, list(seeds), vectorize=vectorize)
      results, vectorized, note = seed_run.metrics, seed_run.vectorized, seed_run.note
    else:
      results = cell_function(params, list(seeds))
    if len(results) != len(seeds):
      raise ValueError(f"{function} returned {len(results)} results for {len(seeds)} seeds.")
    metrics = [{k: float(v) for k, v in r.items()} for r in results]
    return _CellOutcome(metrics, None, time.perf_counter() - start, vectorized, note)
  except Exception as error:  # pylint: disable=broad-except
    # Reported in results.jsonl and the table, never hidden.
    last = traceback.format_exception_only(type(error), error)[-1].strip()
    return _CellOutcome(None, last, time.perf_counter() - start, vectorized, note)


def load_results(path: Path) -> list[dict[str, Any]]:
  """The lines of a results.jsonl (a torn last line from a killed run is skipped)."""
  if not path.exists():
    return []
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """What `run` did: cells run now, cells skipped as finished, failures, the table."""

  ran: int
  skipped: int
  failed: list[str]
  table: str
  seconds: float
  rows: list[dict[str, Any]]


def run(config: Any, output_dir: str | Path, *, seeds: int | None = None,
        workers: int = 1, progress: bool = True, command: str | None = None, write_report: bool = True,
        vectorize: bool = True) -> RunSummary:
  """Runs the unfinished cells of an experiment, then rewrites the table, plots and README.

  Args:
    config: the experiment config (see the module docstring): a ConfigDict or a dict.
    output_dir: where results.jsonl, the plots and README.md live (the config's folder).
    seeds: number of seeds (default: the config's); seeds are 0 .. seeds - 1.
    workers: cells run in this many processes (spawned; 1 runs them here, in order).
    progress: show a tqdm bar over the cells.
    command: the exact command, written into the README.
    write_report: also write README.md and the plots.
    vectorize: run a SeedProgram's seeds vmapped where shapes allow (False: seed after
      seed, e.g. to time the difference; the results agree to float tolerance).
  """
  from rlhf_jax.ablate import report  # pylint: disable=import-outside-toplevel

  experiment = Experiment.from_config(config)
  num_seeds = experiment.seeds if seeds is None else int(seeds)
  if num_seeds < 1:
    raise ValueError(f"--seeds: expected a positive integer, got {num_seeds}.")
  if workers < 1:
    raise ValueError(f"--workers: expected a positive integer, got {workers}.")
  output_dir = Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  path = output_dir / RESULTS_FILE
  fingerprint = experiment.fingerprint()
  rows = load_results(path)
  current = [r for r in rows if r.get("fingerprint") == fingerprint]
  if len(current) != len(rows):
    print(f"{path}: {len(rows) - len(current)} results of an earlier config of this experiment dropped.")
    _rewrite(path, current)
  done = {(r["cell"], int(r["seed"])) for r in current if r.get("error") is None}

  cells = experiment.cell_overrides()
  params_of = {}
  for overrides in cells:
    params_of[cell_id(overrides)] = resolve_params(experiment.base, overrides)  # unknown keys fail before any run
  todo = []
  skipped = 0
  for overrides in cells:
    name = cell_id(overrides)
    missing = [s for s in range(num_seeds) if (name, s) not in done]
    if missing:
      todo.append((overrides, missing))
    else:
      skipped += 1

  start = time.perf_counter()
  bar = tqdm.tqdm(total=len(todo), desc=experiment.name, unit="cell", disable=not progress)

  def record(overrides, missing, outcome: _CellOutcome):
    with open(path, "a", encoding="utf-8") as f:
      for index, seed in enumerate(missing):
        row = {"cell": cell_id(overrides), "overrides": _plain(overrides), "seed": seed,
               "metrics": outcome.metrics[index] if outcome.metrics is not None else {}, "error": outcome.error,
               "cell_seconds": round(outcome.seconds, 3), "seeds_in_call": len(missing),
               "fingerprint": fingerprint}
        if outcome.vectorized is not None:
          row["seeds_vectorized"] = outcome.vectorized
        f.write(json.dumps(row, sort_keys=True) + "\n")
        current.append(row)
    bar.update(1)
    if outcome.note is not None:
      bar.write(f"cell {cell_id(overrides)}: {outcome.note}; its {len(missing)} seeds ran one after another.")
    if outcome.error is not None:
      bar.write(f"cell {cell_id(overrides)} FAILED: {outcome.error}")

  if workers == 1:
    for overrides, missing in todo:
      record(overrides, missing, _run_cell(experiment.function, params_of[cell_id(overrides)], missing, vectorize))
  else:
    context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
      futures = {pool.submit(_run_cell, experiment.function, params_of[cell_id(o)], m, vectorize): (o, m)
                 for o, m in todo}
      for future in concurrent.futures.as_completed(futures):
        overrides, missing = futures[future]
        record(overrides, missing, future.result())
  bar.close()

  latest = _latest(current, {cell_id(o) for o in cells}, num_seeds)
  table = report.results_table(experiment, cells, latest)
  failed = sorted({r["cell"] for r in latest if r.get("error") is not None})
  if write_report:
    report.write_plots(experiment, cells, latest, output_dir)
    report.write_readme(experiment, output_dir, table=table, rows=latest, num_seeds=num_seeds,
                        command=command or f"python scripts/ablate.py --config={output_dir / 'config.py'} "
                        f"--seeds={num_seeds}")
  return RunSummary(ran=len(todo), skipped=skipped, failed=failed, table=table,
                    seconds=time.perf_counter() - start, rows=latest)


def _latest(rows: list[dict[str, Any]], cells: set[str], num_seeds: int) -> list[dict[str, Any]]:
  """The last line per (cell, seed) of the current grid and seeds (a retry supersedes a failure)."""
  latest: dict[tuple[str, int], dict[str, Any]] = {}
  for row in rows:
    if row["cell"] in cells and int(row["seed"]) < num_seeds:
      latest[(row["cell"], int(row["seed"]))] = row
  return list(latest.values())


def _rewrite(path: Path, rows: list[dict[str, Any]]) -> None:
  tmp = path.with_suffix(".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, sort_keys=True) + "\n")
  tmp.replace(path)
