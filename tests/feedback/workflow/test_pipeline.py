"""End-to-end tests of `scripts/aggregate.py` and `rlhf_jax.feedback.workflow.pipeline`.

Every number the command reports is recomputed here from the input files with NumPy
(counts, lineage, Fleiss' kappa, accuracy against the truth file, the routing rule), so a
test fails when the pipeline misreports what it read or computed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax.feedback import simulate
from rlhf_jax.feedback.models import crowd_bt as pairwise
from rlhf_jax.feedback.workflow import pipeline

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "aggregate.py"
CONFIG = REPO / "configs" / "aggregate.py"
DUCK = REPO / ".." / "shared" / "data" / "crowd" / "duck"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASS_NAMES = ("a", "b", "tie")


def _run_cli(*overrides: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, str(SCRIPT), f"--config={CONFIG}", *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
  with open(path, newline="", encoding="utf-8") as handle:
    reader = csv.DictReader(handle)
    return list(reader.fieldnames), list(reader)


def _load_config(**fields):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("_aggregate_config_under_test", CONFIG)
  config_module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config_module)
  config = config_module.get_config()
  for key, value in fields.items():
    _set_field(config, key, value)
  return config


def _set_field(config, dotted: str, value) -> None:
  """config["a"]["b"] = value for dotted = "a.b"."""
  *parents, last = dotted.split(".")
  for part in parents:
    config = config[part]
  config[last] = value


def _fleiss_kappa_equal_raters(counts: np.ndarray) -> float:
  """Fleiss (1971) with the same number m of ratings per item: counts [items, K]."""
  m = counts.sum(axis=1)
  assert np.all(m == m[0])
  m = m[0]
  p_item = (np.sum(counts**2, axis=1) - m) / (m * (m - 1))
  p_class = counts.sum(axis=0) / counts.sum()
  p_bar, p_e = p_item.mean(), np.sum(p_class**2)
  return float((p_bar - p_e) / (1 - p_e))


# ----------------------------------------------------------------------------------------
# A simulated pairwise JSONL file with planted bad lines, through the command line.


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
  folder = tmp_path_factory.mktemp("simulated")
  config = simulate.SimulationConfig(
      num_items=240, num_annotators=16, annotations_per_item=5, golden_rate=0.1)
  sim = simulate.simulate_annotations(jax.random.key(7), config)
  data = folder / "annotations.jsonl"
  simulate.write_jsonl(sim, data, with_text=False)
  good_lines = sim.num_annotations
  planted = [
      b"{this is not json\n",
      json.dumps({"item_id": "item-0", "annotator_id": "annotator-99", "choice": "maybe"}).encode() + b"\n",
      json.dumps({"annotator_id": "annotator-98", "choice": "a"}).encode() + b"\n",
      b'{"item_id": "item-1", "annotator_id": "bad-\xff", "choice": "a"}\n',
      json.dumps({"item_id": "item-2", "annotator_id": "annotator-97", "choice": "b",
                  "timestamp": "yesterday"}).encode() + b"\n",
  ]
  with open(data, "ab") as handle:
    handle.write(b"\n")  # a blank line is not a record
    handle.writelines(planted)
  truth = folder / "truth.csv"
  with open(truth, "w", encoding="utf-8") as handle:
    handle.write("question,truth\n")
    for i, label in enumerate(sim.true_labels):
      handle.write(f"item-{i},{CLASS_NAMES[label]}\n")
  # Expert decisions for the first 10 items: their true label.
  experts = folder / "experts.csv"
  with open(experts, "w", encoding="utf-8") as handle:
    handle.write("question,truth\n")
    for i in range(10):
      handle.write(f"item-{i},{CLASS_NAMES[sim.true_labels[i]]}\n")
  out = folder / "out"
  completed = _run_cli(
      f"--config.input={data}", "--config.format=jsonl", "--config.method=dawid_skene",
      f"--config.output_dir={out}", f"--config.truth={truth}",
      f"--config.expert_labels={experts}", "--config.routing.agreement_threshold=0.5")
  return {"sim": sim, "data": data, "truth": truth, "out": out, "completed": completed,
          "good_lines": good_lines, "planted": len(planted)}


def _valid_records(path: Path) -> list[dict]:
  """The records the test itself considers valid: the simulator's (annotation ids sim-N)."""
  rows = []
  for raw in path.read_bytes().split(b"\n"):
    try:
      row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      continue
    if str(row.get("annotation_id", "")).startswith("sim-"):
      rows.append(row)
  return rows


