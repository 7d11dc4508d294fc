"""Tests for rlhf_jax.feedback.workflow.report: the files an aggregation run writes, read
back and compared with values written out by hand here (the pipeline's own tests check
the same files end to end in tests/feedback/workflow/test_pipeline.py)."""

import csv
import struct

import numpy as np
import pytest

from rlhf_jax.feedback.workflow import report


def _read_csv(path):
  with open(path, newline="", encoding="utf-8") as handle:
    return list(csv.reader(handle))


def test_numbers_are_written_with_six_significant_digits_and_blanks_for_missing():
  assert [report.format_number(v) for v in (None, float("nan"), True, np.bool_(False), 7, np.int64(-3))] == [
      "", "", "1", "0", "7", "-3"]
  assert report.format_number(2 / 3) == "0.666667" and report.format_number(123456789.0) == "1.23457e+08"
  assert report.format_number(np.float32(0.25), digits=2) == "0.25"
  assert report.posterior_columns(["a", "b", "tie"]) == ["p_a", "p_b", "p_tie"]


def test_labels_csv_rows_hold_names_posteriors_and_lineage(tmp_path):
  path = tmp_path / "labels.csv"
  rows = report.write_labels_csv(
      path, item_ids=["q1", "q2"], class_names=["a", "b"], labels=np.array([1, 0]),
      confidence=np.array([0.75, 0.5]), num_annotations=np.array([4, 2]), expert_review=np.array([False, True]),
      posteriors=np.array([[0.25, 0.75], [0.5, 0.5]]),
      lineage=[{"annotation_ids": ["n1", "n2", "n3", "n4"], "guideline_versions": ["v1", "v2"]},
               {"annotation_ids": ["n5", "n6"], "guideline_versions": []}],
      label_source=["crowd", "pending"])
  assert rows == 2
  assert _read_csv(path) == [
      ["item", "label", "confidence", "num_annotations", "expert_review", "p_a", "p_b", "annotation_ids",
       "guideline_versions", "label_source"],
      ["q1", "b", "0.75", "4", "0", "0.25", "0.75", "n1;n2;n3;n4", "v1;v2", "crowd"],
      ["q2", "a", "0.5", "2", "1", "0.5", "0.5", "n5;n6", "", "pending"],
  ]
  with pytest.raises(ValueError, match=r"`confidence` has 1 rows, expected one per item \(2\)"):
    report.write_labels_csv(
        path, item_ids=["q1", "q2"], class_names=["a", "b"], labels=np.array([1, 0]), confidence=np.array([0.75]),
        num_annotations=np.array([4, 2]), expert_review=np.array([False, True]),
        posteriors=np.array([[0.25, 0.75], [0.5, 0.5]]), lineage=[{}, {}], label_source=["crowd", "crowd"])


def test_annotators_csv_keeps_strings_and_formats_numbers_in_the_given_columns(tmp_path):
  path = tmp_path / "annotators.csv"
  count = report.write_annotators_csv(
      path, [{"annotator": "w1", "reliability": 0.123456789, "num_annotations": 3, "extra": "not a column"},
             {"annotator": "w2", "reliability": float("nan")}],
      ["annotator", "num_annotations", "reliability"])
  assert count == 2
  assert _read_csv(path) == [["annotator", "num_annotations", "reliability"], ["w1", "3", "0.123457"],
                             ["w2", "", ""]]


def _png_size(path):
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  return struct.unpack(">II", data[16:24])


