"""Task planning: adaptive redundancy, budget and prices, routing with a load cap, rotated
golden items, guideline stamps, Label Studio formats, breakdown by guideline version."""

import collections
import json
import math

import numpy as np
import pytest

from rlhf_jax import cli, feedback
from rlhf_jax.feedback.workflow import plan as plan_lib
from rlhf_jax.io import ingest


def _posteriors(confidence):
  """Two-class posteriors with the given top probability."""
  c = np.asarray(confidence, np.float32)
  return np.stack([c, 1 - c], axis=1)


def _plan(budget=1000.0, **overrides):
  confidence = [0.99, 0.95, 0.55, 0.6, 0.7, 0.51, 0.9]
  items = [f"i{n}" for n in range(len(confidence))]
  counts = np.asarray([3, 3, 3, 2, 1, 4, 5])
  skill = {f"w{n}": s for n, s in enumerate([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])}
  labelled_by = {item: {"w0"} for item in items}  # the best annotator saw everything
  settings = dict(budget=budget, guideline_version="v3", confidence_threshold=0.8,
                  min_annotations=2, max_annotations=4, initial_annotations=2,
                  hard_threshold=0.9, skilled_share=0.25, golden_rate=0.0)
  settings.update(overrides)
  config = feedback.PlanConfig(**settings)
  return feedback.plan_tasks(config, item_ids=items, posteriors=_posteriors(confidence),
                             num_annotations=counts, annotator_skill=skill,
                             labelled_by=labelled_by, new_items=["new0"]), items, confidence


def test_adaptive_redundancy_prices_and_budget():
  plan, items, confidence = _plan()
  per_item = collections.Counter(t["item_id"] for t in plan.tasks)
  # i0, i1, i6 are confident (i6 also at 5 >= max 4); i5 is at the cap of 4 answers.
  assert per_item == {"i2": 1, "i3": 1, "i4": 1, "new0": 2}
  reasons = {t["item_id"]: t["reason"] for t in plan.tasks}
  assert reasons == {"i2": "low_confidence", "i3": "low_confidence", "i4": "few_annotations",
                     "new0": "new_item"}
  # Price: base * (1 + (m - 1) * H(p) / log K), by hand.
  for task in plan.tasks:
    if task["item_id"] == "new0":
      continue
    c = confidence[items.index(task["item_id"])]
    entropy = -(c * math.log(c) + (1 - c) * math.log(1 - c)) / math.log(2)
    assert task["price"] == pytest.approx(1.0 + entropy, rel=1e-4)
  assert plan.spent == pytest.approx(sum(t["price"] for t in plan.tasks))
  assert all(t["guideline_version"] == "v3" for t in plan.tasks)
  # A tight budget funds the most uncertain first: i2 (0.55), then i3 (0.6).
  tight, _, _ = _plan(budget=3.9)
  priority = ["new0", "new0", "i2", "i3", "i4"]  # new items count as maximally uncertain
  funded = [t["item_id"] for t in tight.tasks]
  assert funded == priority[:len(funded)] and 0 < len(funded) < 5
  assert tight.spent <= 3.9 and tight.num_unfunded == 5 - len(funded)


def test_hard_items_to_skilled_under_load_cap_and_no_repeats():
  plan, _, _ = _plan(hard_threshold=0.9, load_cap=1)
  load = collections.Counter(t["annotator_id"] for t in plan.tasks)
  assert max(load.values()) == 1  # the cap
  assert all(t["annotator_id"] != "w0" for t in plan.tasks)  # w0 labelled every old item
  hard = [t for t in plan.tasks if t["is_hard"]]
  # i2 (0.55) and i3 (0.6) have difficulty >= 0.9: the skilled pool is w0, w1; w0 is
  # excluded on old items, so the hardest goes to w1 and the next to the next best (w2).
  assert sorted((t["item_id"], t["annotator_id"]) for t in hard)[:2] == [("i2", "w1"), ("i3", "w2")]
  easy = [t for t in plan.tasks if not t["is_hard"]]
  assert all(t["annotator_id"] not in ("w1",) for t in easy)


