"""Tables, plots and the README of an ablation, regenerated from its results.jsonl.

The README template holds the question, the exact command, the runtime (the sum of the
cells' recorded compute, so a resumed sweep reports what it all took), the table, the
plots and a conclusion. The conclusion is the author's, written after reading the
numbers: it lives between `CONCLUSION_START` and `CONCLUSION_END` and every regeneration
keeps it as it is.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_jax.ablate import stats
from rlhf_jax.ablate.runner import Experiment, cell_id

__all__ = ["CONCLUSION_END", "CONCLUSION_START", "results_table", "write_plots", "write_readme"]

CONCLUSION_START = "<!-- conclusion: written by the author, kept when the README is regenerated -->"
CONCLUSION_END = "<!-- end of conclusion -->"
_PLACEHOLDER = "_Not written yet: run the experiment, read the table, then write what it shows here._"


def _by_cell(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  out: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    out.setdefault(row["cell"], []).append(row)
  return out


def _metric_names(experiment: Experiment, rows: list[dict[str, Any]]) -> list[str]:
  if experiment.metrics:
    return list(experiment.metrics)
  names: list[str] = []
  for row in rows:
    for name in row.get("metrics", {}):
      if name not in names:
        names.append(name)
  return names


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def cell_values(rows: list[dict[str, Any]], metric: str) -> dict[int, float]:
  """seed -> value of `metric` over the successful rows of one cell."""
  return {int(r["seed"]): float(r["metrics"][metric]) for r in rows
          if r.get("error") is None and metric in r.get("metrics", {})}


def results_table(experiment: Experiment, cells: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
  """Markdown: mean ± 95% t-interval half-width per cell and metric; then, when a baseline
  is set, the paired difference of each cell's first metrics against it over shared seeds
  (marked * when the interval excludes 0). Failed cells show FAILED and the error."""
  metrics = _metric_names(experiment, rows)
  keys: list[str] = []
  for overrides in cells:
    keys.extend(k for k in overrides if k not in keys)
  grouped = _by_cell(rows)
  header = "| " + " | ".join(keys + ["seeds"] + metrics) + " |"
  lines = [header, "|" + "---|" * (len(keys) + 1 + len(metrics))]
  for overrides in cells:
    cell_rows = grouped.get(cell_id(overrides), [])
    ok = [r for r in cell_rows if r.get("error") is None]
    errors = sorted({r["error"] for r in cell_rows if r.get("error") is not None})
    key_values = [_format_value(overrides[k]) if k in overrides else "" for k in keys]
    if errors:
      message = "FAILED (" + f"{len(cell_rows) - len(ok)}/{len(cell_rows)} seeds): " + "; ".join(errors)
      message = message.replace("|", "/")
      values = [message] + [""] * (len(metrics) - 1) if metrics else [message]
    else:
      values = [stats.t_interval(list(cell_values(ok, m).values())).format() for m in metrics]
    lines.append("| " + " | ".join(key_values + [str(len(ok))] + values) + " |")
  text = "\n".join(lines)
  if experiment.baseline is not None and metrics:
    all_ids = {cell_id(o) for o in cells}
    whole = cell_id(experiment.baseline) in all_ids
    shown = metrics[:5]
    if whole:
      intro = f"Paired differences against the baseline cell `{cell_id(experiment.baseline)}`"
    else:
      intro = (f"Paired differences against the cell with the same other settings and "
               f"`{cell_id(experiment.baseline)}`")
    lines = [intro + " (same seeds; mean ± 95% t-interval; * the interval excludes 0):", "",
             "| " + " | ".join(keys + ["pairs"] + [f"Δ {m}" for m in shown]) + " |",
             "|" + "---|" * (len(keys) + 1 + len(shown))]
    for overrides in cells:
      base_id = cell_id(experiment.baseline) if whole else cell_id({**overrides, **experiment.baseline})
      if cell_id(overrides) == base_id or base_id not in all_ids:
        continue
      cell_rows = grouped.get(cell_id(overrides), [])
      base_rows = grouped.get(base_id, [])
      diffs = [stats.paired_difference(cell_values(cell_rows, m), cell_values(base_rows, m)) for m in shown]
      n = max((d.n for d in diffs), default=0)
      cells_text = [d.format() + (" *" if d.excludes_zero() else "") for d in diffs]
      lines.append("| " + " | ".join([_format_value(overrides[k]) if k in overrides else "" for k in keys]
                                     + [str(n)] + cells_text) + " |")
    text += "\n\n" + "\n".join(lines)
  return text


def write_plots(experiment: Experiment, cells: list[dict[str, Any]], rows: list[dict[str, Any]],
                output_dir: Path) -> list[Path]:
  """One PNG per entry of `experiment.plots`: metric (mean, 95% t-interval error bars)
  against an override `x`, one line per value of `series`. Returns the files written."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  grouped = _by_cell(rows)
  written = []
  for spec in experiment.plots:
    if spec.get("metrics"):
      written.append(_plot_metrics_as_x(experiment, cells, grouped, spec, output_dir, plt))
      continue
    metric, x_key, series_key = spec["metric"], spec["x"], spec.get("series") or ""
    figure, axis = plt.subplots(figsize=(6.0, 4.0), dpi=110)
    series: dict[str, list[tuple[Any, stats.Interval]]] = {}
    for overrides in cells:
      if x_key not in overrides:
        continue
      label = _format_value(overrides.get(series_key, "")) if series_key else metric
      extra = [k for k in overrides if k not in (x_key, series_key)]
      if extra and spec.get("fixed"):
        if any(overrides.get(k) != v for k, v in spec["fixed"].items()):
          continue
      interval = stats.t_interval(list(cell_values(grouped.get(cell_id(overrides), []), metric).values()))
      series.setdefault(label, []).append((overrides[x_key], interval))
    numeric = all(isinstance(x, (int, float)) for points in series.values() for x, _ in points)
    categories = list(dict.fromkeys(x for points in series.values() for x, _ in points))
    for offset, (label, points) in enumerate(series.items()):
      xs = [x if numeric else categories.index(x) + 0.06 * (offset - len(series) / 2) for x, _ in points]
      means = [i.mean for _, i in points]
      errors = [0.0 if not np.isfinite(i.half_width) else i.half_width for _, i in points]
      axis.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=label)
    if not numeric:
      axis.set_xticks(range(len(categories)), [str(c) for c in categories])
    axis.set_xlabel(spec.get("xlabel") or x_key)
    axis.set_ylabel(spec.get("ylabel") or metric)
    axis.set_title(spec.get("title") or experiment.title, fontsize=10)
    axis.grid(alpha=0.3)
    if series_key:
      axis.legend(title=series_key, fontsize=8)
    figure.tight_layout()
    path = output_dir / (spec.get("file") or f"{metric}.png")
    figure.savefig(path)
    plt.close(figure)
    written.append(path)
  return written