def test_cli_succeeds_and_prints_summary(simulated_run):
  completed = simulated_run["completed"]
  assert completed.returncode == 0, completed.stderr
  assert "Traceback" not in completed.stderr
  assert "Accuracy" in completed.stdout and "Fleiss' kappa" in completed.stdout


def test_labels_csv_columns_rows_and_lineage(simulated_run):
  header, rows = _read_csv(simulated_run["out"] / "labels.csv")
  assert header[:5] == ["item", "label", "confidence", "num_annotations", "expert_review"]
  assert header[5:8] == ["p_a", "p_b", "p_tie"]
  assert header[8:10] == ["annotation_ids", "guideline_versions"]
  records = _valid_records(simulated_run["data"])
  expected_ids: dict[str, list[str]] = {}
  for record in records:
    expected_ids.setdefault(record["item_id"], []).append(record["annotation_id"])
  assert len(rows) == len(expected_ids) == simulated_run["sim"].config.num_items
  for row in rows:
    assert row["annotation_ids"].split(";") == expected_ids[row["item"]]
    assert int(row["num_annotations"]) == len(expected_ids[row["item"]])
    assert row["guideline_versions"] == "sim-v1"
    posterior = np.array([float(row[c]) for c in ("p_a", "p_b", "p_tie")])
    np.testing.assert_allclose(posterior.sum(), 1.0, atol=1e-4)
    assert row["label"] in CLASS_NAMES
    np.testing.assert_allclose(float(row["confidence"]), posterior[CLASS_NAMES.index(row["label"])],
                               atol=1e-5)


def test_accuracy_recomputed_from_truth_equals_reported(simulated_run):
  _, rows = _read_csv(simulated_run["out"] / "labels.csv")
  _, truth_rows = _read_csv(simulated_run["truth"])
  truth = {r["question"]: r["truth"] for r in truth_rows}
  accuracy = np.mean([row["label"] == truth[row["item"]] for row in rows])
  summary = json.loads((simulated_run["out"] / "summary.json").read_text())
  assert summary["accuracy"] == pytest.approx(accuracy, abs=1e-12)
  assert summary["num_truth_items"] == len(rows)
  assert f"Accuracy {accuracy:.4f}" in simulated_run["completed"].stdout
  assert f"Accuracy {accuracy:.4f}" in (simulated_run["out"] / "report.md").read_text()
  # The simulated annotators are informative: far above the 0.45 of always answering "a".
  assert accuracy > 0.8


def test_rejects_plus_accepted_equals_read(simulated_run):
  rejects = [json.loads(line) for line in
             (simulated_run["out"] / "rejects.jsonl").read_text().splitlines()]
  summary = json.loads((simulated_run["out"] / "summary.json").read_text())
  non_blank = sum(1 for line in simulated_run["data"].read_bytes().split(b"\n") if line.strip())
  assert summary["num_read"] == non_blank == simulated_run["good_lines"] + simulated_run["planted"]
  assert len(rejects) == summary["num_rejected"] == simulated_run["planted"]
  assert summary["num_accepted"] + len(rejects) == non_blank
  # The planted lines follow the good ones and one blank line; lines are 1-based.
  first_planted = simulated_run["good_lines"] + 2
  assert [r["line"] for r in rejects] == list(range(first_planted, first_planted + 5))
  assert [r["field"] for r in rejects] == [None, "choice", "item_id", None, "timestamp"]
  assert all(r["file"] == "annotations.jsonl" and r["reason"] for r in rejects)


def test_agreement_matches_numpy_fleiss(simulated_run):
  records = _valid_records(simulated_run["data"])
  items = sorted({r["item_id"] for r in records})
  index = {item: i for i, item in enumerate(items)}
  counts = np.zeros((len(items), 3), np.int64)
  for r in records:
    counts[index[r["item_id"]], CLASS_NAMES.index(r["choice"])] += 1
  summary = json.loads((simulated_run["out"] / "summary.json").read_text())
  assert summary["agreement"]["fleiss_kappa"] == pytest.approx(
      _fleiss_kappa_equal_raters(counts), abs=1e-5)