def test_min_skill_excludes_annotators():
  plan, _, _ = _plan(min_skill=0.65, load_cap=10)
  assert {t["annotator_id"] for t in plan.tasks} <= {"w0", "w1", "w2", "w3"}


def test_golden_items_rate_and_rotation():
  items = [f"i{n}" for n in range(200)]
  posteriors = _posteriors(np.full(200, 0.6))
  skill = {f"w{n}": 0.9 - 0.05 * n for n in range(4)}
  golden = {f"g{n}": "a" for n in range(10)}
  # w0 has seen g0..g4 (the most exposed ones): g5..g9 are the active half.
  seen = {"w0": {f"g{n}" for n in range(5)}, "w1": {"g0", "g1"}}
  config = feedback.PlanConfig(budget=1e6, guideline_version="v1", golden_rate=0.1,
                               golden_active_share=0.5, hard_threshold=2.0, load_cap=50)
  plan = feedback.plan_tasks(config, item_ids=items, posteriors=posteriors,
                             num_annotations=np.full(200, 2), annotator_skill=skill,
                             golden=golden, golden_seen=seen)
  by_annotator = collections.defaultdict(list)
  for task in plan.tasks:
    by_annotator[task["annotator_id"]].append(task)
  for annotator, queue in by_annotator.items():
    golden_tasks = [t for t in queue if t["kind"] == "golden"]
    regular = len(queue) - len(golden_tasks)
    assert len(golden_tasks) == round(0.1 * round(regular / 0.9))
    # Only active (least exposed) golden items, none the annotator has seen before.
    assert {t["item_id"] for t in golden_tasks} <= {f"g{n}" for n in range(5, 10)}
    assert not {t["item_id"] for t in golden_tasks} & seen.get(annotator, set())
    assert all(t["golden_answer"] == "a" and t["price"] == 1.0 for t in golden_tasks)
    assert [t["queue_position"] for t in queue] == list(range(len(queue)))
  assert plan.spent == pytest.approx(sum(t["price"] for t in plan.tasks))


def test_label_studio_round_trip(tmp_path):
  plan, _, _ = _plan()
  path = tmp_path / "import.json"
  plan_lib.write_label_studio_tasks(path, plan)
  tasks = json.loads(path.read_text())
  assert all(set(t["data"]) <= {"item_id", "prompt", "response_a", "response_b",
                                "guideline_version"} for t in tasks)
  assert all("price" in t["meta"] and "annotator_id" in t["meta"] for t in tasks)
  # What Label Studio exports after labelling: ids, annotations with results.
  export = []
  for n, task in enumerate(tasks):
    annotations = [{"id": 1, "completed_by": {"id": 7, "email": "ann@x.org"},
                    "result": [{"type": "choices", "value": {"choices": ["B" if n % 2 else "A"]}}],
                    "created_at": "2026-01-02T03:04:05Z", "lead_time": 12.5}]
    if n == 0:
      annotations.append({"id": 2, "completed_by": 8, "was_cancelled": True, "result": []})
      annotations.append({"id": 3, "completed_by": 9,
                          "result": [{"type": "pairwise", "value": {"selected": "right"}}]})
      annotations.append({"id": 4, "completed_by": 9, "result": [{"value": {"choices": ["?"]}}]})
    export.append({"id": 100 + n, "data": task["data"], "meta": task["meta"],
                   "annotations": annotations})
  export.append("not a task")
  (tmp_path / "export.json").write_text(json.dumps(export))
  records, rejects = feedback.read_label_studio_export(tmp_path / "export.json")
  # Every annotation read is a record or a reject; a task that is not an object is one reject.
  assert len(records) == len(tasks) + 1 and len(rejects) == 3
  assert [(r.number, r.field, r.code) for r in rejects] == [
      (1, "was_cancelled", "cancelled"), (1, "result", "bad_label"), (len(tasks) + 1, "data", "not_an_object")]
  # The feedback layer's rejects layout, the raw text being what was rejected.
  ingest.write_rejects(tmp_path / "rejects.jsonl", rejects, layout="line")
  written = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
  assert written[0] == {"file": str(tmp_path / "export.json"), "line": 1, "field": "was_cancelled",
                        "reason": "the annotator skipped the task",
                        "raw": json.dumps(export[0]["annotations"][1])}
  assert [json.loads(w["raw"]) for w in written] == [export[0]["annotations"][1], export[0]["annotations"][3],
                                                      "not a task"]
  assert records[0]["choice"] == "a" and records[1]["choice"] == "b"  # task 0: A, then pairwise right
  assert records[0]["annotator_id"] == "ann@x.org" and records[0]["response_ms"] == 12500.0
  assert all(r["guideline_version"] == "v3" for r in records)
  jsonl = tmp_path / "records.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
  report = feedback.read_annotations(jsonl, format="jsonl", duplicate_policy="keep_all")
  assert report.num_rejected == 0 and report.num_accepted == len(records)