def _plot_metrics_as_x(experiment, cells, grouped, spec, output_dir: Path, plt) -> Path:
  """A line per cell (labelled by `series`) over several metrics placed at `x_values`
  (e.g. accuracy_at_200 .. accuracy_at_1000 against labels bought); `fixed` {key: value}
  keeps only the cells with those settings."""
  figure, axis = plt.subplots(figsize=(6.0, 4.0), dpi=110)
  for overrides in cells:
    if any(overrides.get(k) != v for k, v in (spec.get("fixed") or {}).items()):
      continue
    cell_rows = grouped.get(cell_id(overrides), [])
    intervals = [stats.t_interval(list(cell_values(cell_rows, m).values())) for m in spec["metrics"]]
    label = _format_value(overrides.get(spec.get("series") or "", cell_id(overrides)))
    axis.errorbar(spec["x_values"], [i.mean for i in intervals],
                  yerr=[0.0 if not np.isfinite(i.half_width) else i.half_width for i in intervals],
                  marker="o", capsize=3, label=label)
  axis.set_xlabel(spec.get("xlabel") or "")
  axis.set_ylabel(spec.get("ylabel") or "")
  axis.set_title(spec.get("title") or experiment.title, fontsize=10)
  axis.grid(alpha=0.3)
  axis.legend(title=spec.get("series") or None, fontsize=8)
  figure.tight_layout()
  path = output_dir / spec["file"]
  figure.savefig(path)
  plt.close(figure)
  return path


def _kept_conclusion(readme: Path) -> str:
  if not readme.exists():
    return _PLACEHOLDER
  text = readme.read_text(encoding="utf-8")
  if CONCLUSION_START in text and CONCLUSION_END in text:
    return text.split(CONCLUSION_START, 1)[1].split(CONCLUSION_END, 1)[0].strip() or _PLACEHOLDER
  return _PLACEHOLDER


def runtime_seconds(rows: list[dict[str, Any]]) -> float:
  """Compute recorded for the rows: each call's seconds shared among the seeds it ran."""
  return float(sum(r.get("cell_seconds", 0.0) / max(r.get("seeds_in_call", 1), 1) for r in rows))


def vectorized_cells(rows: list[dict[str, Any]]) -> tuple[int, int]:
  """(cells whose every seed ran in a vmapped program, cells of a SeedProgram): rows of a
  plain cell function carry no `seeds_vectorized` and count in neither."""
  recorded: dict[str, bool] = {}
  for row in rows:
    if "seeds_vectorized" in row:
      recorded[row["cell"]] = recorded.get(row["cell"], True) and bool(row["seeds_vectorized"])
  return sum(recorded.values()), len(recorded)


def _vectorized_sentence(rows: list[dict[str, Any]]) -> str:
  vectorized, programs = vectorized_cells(rows)
  if not programs:
    return ""
  return (f" The seeds of {vectorized} of {programs} cells ran in one vmapped program (the others seed after seed:"
          " `--novectorize`, shapes that differ between seeds, or seeds added one at a time).")


def write_readme(experiment: Experiment, output_dir: Path, *, table: str, rows: list[dict[str, Any]],
                 num_seeds: int, command: str) -> Path:
  """Regenerates output_dir/README.md, keeping the conclusion between the markers."""
  readme = output_dir / "README.md"
  conclusion = _kept_conclusion(readme)
  cells = len({r["cell"] for r in rows})
  plots = "\n".join(f"![{spec['metric']}]({spec.get('file') or spec['metric'] + '.png'})"
                    for spec in experiment.plots)
  machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
  text = f"""# {experiment.title}

<!-- Generated by scripts/ablate.py from results.jsonl; edit only the conclusion. -->

**Question.** {experiment.question}

**Command.**

    {command}

**Runtime.** {runtime_seconds(rows):.0f} s for {cells} cells × {num_seeds} seeds: the sum of the
recorded wall-clock times of the cells, compilation included ({machine}, shared with other
jobs when measured, so an idle machine is faster).{_vectorized_sentence(rows)} Every line of `results.jsonl` holds a
cell's overrides, its seed and every metric.

## Results

{table}

{plots}

## Conclusion

{CONCLUSION_START}
{conclusion}
{CONCLUSION_END}
"""
  readme.write_text(text, encoding="utf-8")
  return readme