def test_routing_and_expert_labels(simulated_run):
  _, rows = _read_csv(simulated_run["out"] / "labels.csv")
  records = _valid_records(simulated_run["data"])
  per_item: dict[str, list[str]] = {}
  for r in records:
    per_item.setdefault(r["item_id"], []).append(r["choice"])
  sim = simulated_run["sim"]
  for row in rows:
    item = int(row["item"].split("-")[1])
    if item < 10:  # expert-labelled: the expert's (true) label, source "expert"
      assert row["label_source"] == "expert"
      assert row["label"] == CLASS_NAMES[sim.true_labels[item]]
      continue
    choices = per_item[row["item"]]
    m = len(choices)
    n = np.array([choices.count(c) for c in CLASS_NAMES])
    pair_agreement = np.sum(n * (n - 1)) / (m * (m - 1))
    routed = float(row["confidence"]) < 0.7 or pair_agreement < 0.5
    assert row["expert_review"] == ("1" if routed else "0"), row
    assert row["label_source"] == ("pending" if routed else "crowd")
  summary = json.loads((simulated_run["out"] / "summary.json").read_text())
  assert summary["num_expert_review"] == sum(r["expert_review"] == "1" for r in rows)
  assert summary["num_expert_resolved"] == 10


def test_annotators_csv(simulated_run):
  _, rows = _read_csv(simulated_run["out"] / "annotators.csv")
  sim = simulated_run["sim"]
  assert len(rows) == sim.config.num_annotators
  for row in rows:
    a = int(row["annotator"].split("-")[1])
    mine = sim.annotators == a
    assert int(row["num_annotations"]) == mine.sum()
    golden = mine & sim.is_golden
    assert int(row["num_golden"]) == golden.sum()
    if golden.any():
      expected = np.mean(sim.labels[golden] == sim.golden_labels[golden])
      assert float(row["golden_accuracy"]) == pytest.approx(expected, abs=1e-5)
    assert 0.0 <= float(row["reliability"]) <= 1.0
    assert 0.0 <= float(row["weight"]) <= 1.0
    assert row["drift_alarm"] in ("yes", "no")


def test_report_and_plots(simulated_run):
  out = simulated_run["out"]
  report = (out / "report.md").read_text()
  from matplotlib import image  # pylint: disable=g-import-not-at-top
  for name in ("reliability_histogram.png", "confusion_matrices.png", "drift_timelines.png"):
    path = out / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(path)  # a full decode, not just the signature
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # not a blank image
    assert f"]({name})" in report
  summary = json.loads((out / "summary.json").read_text())
  for text in ("Fleiss' kappa", "Krippendorff's alpha", "items go to expert review",
               f"| {summary['num_read']} | {summary['num_accepted']} | {summary['num_rejected']} |"):
    assert text in report


# ----------------------------------------------------------------------------------------
# The duck data set (real crowd answers with gold labels).


@pytest.fixture(scope="module")
def duck_run(tmp_path_factory):
  if not (DUCK / "answers.csv").is_file():
    pytest.skip(f"real crowd data not found at {DUCK} (../shared/data is absent)")
  out = tmp_path_factory.mktemp("duck")
  completed = _run_cli(f"--config.input={DUCK / 'answers.csv'}", "--config.format=crowd_csv",
                       "--config.method=dawid_skene", f"--config.output_dir={out}")
  return out, completed


def test_duck_end_to_end(duck_run):
  out, completed = duck_run
  assert completed.returncode == 0, completed.stderr
  with open(DUCK / "answers.csv", newline="", encoding="utf-8") as handle:
    answers = list(csv.DictReader(handle))
  header, rows = _read_csv(out / "labels.csv")
  assert header[:7] == ["item", "label", "confidence", "num_annotations", "expert_review",
                        "p_0", "p_1"]
  assert len(rows) == len({a["question"] for a in answers}) == 108
  _, truth_rows = _read_csv(DUCK / "truth.csv")
  truth = {r["question"]: r["truth"] for r in truth_rows}
  accuracy = np.mean([row["label"] == truth[row["item"]] for row in rows])
  summary = json.loads((out / "summary.json").read_text())
  assert summary["accuracy"] == pytest.approx(accuracy, abs=1e-12)
  assert summary["num_read"] == summary["num_accepted"] == len(answers)
  assert f"Accuracy {accuracy:.4f}" in completed.stdout
  # The default method matches crowd-kit's DawidSkene (0.889) or beats it.
  assert accuracy >= 0.889
  for name in ("reliability_histogram.png", "confusion_matrices.png"):
    assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
  assert not (out / "drift_timelines.png").exists()  # no timestamps in crowd data
  assert "Not measured" in (out / "report.md").read_text()


# ----------------------------------------------------------------------------------------
# User mistakes: exit code 2, one message, no traceback.


def test_config_field_typo_is_rejected(tmp_path):
  completed = _run_cli("--config.input=x.csv", f"--config.output_dir={tmp_path}",
                       "--config.num_iter=5")
  assert completed.returncode == 2
  assert "unknown config field 'num_iter'" in completed.stderr
  assert "num_iters" in completed.stderr  # the valid fields are listed
  assert "Traceback" not in completed.stderr