def test_plots_are_pngs_of_the_documented_size(tmp_path):
  # Figure sizes in inches at 100 dpi, as the plotting functions lay them out.
  histogram = tmp_path / "reliability.png"
  report.plot_reliability_histogram(histogram, np.array([0.2, 0.9, np.nan]), num_classes=2, title="t",
                                    num_annotations=np.array([1, 50, 3]))
  assert _png_size(histogram) == (1000, 360)  # two panels of 5.0 x 3.6
  confusions = tmp_path / "confusion.png"
  report.plot_confusion_matrices(confusions, np.tile(np.eye(3), (4, 1, 1)), annotator_ids=list("abcd"),
                                 num_annotations=[1, 2, 3, 4], class_names=["x", "y", "z"], title="t")
  cell = 0.45 * 3 + 1.6
  assert _png_size(confusions) == (round(100 * (3 * cell + 0.8)), round(100 * (2 * cell + 0.6)))
  drift = tmp_path / "drift.png"
  times = np.arange(5) * 86400.0
  report.plot_drift_timelines(drift, [{"annotator": "w1", "cusum": {
      "times": times, "statistic": np.array([0, 1, 2, 0, 1.0]), "alarms": np.array([0, 0, 1, 0, 0], bool),
      "threshold": 2.0, "label": "cusum"}}], title="t")
  assert _png_size(drift) == (520, 260)  # one detector column of 5.2, one row of 1.7 + 0.9


def _summary():
  return {
      "input": "/data/crowd.jsonl", "format": "jsonl", "method": "dawid_skene", "num_iters": 12,
      "num_read": 10, "num_accepted": 9, "num_rejected": 1, "num_duplicates": 0, "num_contradictions": 2,
      "num_items": 4, "num_annotators": 3, "num_classes": 2, "class_names": ["a", "b"],
      "duplicate_policy": "keep", "reject_reasons": {"label": 1},
      "agreement": {"percent_agreement": 0.8, "fleiss_kappa": None, "krippendorff_alpha": 0.5},
      "agreement_notes": {"fleiss_kappa": "one class only"},
      "label_counts": {"a": 3, "b": 1}, "mean_confidence": 0.91234,
      "routing": {"confidence_measure": "posterior", "confidence_meaning": "P(label)", "confidence_threshold": 0.7,
                  "num_low_confidence": 1, "agreement_threshold": None, "num_items": 4},
      "num_expert_review": 1, "routing_rule": "confidence", "num_expert_resolved": 0, "num_pending": 1,
      "calibration": {"num_with_golden": 0, "golden_rate": 0.05, "has_evidence": False, "formula": "w = acc",
                      "num_fast": 0, "fast_threshold_ms": 1500.0},
      "drift": {"measured": False, "note": "no timestamps"},
      "files": {"labels.csv": "one row per item"}, "seconds": {"read": 0.5, "aggregate": 1.25},
  }


def test_report_md_tables_and_sentences_come_from_the_summary(tmp_path):
  path = tmp_path / "report.md"
  report.write_report_md(path, _summary(), plots={"reliability": "reliability.png"},
                         annotator_rows=[{"annotator": f"w{i}", "num_annotations": 3, "reliability": r}
                                         for i, r in enumerate([0.9, 0.4, float("nan")])],
                         reject_examples=[{"line": 7, "field": "label", "reason": "not a | class"}])
  text = path.read_text()
  lines = text.splitlines()
  assert lines[0] == "# Aggregation report: crowd.jsonl"
  assert "Input `/data/crowd.jsonl` (format `jsonl`), method **dawid_skene** (12 iterations)." in lines
  assert "| 10 | 9 | 1 | 0 | 2 |" in lines  # read, accepted, rejected, duplicates, contradictions
  assert "| 7 | label | not a \\| class |" in lines  # a pipe inside a cell is escaped
  assert "| percent agreement | 0.8 |" in lines and "| Fleiss' kappa | undefined: one class only |" in lines
  assert "| a | 3 |" in lines and "| b | 1 |" in lines
  assert "Mean confidence 0.9123. **1 of 4 items go to expert review**" in text
  # Least reliable first; an annotator without a finite reliability is left out.
  least = lines.index("Least reliable annotators:")
  assert lines[least + 4].startswith("| w1 | 3 | 0.4 |") and lines[least + 5].startswith("| w0 | 3 | 0.9 |")
  assert "w2" not in text
  assert "Not measured: no timestamps" in lines and "![reliability](reliability.png)" in lines
  assert "- `labels.csv`: one row per item" in lines and "Timings (s): read 0.50, aggregate 1.25" in lines