def test_run_writes_the_files(tmp_path):
  (tmp_path / "labels.csv").write_text(
      "item,label,confidence,num_annotations,p_a,p_b\n"
      "x1,a,0.9,3,0.9,0.1\nx2,a,0.6,3,0.6,0.4\nx3,b,0.55,1,0.45,0.55\n")
  (tmp_path / "annotators.csv").write_text("annotator,reliability\nu1,0.9\nu2,0.8\nu3,0.5\n")
  records = [{"item_id": "x2", "annotator_id": "u1", "choice": "a", "guideline_version": "v1"},
             {"item_id": "x3", "annotator_id": "u2", "choice": "b", "guideline_version": "v1"},
             {"item_id": "g1", "annotator_id": "u3", "choice": "a", "is_golden": True,
              "golden_answer": "a"}]
  (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  config = cli.load_config_file("configs/plan_tasks.py")
  config.labels, config.annotators = str(tmp_path / "labels.csv"), str(tmp_path / "annotators.csv")
  config.annotations, config.output_dir = str(tmp_path / "history.jsonl"), str(tmp_path / "out")
  config.budget, config.guideline_version = 100.0, "v2"
  summary = plan_lib.run(config)
  tasks = [json.loads(line) for line in (tmp_path / "out/tasks.jsonl").read_text().splitlines()]
  assert summary["num_tasks"] == len(tasks) > 0
  assert {t["item_id"] for t in tasks if t["kind"] == "annotate"} == {"x2", "x3"}
  assert not any(t["item_id"] == "x2" and t["annotator_id"] == "u1" for t in tasks)
  assert any(t["kind"] == "golden" and t["item_id"] == "g1" for t in tasks)
  assert json.loads((tmp_path / "out/tasks_label_studio.json").read_text())


def test_run_reads_a_label_studio_export_and_writes_its_rejects(tmp_path):
  (tmp_path / "labels.csv").write_text("item,label,confidence,num_annotations,p_a,p_b\n"
                                       "x1,a,0.6,1,0.6,0.4\n")
  (tmp_path / "annotators.csv").write_text("annotator,reliability\nu1,0.9\nu2,0.8\n")
  skipped = {"id": 2, "completed_by": "u2", "was_cancelled": True, "result": []}
  export = [{"id": 1, "data": {"item_id": "x1", "guideline_version": "v1"}, "annotations": [
      {"id": 1, "completed_by": "u1", "result": [{"type": "choices", "value": {"choices": ["A"]}}]}, skipped]}]
  (tmp_path / "export.json").write_text(json.dumps(export, indent=2))
  config = cli.load_config_file("configs/plan_tasks.py")
  config.labels, config.annotators = str(tmp_path / "labels.csv"), str(tmp_path / "annotators.csv")
  config.annotations, config.annotations_format = str(tmp_path / "export.json"), "label_studio"
  config.output_dir, config.budget, config.guideline_version = str(tmp_path / "out"), 10.0, "v2"
  plan_lib.run(config)
  converted = (tmp_path / "out/annotations_from_label_studio.jsonl").read_text().splitlines()
  assert [json.loads(line)["annotator_id"] for line in converted] == ["u1"]
  rejects = (tmp_path / "out/label_studio_rejects.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in rejects] == [
      {"file": str(tmp_path / "export.json"), "line": 1, "field": "was_cancelled",
       "reason": "the annotator skipped the task", "raw": json.dumps(skipped)}]


def test_input_tables_through_the_ingest_module(tmp_path):
  # A spreadsheet's byte-order mark no longer hides the first column; a bad row is named.
  (tmp_path / "annotators.csv").write_bytes(b"\xef\xbb\xbfannotator,reliability\nu1,0.9\nu2,\n")
  skill = plan_lib.read_annotators_csv(tmp_path / "annotators.csv", "reliability")
  assert skill["u1"] == 0.9 and math.isnan(skill["u2"]) and len(skill) == 2
  (tmp_path / "labels.csv").write_text("item,p_a,p_b\nx1,0.9,0.1\nx2,0.6,0.4,0.0\n")
  with pytest.raises(ValueError, match="labels.csv:3: expected 3 columns \\(item,p_a,p_b\\) as in the header, got 4"):
    plan_lib.read_labels_csv(tmp_path / "labels.csv")


def test_guideline_breakdown_by_hand():
  enc = feedback.EncodedAnnotations(
      items=np.asarray([0, 0, 0, 1, 1, 0, 0], np.int32),
      annotators=np.asarray([0, 1, 2, 0, 1, 3, 4], np.int32),
      labels=np.asarray([0, 0, 1, 1, 1, 0, 0], np.int32),
      item_ids=("p", "q"), annotator_ids=tuple("abcde"), class_names=("a", "b"),
      annotation_ids=tuple(str(n) for n in range(7)),
      is_golden=np.asarray([0, 0, 0, 1, 1, 0, 0], bool),
      golden_labels=np.asarray([-1, -1, -1, 1, 0, -1, -1], np.int32),
      guideline_versions=("v1", "v1", "v1", "v1", "v1", "v2", "v2"))
  rows = {r["guideline_version"]: r for r in
          feedback.guideline_breakdown(enc, np.asarray([0, 1]), truth={0: 0, 1: 0})}
  # v1: item p answers (0, 0, 1): 2 agreeing ordered pairs of 6; item q (1, 1): 2 of 2.
  assert rows["v1"]["percent_agreement"] == pytest.approx(4 / 8)
  assert rows["v1"]["golden_accuracy"] == pytest.approx(0.5)
  assert rows["v1"]["agreement_with_label"] == pytest.approx(4 / 5)
  assert rows["v1"]["accuracy"] == pytest.approx(0.5)  # p right, q wrong
  assert rows["v2"]["percent_agreement"] == 1.0 and rows["v2"]["accuracy"] == 1.0
  assert rows["v2"]["num_annotations"] == 2 and rows["v2"]["num_annotators"] == 2


def test_report_breaks_down_by_guideline_version(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from rlhf_jax.feedback import pipeline  # pylint: disable=g-import-not-at-top
  sim = feedback.simulate_annotations(jax.random.key(1), feedback.SimulationConfig(
      num_items=150, num_annotators=12, annotations_per_item=3))
  records = feedback.to_records(sim, with_text=False)
  for n, record in enumerate(records):
    record["guideline_version"] = "v1" if n % 2 else "v2"
  path = tmp_path / "prefs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  config = cli.load_config_file("configs/aggregate.py")
  config.input, config.format, config.output_dir = str(path), "jsonl", str(tmp_path / "out")
  config.report.plots = False
  config.drift.num_permutations = 99  # the drift test is not under test here
  pipeline.run(config, progress=False)
  summary = json.loads((tmp_path / "out/summary.json").read_text())
  rows = {r["guideline_version"]: r for r in summary["by_guideline"]}
  assert set(rows) == {"v1", "v2"}
  assert rows["v1"]["num_annotations"] + rows["v2"]["num_annotations"] == len(records)
  # Golden accuracy of v1 by hand from the records.
  v1_golden = [r for n, r in enumerate(records) if n % 2 and r["is_golden"]]
  expected = np.mean([r["choice"] == r["golden_answer"] for r in v1_golden])
  assert rows["v1"]["golden_accuracy"] == pytest.approx(expected)
  report = (tmp_path / "out/report.md").read_text()
  assert "## By guideline version" in report and "| v1 | " in report and "| v2 | " in report