def test_missing_input_exits_2_naming_the_file(tmp_path):
  missing = tmp_path / "no_such_answers.csv"
  completed = _run_cli(f"--config.input={missing}", f"--config.output_dir={tmp_path / 'out'}")
  assert completed.returncode == 2
  assert str(missing) in completed.stderr
  assert "Traceback" not in completed.stderr


def test_bad_config_value_exits_2(tmp_path):
  completed = _run_cli(f"--config.input={tmp_path}/a.csv", f"--config.output_dir={tmp_path}",
                       "--config.method=dawid_skeen")
  assert completed.returncode == 2
  assert "config.method = 'dawid_skeen'" in completed.stderr
  assert "dawid_skene" in completed.stderr
  assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("field, value, expected", [
    ("format", "xml", "one of jsonl, csv, parquet, crowd_csv"),
    ("num_iters", 0, "an integer in [1, inf)"),
    ("routing.confidence_threshold", 1.5, "[0.0, 1.0]"),
    ("weights.source", "golden", "one of auto, calibration, reliability"),
    ("drift.cusum_p1", 0.9, "different from drift.cusum_p0"),
    ("output_dir", "", "required"),
    ("stop_on", "labels", "one of posteriors, objective"),
])
def test_validate_config_names_field(field, value, expected):
  config = _load_config(input="answers.csv", output_dir="out")
  _set_field(config, field, value)
  with pytest.raises(pipeline.ConfigError) as error:
    pipeline.validate_config(config)
  assert f"config.{field}" in str(error.value)
  assert expected in str(error.value)


def test_a_misspelt_method_names_the_close_match():
  config = _load_config(input="answers.csv", output_dir="out", method="dawid_skeen")
  with pytest.raises(pipeline.ConfigError, match="did you mean 'dawid_skene'"):
    pipeline.validate_config(config)


def test_crowd_bt_on_pairwise_records_crowd_csv_rejected():
  config = _load_config(input="answers.csv", output_dir="out", method="crowd_bt",
                        format="crowd_csv")
  with pytest.raises(pipeline.ConfigError, match="crowd_bt needs pairwise comparisons"):
    pipeline.validate_config(config)


# ----------------------------------------------------------------------------------------
# Item-level Crowd-BT through the pipeline (in process).


@pytest.mark.slow  # compiling the L-BFGS fit takes ~10 s on 2 cores
def test_crowd_bt_scores_recover_simulated_ranking(tmp_path):
  from scipy import stats  # pylint: disable=g-import-not-at-top

  num_items = 40
  data = pairwise.simulate_comparisons(
      jax.random.key(3), num_items=num_items, num_annotators=12, num_comparisons=3000,
      score_scale=1.5)
  left, right = np.asarray(data.left), np.asarray(data.right)
  annotators, left_wins = np.asarray(data.annotators), np.asarray(data.left_wins)
  path = tmp_path / "arena.jsonl"
  with open(path, "w", encoding="utf-8") as handle:
    for n in range(left.size):
      handle.write(json.dumps({
          "item_id": f"match-{n}", "response_a_id": f"model-{left[n]}",
          "response_b_id": f"model-{right[n]}", "annotator_id": f"judge-{annotators[n]}",
          "choice": "a" if left_wins[n] else "b"}) + "\n")
  config = _load_config(input=str(path), format="jsonl", method="crowd_bt",
                        output_dir=str(tmp_path / "out"), **{"report.plots": False})
  outputs = pipeline.run(config)
  _, rows = _read_csv(tmp_path / "out" / "scores.csv")
  assert len(rows) == num_items
  fitted = {int(r["response"].split("-")[1]): float(r["score"]) for r in rows}
  scores = np.array([fitted[i] for i in range(num_items)])
  rho = stats.spearmanr(scores, np.asarray(data.scores)).statistic
  assert rho > 0.9
  # Each comparison's posterior is sigmoid(score_a - score_b) of the fitted scores.
  _, labels = _read_csv(tmp_path / "out" / "labels.csv")
  for row, n in zip(labels[:50], range(50)):
    expected = 1.0 / (1.0 + np.exp(-(scores[left[n]] - scores[right[n]])))
    assert float(row["p_a"]) == pytest.approx(expected, abs=1e-4)
  assert outputs.summary["crowd_bt"]["num_comparisons"] == left.size


# ----------------------------------------------------------------------------------------
# Declared classes and probable typos (issue 15).


