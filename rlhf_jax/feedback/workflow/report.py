"""Writers for the outputs of an aggregation run: CSV tables, PNG plots and a Markdown report.

Everything here is host-side bookkeeping on NumPy arrays (no JAX): `pipeline.run` computes,
this module writes.

* `write_labels_csv`: one row per item, columns `item,label,confidence,num_annotations,
  expert_review`, then one posterior column `p_<class>` per class, then the lineage
  (`annotation_ids` joined by ";", `guideline_versions` joined by ";", `label_source`).
* `write_annotators_csv`: one row per annotator (columns given by the caller).
* `plot_reliability_histogram`, `plot_confusion_matrices`, `plot_drift_timelines`: PNG
  files drawn with matplotlib's Agg canvas (`matplotlib.figure.Figure`, never `pyplot`,
  so no global backend state and no display is needed).
* `write_report_md`: `report.md`, the summary a person reads, linking the plots.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "LABEL_COLUMNS",
    "format_number",
    "plot_confusion_matrices",
    "plot_drift_timelines",
    "plot_reliability_histogram",
    "posterior_columns",
    "write_annotators_csv",
    "write_labels_csv",
    "write_report_md",
]

# The first columns of labels.csv, in this order (issue 3).
LABEL_COLUMNS = ("item", "label", "confidence", "num_annotations", "expert_review")
LINEAGE_COLUMNS = ("annotation_ids", "guideline_versions", "label_source")
LINEAGE_SEPARATOR = ";"


def format_number(value: Any, digits: int = 6) -> str:
  """A number for a CSV cell or a table: "" for None/NaN, `digits` significant digits."""
  if value is None:
    return ""
  if isinstance(value, (bool, np.bool_)):
    return "1" if value else "0"
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  value = float(value)
  if math.isnan(value):
    return ""
  return f"{value:.{digits}g}"


def posterior_columns(class_names: Sequence[str]) -> list[str]:
  """`p_<class>` for each class, as written in the input."""
  return [f"p_{name}" for name in class_names]


def _progress(iterable: Iterable, total: int, show: bool, desc: str) -> Iterable:
  if not show:
    return iterable
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(iterable, total=total, desc=desc, unit="row", leave=False, mininterval=0.5)


def write_labels_csv(
    path: str | os.PathLike[str],
    *,
    item_ids: Sequence[str],
    class_names: Sequence[str],
    labels: np.ndarray,
    confidence: np.ndarray,
    num_annotations: np.ndarray,
    expert_review: np.ndarray,
    posteriors: np.ndarray,
    lineage: Sequence[Mapping[str, Any]],
    label_source: Sequence[str],
    progress: bool = False,
) -> int:
  """Writes labels.csv (see the module docstring); returns the number of rows.

  Args:
    path: output file.
    item_ids: [I] item ids as in the input.
    class_names: [K] class names; `label` is written as the class name.
    labels: [I] int class index per item.
    confidence: [I] float, the posterior of the label (the vote share for votes).
    num_annotations: [I] int annotations behind each label.
    expert_review: [I] bool, routed to expert review.
    posteriors: [I, K] float posterior class probabilities.
    lineage: [I] dicts with "annotation_ids" and "guideline_versions" lists
      (`records.item_lineage`).
    label_source: [I] "crowd" | "expert" | "pending".
    progress: show a tqdm bar over the rows.
  """
  num_items = len(item_ids)
  for name, array in (("labels", labels), ("confidence", confidence),
                      ("num_annotations", num_annotations), ("expert_review", expert_review),
                      ("posteriors", posteriors), ("lineage", lineage),
                      ("label_source", label_source)):
    if len(array) != num_items:
      raise ValueError(f"`{name}` has {len(array)} rows, expected one per item ({num_items}).")
  header = [*LABEL_COLUMNS, *posterior_columns(class_names), *LINEAGE_COLUMNS]
  labels = np.asarray(labels).tolist()
  confidence = np.asarray(confidence, np.float64).tolist()
  num_annotations = np.asarray(num_annotations).tolist()
  expert_review = np.asarray(expert_review, bool).tolist()
  posteriors = np.asarray(posteriors, np.float64).tolist()
  with open(path, "w", newline="", encoding="utf-8") as handle:
    writer = csv.writer(handle)
    writer.writerow(header)
    for i in _progress(range(num_items), num_items, progress, "labels.csv"):
      entry = lineage[i]
      writer.writerow([
          item_ids[i], class_names[labels[i]], format_number(confidence[i]),
          num_annotations[i], "1" if expert_review[i] else "0",
          *(format_number(p) for p in posteriors[i]),
          LINEAGE_SEPARATOR.join(entry["annotation_ids"]),
          LINEAGE_SEPARATOR.join(entry["guideline_versions"]),
          label_source[i],
      ])
  return num_items


def write_annotators_csv(
    path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> int:
  """Writes one row per annotator with the given columns (numbers via `format_number`)."""
  with open(path, "w", newline="", encoding="utf-8") as handle:
    writer = csv.writer(handle)
    writer.writerow(columns)
    for row in rows:
      writer.writerow([
          row.get(c, "") if isinstance(row.get(c), str) else format_number(row.get(c))
          for c in columns
      ])
  return len(rows)


# ----------------------------------------------------------------------------------------
# Plots (matplotlib's object-oriented API on the Agg canvas).


def _figure(width: float, height: float, layout: str | None = "constrained"):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  figure = Figure(figsize=(width, height), dpi=100, layout=layout)
  FigureCanvasAgg(figure)
  return figure


def plot_reliability_histogram(
    path: str | os.PathLike[str],
    reliability: np.ndarray,
    *,
    num_classes: int,
    title: str,
    num_annotations: np.ndarray | None = None,
) -> None:
  """Histogram of annotator reliabilities on [0, 1], with chance (1/K) marked.

  With `num_annotations`, a second panel plots reliability against the number of
  annotations (log scale), where a spammer with many answers stands out.
  """
  reliability = np.asarray(reliability, np.float64)
  finite = reliability[np.isfinite(reliability)]
  panels = 2 if num_annotations is not None else 1
  figure = _figure(5.0 * panels, 3.6)
  axes = figure.subplots(1, panels, squeeze=False)[0]
  axes[0].hist(finite, bins=np.linspace(0.0, 1.0, 21), color="#4c72b0", edgecolor="white")
  axes[0].axvline(1.0 / num_classes, color="#c44e52", linestyle="--", label=f"chance (1/{num_classes})")
  axes[0].set_xlim(0.0, 1.0)
  axes[0].set_xlabel("reliability (P(answer = true class))")
  axes[0].set_ylabel("annotators")
  axes[0].legend(loc="upper left", fontsize=8)
  axes[0].set_title(title, fontsize=10)
  if num_annotations is not None:
    counts = np.asarray(num_annotations, np.float64)
    axes[1].scatter(np.maximum(counts, 1), reliability, s=12, alpha=0.7, color="#4c72b0")
    axes[1].axhline(1.0 / num_classes, color="#c44e52", linestyle="--")
    if counts.max() > 10 * max(counts.min(), 1):
      axes[1].set_xscale("log")
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_xlabel("annotations")
    axes[1].set_ylabel("reliability")
    axes[1].set_title("reliability against workload", fontsize=10)
  figure.savefig(path)


def plot_confusion_matrices(
    path: str | os.PathLike[str],
    confusions: np.ndarray,
    *,
    annotator_ids: Sequence[str],
    num_annotations: Sequence[int],
    class_names: Sequence[str],
    title: str,
) -> None:
  """One heat map per annotator: rows true class, columns answer, cells P(answer | true)."""
  confusions = np.asarray(confusions, np.float64)
  count = confusions.shape[0]
  columns = min(3, max(count, 1))
  rows = max(1, math.ceil(count / columns))
  num_classes = len(class_names)
  cell = 0.45 * max(num_classes, 2) + 1.6
  figure = _figure(columns * cell + 0.8, rows * cell + 0.6)
  axes = figure.subplots(rows, columns, squeeze=False)
  show_text = num_classes <= 6
  image = None
  for index, ax in enumerate(axes.ravel()):
    if index >= count:
      ax.set_axis_off()
      continue
    image = ax.imshow(confusions[index], vmin=0.0, vmax=1.0, cmap="Blues")
    ax.set_xticks(range(num_classes), [str(c)[:8] for c in class_names], fontsize=7)
    ax.set_yticks(range(num_classes), [str(c)[:8] for c in class_names], fontsize=7)
    ax.set_xlabel("answer", fontsize=8)
    ax.set_ylabel("true class", fontsize=8)
    ax.set_title(f"{str(annotator_ids[index])[:24]} (n={int(num_annotations[index])})", fontsize=8)
    if show_text:
      for k in range(num_classes):
        for l in range(num_classes):
          value = confusions[index, k, l]
          if np.isfinite(value):
            ax.text(l, k, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 else "black")
  if image is not None:
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
  figure.suptitle(title, fontsize=10)
  figure.savefig(path)


def plot_drift_timelines(
    path: str | os.PathLike[str],
    panels: Sequence[Mapping[str, Any]],
    *,
    title: str,
    start_time: float | None = None,
) -> None:
  """Detector statistic over time for a few annotators, thresholds and alarms marked.

  Args:
    panels: one dict per row: "annotator" (id), and for each detector present
      ("change_point", "cusum", "page_hinkley") a dict with "times" [T] epoch seconds,
      "statistic" [T], "alarms" [T] bool, "threshold" (float) and "label" (y-axis label).
    title: figure title.
    start_time: epoch seconds of day 0 on the x axis (default: the earliest time shown).
  """
  detectors = [d for d in ("change_point", "cusum", "page_hinkley") if any(d in p for p in panels)]
  rows = max(len(panels), 1)
  columns = max(len(detectors), 1)
  # A fixed layout: constrained layout re-measures every tick label (seconds per figure).
  figure = _figure(5.2 * columns, 1.7 * rows + 0.9, layout=None)
  figure.subplots_adjust(left=0.09, right=0.98, bottom=0.6 / (1.7 * rows + 0.9),
                         top=1.0 - 0.55 / (1.7 * rows + 0.9), hspace=0.75, wspace=0.25)
  axes = figure.subplots(rows, columns, squeeze=False)
  if start_time is None:
    starts = [np.min(p[d]["times"]) for p in panels for d in detectors
              if d in p and len(p[d]["times"])]
    start_time = min(starts) if starts else 0.0
  start_text = datetime.datetime.fromtimestamp(start_time, datetime.timezone.utc).strftime(
      "%Y-%m-%d %H:%M UTC")
  for r, panel in enumerate(panels):
    for c, detector in enumerate(detectors):
      ax = axes[r, c]
      data = panel.get(detector)
      if data is None or len(data["times"]) == 0:
        ax.text(0.5, 0.5, f"{str(panel['annotator'])[:24]}: no data", ha="center", va="center",
                transform=ax.transAxes, fontsize=8)
        ax.set_axis_off()
        continue
      days = (np.asarray(data["times"], np.float64) - start_time) / 86400.0
      statistic = np.asarray(data["statistic"], np.float64)
      alarms = np.asarray(data["alarms"], bool)
      ax.plot(days, statistic, color="#4c72b0", linewidth=1.0, drawstyle="steps-post")
      ax.axhline(data["threshold"], color="#c44e52", linestyle="--", linewidth=0.8)
      if alarms.any():
        # The monitors restart at 0 on an alarm: mark the crossing at the threshold.
        ax.plot(days[alarms], np.full(int(alarms.sum()), data["threshold"]), linestyle="none",
                color="#c44e52", marker="v", markersize=6, label="alarm")
        ax.legend(loc="upper left", fontsize=7)
      ax.set_ylabel(data["label"], fontsize=7)
      ax.set_title(f"{str(panel['annotator'])[:40]}: {detector.replace('_', '-')}", fontsize=8)
      ax.tick_params(axis="both", labelsize=7)
      if r == rows - 1:
        ax.set_xlabel(f"days since {start_text}", fontsize=7)
  if not panels:
    axes[0, 0].text(0.5, 0.5, "no annotator has data for a drift detector", ha="center",
                    va="center", transform=axes[0, 0].transAxes)
    axes[0, 0].set_axis_off()
  figure.suptitle(title, fontsize=10)
  figure.savefig(path)


# ----------------------------------------------------------------------------------------
# report.md


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
  def cell(value: Any) -> str:
    text = value if isinstance(value, str) else format_number(value, 4)
    return text.replace("|", "\\|").replace("\n", " ")

  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
  return lines


def _count(n: int, noun: str) -> str:
  return f"{n} {noun}{'' if n == 1 else 's'}"


def _drift_section(drift: Mapping[str, Any]) -> list[str]:
  if not drift["measured"]:
    return [f"Not measured: {drift['note']}"]
  lines = [
      "Each annotator's answers, in time order, are checked against a reference answer "
      "(the golden answer, else the expert label, else the aggregated label of an item "
      "someone else also labelled). A change-point test compares one drop in the rate of "
      "agreeing with a constant rate (one-sided likelihood ratio, permutation p-value; "
      f"{drift['rule']}). **Drift** = a significant drop from at least "
      f"{drift['min_agreement']:g} to below it: a good annotator who became bad. **Always "
      f"bad** = below {drift['min_agreement']:g} without such a drop: bad from the start, "
      "not drift.",
      "",
      f"**{_count(drift['num_drift'], 'annotator')} drifted**, {drift['num_always_bad']} "
      f"{'was' if drift['num_always_bad'] == 1 else 'were'} always bad, {drift['num_ok']} ok; "
      f"{drift['num_too_few']} had too few timed annotations to "
      f"test (fewer than {2 * drift['min_segment']}). An annotator whose agreement never "
      f"changed is called drift with probability at most {drift['alpha']:g}: of the "
      f"{drift['num_tested']} tested, at most {drift['max_expected_false_alarms']:.1f} such "
      "verdicts are expected by chance.",
  ]
  if drift["drift_annotators"]:
    lines += [""]
    lines += _markdown_table(
        ["drifted", "agreement before -> after", "change (UTC)", "alarm (UTC)",
         "annotations from change to alarm", "p-value"],
        [[d["annotator"], f"{d['agreement_before']:.2f} -> {d['agreement_after']:.2f}",
          d["change_time"], d["alarm_time"], str(d["annotations_to_alarm"]), d["p_value"]]
         for d in drift["drift_annotators"][:20]])
  if drift["always_bad_annotators"]:
    lines += [""]
    lines += _markdown_table(
        ["always bad", "agreement", "annotations"],
        [[d["annotator"], d["agreement"], str(d["annotations"])]
         for d in drift["always_bad_annotators"][:20]])
    if len(drift["always_bad_annotators"]) > 20:
      lines.append(f"... and {len(drift['always_bad_annotators']) - 20} more (annotators.csv).")
  truth = drift.get("truth")
  if truth is not None:
    lines += [""]
    if truth["num_drifting"]:
      found = [d for d in truth["drifting"] if d["found"]]
      delays = ", ".join(f"{d['annotator']} {d['delay_annotations']} annotations "
                         f"({d['delay_days']:.1f} days)" for d in found)
      missed = ", ".join(f"{d['annotator']} (p = {format_number(d['p_value'], 3)}, verdict "
                         f"{d['status']})" for d in truth["drifting"] if not d["found"])
      lines.append(
          f"Against the known truth (`{Path(truth['file']).name}`): **{truth['num_found']} of "
          f"{truth['num_drifting']} drifting annotators found** (detection rate "
          f"{truth['detection_rate']:.2f})"
          + (f"; delay from the true change to the alarm: {delays}" if found else "")
          + (f" (median {truth['median_delay_annotations']:g} annotations)" if found else "")
          + (f"; missed: {missed}" if missed else "") + ".")
    else:
      lines.append(f"Against the known truth (`{Path(truth['file']).name}`): no annotator "
                   "drifted.")
    lines.append(
        f"Drift verdicts on the {truth['num_not_drifting']} annotators that did not drift: "
        f"{len(truth['false_alarms'])}"
        + (f" ({', '.join(truth['false_alarms'])})" if truth["false_alarms"] else "") + ". "
        "Verdicts by true type: "
        + "; ".join(f"{kind}: " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
                    for kind, counts in sorted(truth["status_by_type"].items())) + ".")
  monitors = []
  for name, label, rule_key in (("cusum", "Bernoulli CUSUM on golden correctness", "cusum_rule"),
                                ("page_hinkley", "Page-Hinkley on agreement with the other "
                                 "annotators of each item", "page_hinkley_rule")):
    by_status = drift["monitor_alarms_by_status"].get(name)
    if by_status is None:
      continue
    split = ", ".join(f"{n} {status}" for status, n in by_status.items() if n)
    monitors.append(f"{label} ({drift[rule_key]}): {drift[f'{name}_alarms']} annotators alarmed"
                    + (f" ({split})" if split else ""))
  if monitors:
    lines += ["", "Level monitors (an alarm says the level is low now, not that it changed): "
              + "; ".join(monitors) + "."]
  if drift.get("note"):
    lines += ["", f"Note: {drift['note']}"]
  return lines


def write_report_md(
    path: str | os.PathLike[str],
    summary: Mapping[str, Any],
    *,
    annotator_rows: Sequence[Mapping[str, Any]],
    plots: Mapping[str, str],
    reject_examples: Sequence[Mapping[str, Any]] = (),
) -> None:
  """Writes report.md from the run summary (`pipeline.AggregateOutputs.summary`).

  Args:
    path: output file.
    summary: the dict written to summary.json.
    annotator_rows: the rows of annotators.csv (for the tables of extremes and alarms).
    plots: {caption: file name relative to the report} of the PNGs to show.
    reject_examples: a few rejects to quote.
  """
  s = summary
  lines = [f"# Aggregation report: {Path(s['input']).name}", ""]
  for warning in s.get("warnings", []):
    lines += [f"**Warning: {warning}**", ""]
  lines += [
      f"Input `{s['input']}` (format `{s['format']}`), method **{s['method']}**"
      + (f" ({s['num_iters']} iterations)" if s.get("num_iters") is not None else "") + ".",
      "",
      "## Records",
      "",
  ]
  lines += _markdown_table(
      ["read", "accepted", "rejected", "duplicates flagged", "self-contradictions"],
      [[s["num_read"], s["num_accepted"], s["num_rejected"], s["num_duplicates"],
        s["num_contradictions"]]],
  )
  lines.append("")
  lines.append(
      f"{s['num_items']} items, {s['num_annotators']} annotators, {s['num_classes']} classes "
      f"({', '.join(map(str, s['class_names']))}). Duplicate policy: `{s['duplicate_policy']}`.")
  if s["num_rejected"]:
    reasons = ", ".join(f"{field}: {n}" for field, n in s["reject_reasons"].items())
    lines += ["", f"Rejected records by field: {reasons}. Every reject is in `rejects.jsonl` "
              "with its file, line, field and reason."]
    if reject_examples:
      lines += [""]
      lines += _markdown_table(
          ["line", "field", "reason"],
          [[str(r["line"]), str(r["field"] or "(line)"), str(r["reason"])[:160]]
           for r in reject_examples])
  for note in s.get("notes", []):
    lines += ["", f"Note: {note}"]

  lines += ["", "## Agreement", ""]
  agreement_rows = []
  for name, label in (("percent_agreement", "percent agreement"),
                      ("fleiss_kappa", "Fleiss' kappa"),
                      ("krippendorff_alpha", "Krippendorff's alpha (nominal)")):
    value = s["agreement"].get(name)
    agreement_rows.append([label, value if value is not None else
                           "undefined: " + s["agreement_notes"].get(name, "")])
  lines += _markdown_table(["measure", "value"], agreement_rows)

  lines += ["", "## Labels", ""]
  label_rows = [[name, count] for name, count in s["label_counts"].items()]
  lines += _markdown_table(["label", "items"], label_rows)
  routing = s["routing"]
  rule = (f"an item goes to review when the {routing['confidence_measure']} "
          f"({routing['confidence_meaning']}; the `confidence` column of labels.csv) is below "
          f"{routing['confidence_threshold']:g}: {routing['num_low_confidence']} items")
  if routing["agreement_threshold"] is not None:
    rule += (f"; or when its pairwise agreement is below {routing['agreement_threshold']:g}: "
             f"{routing['num_low_agreement']} items ({routing['num_both']} by both)")
  lines += [
      "",
      f"Mean confidence {format_number(s['mean_confidence'], 4)}. "
      f"**{s['num_expert_review']} of {routing['num_items']} items go to expert review** "
      f"({s['routing_rule']}). Rule applied: {rule}. "
      f"{s['num_expert_resolved']} items carry an expert label and {s['num_pending']} "
      "are pending, kept out of training until an expert resolves them "
      "(`label_source` in labels.csv).",
  ]
  if s.get("accuracy") is not None:
    lines += ["", f"**Accuracy {s['accuracy']:.4f}** on {s['num_truth_items']} items with a "
              f"gold label (`{s['truth']}`)."]
    if s.get("crowd_accuracy") is not None:
      lines += [f"Crowd labels alone, before expert labels: {s['crowd_accuracy']:.4f}."]
  if s["method"] == "crowd_bt":
    lines += ["", f"Crowd-BT scored {s['crowd_bt']['num_responses']} responses from "
              f"{s['crowd_bt']['num_comparisons']} comparisons (`scores.csv`); a comparison's "
              "posterior is sigmoid(score_a - score_b)."]

  if s.get("by_guideline"):
    lines += ["", "## By guideline version", "",
              "Percent agreement among the answers given under each version, agreement of "
              "those answers with the final label, golden accuracy, and accuracy of the final "
              "labels of the items annotated under it (where a gold label is known):", ""]
    lines += _markdown_table(
        ["version", "annotations", "annotators", "items", "percent agreement",
         "agreement with label", "golden accuracy", "accuracy"],
        [[r["guideline_version"], r["num_annotations"], r["num_annotators"], r["num_items"],
          format_number(r["percent_agreement"], 4), format_number(r["agreement_with_label"], 4),
          format_number(r["golden_accuracy"], 4), format_number(r["accuracy"], 4)]
         for r in s["by_guideline"]])

  lines += ["", "## Annotators", ""]
  calibration = s["calibration"]
  if calibration["num_with_golden"]:
    golden_text = (f"{calibration['num_with_golden']} annotators have golden items; "
                   f"{calibration['num_under_calibrated']} are below the golden rate target of "
                   f"{calibration['golden_rate']:.0%} of their annotations.")
  else:
    golden_text = (f"The input has no golden items (target rate {calibration['golden_rate']:.0%} "
                   "of each annotator's queue).")
  evidence_text = ("" if calibration["has_evidence"] else
                   " No annotator has golden, expert or repeat data, so every weight is the "
                   "default (the mean weight of annotators with evidence, 0.5 when none has).")
  lines.append(
      f"Annotator weight = {calibration['formula']}; weights in `annotators.csv`.{evidence_text} "
      f"{golden_text} {calibration['num_fast']} annotators are fast (median response under "
      f"{calibration['fast_threshold_ms']:.0f} ms).")
  rows = [r for r in annotator_rows if r.get("reliability") is not None
          and np.isfinite(r["reliability"])]
  if rows:
    ordered = sorted(rows, key=lambda r: r["reliability"])
    columns = ["annotator", "num_annotations", "reliability", "golden_accuracy",
               "agreement_with_label", "weight"]
    lines += ["", "Least reliable annotators:", ""]
    lines += _markdown_table(columns, [[str(r["annotator"]), *[r.get(c) for c in columns[1:]]]
                                       for r in ordered[:5]])
    lines += ["", "Most reliable annotators:", ""]
    lines += _markdown_table(columns, [[str(r["annotator"]), *[r.get(c) for c in columns[1:]]]
                                       for r in ordered[::-1][:5]])

  lines += ["", "## Drift", ""]
  lines += _drift_section(s["drift"])

  if plots:
    lines += ["", "## Plots", ""]
    for caption, name in plots.items():
      lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]

  lines += ["## Files", ""]
  for name, description in s["files"].items():
    lines.append(f"- `{name}`: {description}")
  lines += ["", f"Timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s["seconds"].items()), ""]
  Path(path).write_text("\n".join(lines), encoding="utf-8")