def _typo_answers(folder: Path) -> tuple[Path, int, dict[str, str]]:
  """39 workers answer 12 yes/no questions (0/1); one answer on q3 is the typo "O".

  Returns the file, the line of the typo and the truth.
  """
  rng = np.random.default_rng(0)
  truth = {f"q{i}": str(i % 2) for i in range(12)}
  lines = ["question,worker,answer"]
  typo_line = None
  for w in range(39):
    skill = 0.85 if w % 3 else 0.6
    for q, answer in truth.items():
      given = answer if rng.random() < skill else str(1 - int(answer))
      if q == "q3" and w == 17:
        given, typo_line = "O", len(lines) + 1
      lines.append(f"{q},w{w},{given}")
  path = folder / "answers.csv"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path, typo_line, truth


def test_undeclared_typo_is_reported_first(tmp_path):
  path, typo_line, _ = _typo_answers(tmp_path)
  config = _load_config(input=str(path), format="crowd_csv", output_dir=str(tmp_path / "out"),
                        **{"report.plots": False})
  outputs = pipeline.run(config)
  summary_text = (tmp_path / "out" / "summary.json").read_text()
  summary = json.loads(summary_text)
  # The first key of summary.json and the first lines of report.md and of the terminal.
  assert next(iter(summary)) == "warnings" and len(summary["warnings"]) == 1
  warning = summary["warnings"][0]
  assert "'O' is 1 of 468 answers" in warning and f"answers.csv:{typo_line}" in warning
  assert "--config.classes=0,1" in warning
  assert summary["rare_classes"] == [{"class": "O", "count": 1, "share": 1 / 468,
                                      "annotation_ids": [f"answers.csv:{typo_line}"]}]
  report_lines = (tmp_path / "out" / "report.md").read_text().splitlines()
  assert warning in report_lines[2]
  assert outputs.summary_text().splitlines()[0] == f"Warning: {warning}"
  # Today's behaviour without a declaration: the stray answer is a class of its own.
  assert summary["class_names"] == ["0", "1", "O"]


def test_declared_classes_reject_the_typo_from_the_command_line(tmp_path):
  path, typo_line, truth = _typo_answers(tmp_path)
  out = tmp_path / "out"
  completed = _run_cli(f"--config.input={path}", "--config.format=crowd_csv",
                       f"--config.output_dir={out}", "--config.classes=0,1",
                       "--config.report.plots=false")
  assert completed.returncode == 0, completed.stderr
  rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
  assert rejects == [{"file": "answers.csv", "line": typo_line, "field": "answer",
                      "reason": "answer 'O' is not one of the declared classes 0, 1",
                      "raw": "q3,w17,O"}]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["num_read"] == 468 and summary["num_rejected"] == 1
  assert summary["num_accepted"] + summary["num_rejected"] == summary["num_read"]
  assert summary["class_names"] == summary["declared_classes"] == ["0", "1"]
  assert summary["warnings"] == [] and summary["rare_classes"] == []
  header, rows = _read_csv(out / "labels.csv")
  assert header[5:7] == ["p_0", "p_1"] and "p_O" not in header
  q3 = next(r for r in rows if r["item"] == "q3")
  assert q3["label"] == truth["q3"] and int(q3["num_annotations"]) == 38
  assert "Traceback" not in completed.stderr


def test_malformed_class_declaration_is_a_one_line_error(tmp_path):
  completed = _run_cli(f"--config.input={tmp_path}/a.csv", f"--config.output_dir={tmp_path}",
                       "--config.classes=0,,1")
  assert completed.returncode == 2
  assert completed.stderr.strip().splitlines() == [
      "aggregate.py: error: config.classes '0,,1' has an empty name; expected names "
      "separated by single commas, e.g. 0,1."]


@pytest.mark.parametrize("field, value, expected", [
    ("classes", "0", "declares 1 class"),
    ("classes", "0,1,0", "names 0 more than once"),
    ("rare_class_share", 1.5, "[0.0, 1.0]"),
    ("drift.alpha", 0.0, "(0.0, 1.0)"),
    ("drift.num_permutations", 10, "at least 19 permutations for drift.alpha = 0.05"),
    ("drift.min_segment", 0, "an integer in [1, inf)"),
])
def test_validate_config_new_fields(field, value, expected):
  config = _load_config(input="answers.csv", output_dir="out")
  _set_field(config, field, value)
  with pytest.raises(pipeline.ConfigError) as error:
    pipeline.validate_config(config)
  assert f"config.{field}" in str(error.value) and expected in str(error.value)


def test_pairwise_classes_must_be_schema_choices():
  config = _load_config(input="a.jsonl", output_dir="out", format="jsonl", classes="a,maybe")
  with pytest.raises(pipeline.ConfigError, match="config.classes 'a,maybe': maybe is not a choice"):
    pipeline.validate_config(config)


# ----------------------------------------------------------------------------------------
# Routing for every method: the confidence labels.csv shows is the one routed on.


@pytest.mark.parametrize("method", ["majority_vote", "weighted_vote"])
def test_voting_methods_route_on_their_vote_share(simulated_run, method, tmp_path):
  out = tmp_path / method
  config = _load_config(input=str(simulated_run["data"]), format="jsonl", method=method,
                        output_dir=str(out), **{"report.plots": False})
  pipeline.run(config)
  _, rows = _read_csv(out / "labels.csv")
  _, annotator_rows = _read_csv(out / "annotators.csv")
  weight = {r["annotator"]: (float(r["vote_weight"]) if method == "weighted_vote" else 1.0)
            for r in annotator_rows}
  votes: dict[str, dict[str, float]] = {}
  for record in _valid_records(simulated_run["data"]):
    item = votes.setdefault(record["item_id"], {})
    item[record["choice"]] = item.get(record["choice"], 0.0) + weight[record["annotator_id"]]
  routed = 0
  for row in rows:
    share = votes[row["item"]].get(row["label"], 0.0) / sum(votes[row["item"]].values())
    assert float(row["confidence"]) == pytest.approx(share, abs=1e-5)
    assert row["expert_review"] == ("1" if share < 0.7 - 1e-6 else "0"), row
    routed += row["expert_review"] == "1"
  summary = json.loads((out / "summary.json").read_text())
  assert 0 < routed == summary["num_expert_review"] == summary["routing"]["num_low_confidence"]
  measure = "weighted vote share" if method == "weighted_vote" else "vote share"
  report = (out / "report.md").read_text()
  assert f"**{routed} of {len(rows)} items go to expert review** ({measure} of the label < 0.7)" in report
  assert f"is below 0.7: {routed} items" in report


def test_dawid_skene_routing_rule_is_stated_with_its_numbers(simulated_run):
  summary = json.loads((simulated_run["out"] / "summary.json").read_text())
  routing = summary["routing"]
  assert routing["rule"] == "posterior probability of the label < 0.7 or pairwise agreement < 0.5"
  _, rows = _read_csv(simulated_run["out"] / "labels.csv")
  # labels.csv shows the expert's label (confidence 1) on the 10 expert-labelled items;
  # elsewhere it shows the confidence that was routed on.
  crowd = [r for r in rows if r["label_source"] != "expert"]
  low = sum(float(r["confidence"]) < 0.7 for r in crowd)
  assert low <= routing["num_low_confidence"] <= low + len(rows) - len(crowd)
  report = (simulated_run["out"] / "report.md").read_text()
  assert (f"is below 0.7: {routing['num_low_confidence']} items; or when its pairwise agreement is below 0.5: "
          f"{routing['num_low_agreement']} items ({routing['num_both']} by both)") in report


# ----------------------------------------------------------------------------------------
# Only the classes the task has: no tie row for a task without ties.


def _capture_confusions(monkeypatch) -> list:
  captured = []
  original = pipeline.report.plot_confusion_matrices

  def capture(path, matrices, **kwargs):
    captured.append((np.asarray(matrices), kwargs["class_names"]))
    original(path, matrices, **kwargs)

  monkeypatch.setattr(pipeline.report, "plot_confusion_matrices", capture)
  return captured


@pytest.fixture(scope="module")
def no_tie_records(tmp_path_factory):
  folder = tmp_path_factory.mktemp("no_ties")
  config = simulate.SimulationConfig(num_items=150, num_annotators=10, annotations_per_item=5,
                                     num_classes=2)
  sim = simulate.simulate_annotations(jax.random.key(11), config)
  simulate.write_jsonl(sim, folder / "annotations.jsonl", with_text=False)
  return folder / "annotations.jsonl"


def test_task_without_ties_has_two_classes_everywhere(no_tie_records, tmp_path, monkeypatch):
  captured = _capture_confusions(monkeypatch)
  config = _load_config(input=str(no_tie_records), format="jsonl", output_dir=str(tmp_path),
                        **{"report.num_drift": 0})
  outputs = pipeline.run(config)
  header, _ = _read_csv(tmp_path / "labels.csv")
  assert header[5:7] == ["p_a", "p_b"] and "p_tie" not in header
  assert outputs.summary["class_names"] == ["a", "b"] and outputs.summary["num_classes"] == 2
  assert any("no annotation (and no golden answer) is a tie" in n for n in outputs.summary["notes"])
  (matrices, class_names), = captured
  assert class_names == ("a", "b") and matrices.shape[1:] == (2, 2)
  assert np.all(np.isfinite(matrices))
  np.testing.assert_allclose(matrices.sum(axis=2), 1.0, atol=1e-5)


@pytest.mark.parametrize("method", ["wawa", "zero_based_skill", "kos", "mmsr"])
def test_new_methods_run_through_the_pipeline(no_tie_records, tmp_path, method):
  from rlhf_jax import feedback  # pylint: disable=g-import-not-at-top
  config = _load_config(input=str(no_tie_records), format="jsonl", output_dir=str(tmp_path), method=method,
                        **{"report.num_drift": 0, "report.plots": False})
  outputs = pipeline.run(config)
  enc = outputs.read_report.annotations
  kwargs = {"key": jax.random.key(int(config.seed))} if method in ("kos", "mmsr") else {}
  if method == "kos":
    kwargs["num_iters"] = int(config.num_iters)
  if method == "mmsr":
    kwargs["tol"] = float(config.tol)
  direct = feedback.AGGREGATION_METHODS.get(method)(
      enc.items, enc.annotators, enc.labels, num_classes=enc.num_classes, num_items=enc.num_items,
      num_annotators=enc.num_annotators, **kwargs)
  # labels.csv holds the method's labels (no expert labels here) and the training file all items.
  _, rows = _read_csv(tmp_path / "labels.csv")
  np.testing.assert_array_equal([enc.class_names.index(r["label"]) for r in rows], np.asarray(direct.labels))
  assert outputs.summary["method"] == method and outputs.training is not None
  assert outputs.training.num_trained + outputs.training.num_awaiting + outputs.training.num_rejected == len(rows)


def test_the_objective_stopping_rule_reaches_the_labels(no_tie_records, tmp_path):
  """config.stop_on="objective": labels.csv holds what `dawid_skene` gives under that rule
  (fewer iterations than the posterior rule here); --follow refuses it with a clear error."""
  from rlhf_jax import feedback  # pylint: disable=g-import-not-at-top
  from rlhf_jax.feedback.workflow import stream  # pylint: disable=g-import-not-at-top
  config = _load_config(input=str(no_tie_records), format="jsonl", output_dir=str(tmp_path), stop_on="objective",
                        **{"report.num_drift": 0, "report.plots": False})
  outputs = pipeline.run(config)
  enc = outputs.read_report.annotations
  call = dict(num_classes=enc.num_classes, num_items=enc.num_items, num_annotators=enc.num_annotators,
              num_iters=int(config.num_iters), tol=float(config.tol))
  direct = feedback.dawid_skene(enc.items, enc.annotators, enc.labels, **call, stop_on="objective")
  default = feedback.dawid_skene(enc.items, enc.annotators, enc.labels, **call)
  assert int(direct.extras["num_iters"]) < int(default.extras["num_iters"])
  _, rows = _read_csv(tmp_path / "labels.csv")
  np.testing.assert_array_equal([enc.class_names.index(r["label"]) for r in rows], np.asarray(direct.labels))
  np.testing.assert_allclose([float(r["confidence"]) for r in rows], np.asarray(direct.confidence), atol=1e-4)
  with pytest.raises(ValueError, match="stops EM on the\s+posteriors only"):
    stream.config_from_aggregate(config)


def test_declared_class_without_evidence_is_blank_not_a_prior(no_tie_records, tmp_path,
                                                               monkeypatch):
  captured = _capture_confusions(monkeypatch)
  config = _load_config(input=str(no_tie_records), format="jsonl", output_dir=str(tmp_path),
                        classes="a,b,tie", **{"report.num_drift": 0})
  pipeline.run(config)
  header, _ = _read_csv(tmp_path / "labels.csv")
  assert header[5:8] == ["p_a", "p_b", "p_tie"]  # declared: kept as a class
  (matrices, class_names), = captured
  assert class_names == ("a", "b", "tie")
  # No item is a tie, so the tie row is what the model started from: left blank.
  assert np.all(np.isnan(matrices[:, 2, :]))
  assert np.all(np.isfinite(matrices[:, :2, :]))


# ----------------------------------------------------------------------------------------
# Drift in the population of `make run`: drifting annotators found, always-bad ones
# reported as such (issue 15: the CUSUM used to flag the adversaries and spammers as
# drift and miss both drifting annotators).


@pytest.fixture(scope="module")
def make_run_population(tmp_path_factory):
  from rlhf_jax import cli  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("make_run")
  config = cli.load_config_file(REPO / "configs" / "pipeline.py")
  # What `make run` simulates (experiments/pipeline.py: seed, num_pairs and the population).
  sim = simulate.simulate_annotations(
      jax.random.key(config.seed), simulate.SimulationConfig(
          num_items=config.task.num_pairs, **config.annotators.to_dict()))
  simulate.write_jsonl(sim, folder / "annotations.jsonl", with_text=False)
  simulate.write_annotator_truth(sim, folder / "annotator_truth.csv")
  aggregate = config.aggregate
  aggregate.input = str(folder / "annotations.jsonl")
  aggregate.format = "jsonl"
  aggregate.output_dir = str(folder / "feedback")
  aggregate.report.plots = False
  outputs = pipeline.run(aggregate)
  return sim, folder, outputs


def test_make_run_drift_verdicts_against_the_truth(make_run_population):
  sim, folder, outputs = make_run_population
  _, truth_rows = _read_csv(folder / "annotator_truth.csv")
  kind = {r["annotator"]: r["type"] for r in truth_rows}
  _, rows = _read_csv(folder / "feedback" / "annotators.csv")
  verdict = {r["annotator"]: r["drift_status"] for r in rows}
  assert {r["annotator"]: r["drift_alarm"] for r in rows} == {
      a: "yes" if v == "drift" else "no" for a, v in verdict.items()}
  # Always-bad annotators are reported as such, not as drift.
  for annotator, name in kind.items():
    if name in ("spammer", "adversary"):
      assert verdict[annotator] != "drift", (annotator, name)
    if name == "adversary":
      assert verdict[annotator] == "always_bad", (annotator, name)
  assert sum(kind[a] == "spammer" and v == "always_bad" for a, v in verdict.items()) >= 3
  # Both drifting annotators of this population are found.
  drifting = sorted(a for a, name in kind.items() if name == "drifting")
  assert len(drifting) == 2
  assert all(verdict[a] == "drift" for a in drifting)
  false_alarms = sorted(a for a, v in verdict.items() if v == "drift" and kind[a] != "drifting")
  assert len(false_alarms) <= 2  # at most alpha = 0.05 of 38, up to chance

  # Detection rate and delay, recomputed from the files: the annotator's annotations in
  # time order (every item has 5 annotators, so each one is tested), the true change
  # from annotator_truth.csv, the alarm from annotators.csv.
  summary = json.loads((folder / "feedback" / "summary.json").read_text())
  truth = summary["drift"]["truth"]
  assert truth["num_drifting"] == 2 and truth["num_found"] == 2 and truth["detection_rate"] == 1.0
  assert sorted(truth["false_alarms"]) == false_alarms
  records = [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines()]
  change_time = {r["annotator"]: float(r["change_time"]) for r in truth_rows if r["change_time"]}
  alarm_time = {r["annotator"]: r["drift_alarm_time"] for r in rows}
  delays = []
  for entry in truth["drifting"]:
    annotator = entry["annotator"]
    times = sorted(r["timestamp"] for r in records if r["annotator_id"] == annotator)
    true_index = sum(t < change_time[annotator] for t in times)
    assert entry["true_change_index"] == true_index
    # The alarm index points at the annotation whose time annotators.csv reports.
    alarm_at = times[entry["alarm_index"]]
    assert pipeline._iso(alarm_at) == alarm_time[annotator]  # pylint: disable=protected-access
    assert entry["delay_annotations"] == entry["alarm_index"] - true_index
    assert entry["delay_days"] == pytest.approx((alarm_at - change_time[annotator]) / 86400,
                                                abs=1e-3)
    delays.append(entry["delay_annotations"])
  assert truth["median_delay_annotations"] == float(np.median(delays))
  assert all(0 <= d <= 40 for d in delays), delays

  # The report says what happened, with the numbers.
  report = (folder / "feedback" / "report.md").read_text()
  assert "**2 of 2 drifting annotators found** (detection rate 1.00)" in report
  for entry in truth["drifting"]:
    assert f"{entry['annotator']} {entry['delay_annotations']} annotations" in report
  assert (f"Drift verdicts on the {truth['num_not_drifting']} annotators that did not drift: "
          f"{len(false_alarms)}") in report
  assert "**Always bad** = below 0.6 without such a drop" in report
  adversaries = [a for a, name in kind.items() if name == "adversary"]
  always_bad_table = report.split("| always bad |")[1].split("\n\n")[0]
  assert all(f"| {a} |" in always_bad_table for a in adversaries)
  # The CUSUM still alarms on the always-bad annotators, presented as a level monitor.
  monitors = summary["drift"]["monitor_alarms_by_status"]["cusum"]
  assert monitors["drift"] + monitors["ok"] <= monitors["always_bad"]
  assert "Level monitors (an alarm says the level is low now, not that it changed)" in report
  assert "2 of 2 drifting annotators found" in outputs.summary_text()
