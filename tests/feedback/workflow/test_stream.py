"""Streaming aggregation: batches equal all-at-once, bad rows, duplicates, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax import feedback

REPO = Path(__file__).resolve().parents[3]


def _records(num_items=1200, num_annotators=30, seed=0):
  # Good, position-biased and spamming annotators: a likelihood with one basin, where
  # warm- and cold-started EM reach the same fixed point (adversaries on little data
  # create label-swapped local optima; `converge(cold=True)` is the exact batch fit).
  config = feedback.SimulationConfig(
      num_items=num_items, num_annotators=num_annotators, annotations_per_item=3,
      good_share=0.8, position_biased_share=0.1, spammer_share=0.1, length_biased_share=0.0,
      adversary_share=0.0, fast_share=0.0, drifting_share=0.0)
  records = feedback.to_records(feedback.simulate_annotations(jax.random.key(seed), config),
                                with_text=False)
  order = np.argsort([r["timestamp"] for r in records], kind="stable")
  return [records[i] for i in order]


def _write(path: Path, records) -> Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return path


def _all_at_once(tmp_path, records, method, **kwargs):
  enc = feedback.read_annotations(_write(tmp_path / "all.jsonl", records),
                                  format="jsonl").annotations
  fn = getattr(feedback, method)
  result = fn(enc.items, enc.annotators, enc.labels, num_classes=3, **kwargs)
  return enc.item_ids, np.asarray(result.posteriors), np.asarray(result.labels)


def _by_item(aggregator, item_ids):
  current = aggregator.labels()
  index = {item: i for i, item in enumerate(current["item_ids"])}
  rows = [index[item] for item in item_ids]
  return current["posteriors"][rows], current["label"][rows]


def test_dawid_skene_stream_equals_all_at_once(tmp_path):
  records = _records()
  config = feedback.StreamConfig(format="jsonl", tol=1e-6, num_iters=500)
  aggregator = feedback.StreamingAggregator(tmp_path / "out", config)
  results = [aggregator.feed(records[b:b + 400]) for b in range(0, len(records), 400)]
  assert [r.index for r in results] == list(range(9))
  # Local (incremental) steps ran between the full fits.
  assert any(b["num_iters"] == config.local_iters for b in aggregator.batches)
  item_ids, posteriors, labels = _all_at_once(tmp_path, records, "dawid_skene", tol=1e-6,
                                              num_iters=500)
  # Incremental and warm-started fits: EM may end in another local optimum on some items.
  aggregator.converge(warm=True)
  _, warm_labels = _by_item(aggregator, item_ids)
  assert np.mean(warm_labels == labels) >= 0.98
  # converge(): EM from the vote shares on the accumulated state equals the batch fit, so
  # every annotation is in the state exactly once under the right item and annotator.
  aggregator.converge()
  stream_posteriors, stream_labels = _by_item(aggregator, item_ids)
  np.testing.assert_allclose(stream_posteriors, posteriors, atol=1e-5)
  np.testing.assert_array_equal(stream_labels, labels)
  assert aggregator.num_annotations == len(records)
  # The confusion matrices are the M-step of the same posteriors.
  assert np.allclose(aggregator.confusion.sum(-1), 1.0)


def test_one_coin_stream_equals_all_at_once(tmp_path):
  records = _records(num_items=600, num_annotators=20, seed=1)
  config = feedback.StreamConfig(format="jsonl", method="one_coin_dawid_skene", tol=1e-6,
                                 num_iters=300)
  aggregator = feedback.StreamingAggregator(tmp_path / "out", config)
  for b in range(0, len(records), 300):
    aggregator.feed(records[b:b + 300])
  item_ids, posteriors, labels = _all_at_once(tmp_path, records, "one_coin_dawid_skene",
                                              tol=1e-6, num_iters=300)
  aggregator.converge(warm=True)
  _, warm_labels = _by_item(aggregator, item_ids)
  assert np.mean(warm_labels == labels) >= 0.98
  aggregator.converge()
  stream_posteriors, stream_labels = _by_item(aggregator, item_ids)
  np.testing.assert_allclose(stream_posteriors, posteriors, atol=1e-5)
  np.testing.assert_array_equal(stream_labels, labels)
  # One accuracy per annotator: every confusion row has one value off the diagonal.
  confusion = aggregator.confusion
  off = confusion[:, ~np.eye(3, dtype=bool)]
  np.testing.assert_allclose(off, off[:, :1] * np.ones_like(off), rtol=1e-6)


def test_majority_vote_stream_is_exact_and_writes_changes(tmp_path):
  records = _records(num_items=300, num_annotators=12)
  aggregator = feedback.StreamingAggregator(
      tmp_path / "out", feedback.StreamConfig(format="jsonl", method="majority_vote"))
  for b in range(0, len(records), 250):
    result = aggregator.feed(records[b:b + 250])
  item_ids, _, _ = _all_at_once(tmp_path, records, "majority_vote")
  enc = feedback.read_annotations(tmp_path / "all.jsonl", format="jsonl").annotations
  votes = np.zeros((enc.num_items, 3))
  np.add.at(votes, (enc.items, enc.labels), 1)
  shares = votes / votes.sum(-1, keepdims=True)
  stream_posteriors, stream_labels = _by_item(aggregator, item_ids)
  np.testing.assert_allclose(stream_posteriors, shares, atol=1e-6)
  np.testing.assert_array_equal(stream_labels, np.argmax(votes, -1))
  # The last batch's changes file lists exactly the items whose share moved (or are new).
  with open(result.changes_path, encoding="utf-8") as handle:
    changed = [line.split(",")[0] for line in handle.read().splitlines()[1:]]
  assert len(changed) == result.num_changed > 0
  last_items = {r["item_id"] for r in records[750:]}
  assert set(changed) <= last_items


def test_bad_rows_rejected_alone_and_cross_batch_repeats(tmp_path):
  records = _records(num_items=60, num_annotators=8)
  aggregator = feedback.StreamingAggregator(tmp_path / "out",
                                            feedback.StreamConfig(format="jsonl"))
  first = aggregator.feed(records[:90])
  bad = [dict(r) for r in records[90:120]]
  bad[3]["choice"] = "maybe"  # unknown choice
  del bad[7]["annotator_id"]  # missing required field
  bad.append(dict(records[5]))  # an annotation already aggregated in batch 0
  repeat = dict(records[6])
  repeat["annotation_id"] = "new-id"  # same annotator and item as an earlier answer
  bad.append(repeat)
  result = aggregator.feed(bad)
  assert first.num_rejected == 0
  assert (result.num_read, result.num_accepted, result.num_rejected) == (32, 28, 4)
  rejects = [json.loads(line) for line in
             Path(result.rejects_path).read_text(encoding="utf-8").splitlines()]
  fields = sorted(str(r["field"]) for r in rejects)
  assert fields == ["annotation_id", "annotator_id", "choice", "item_id,annotator_id"]
  assert all(r["reason"] for r in rejects)
  assert aggregator.num_annotations == 90 + 28


def test_duplicate_batch_is_skipped(tmp_path):
  records = _records(num_items=60, num_annotators=8)
  batch = _write(tmp_path / "b1.jsonl", records[:100])
  copy = _write(tmp_path / "b1-copy.jsonl", records[:100])
  aggregator = feedback.StreamingAggregator(tmp_path / "out",
                                            feedback.StreamConfig(format="jsonl"))
  aggregator.feed(batch)
  before = aggregator.labels()["posteriors"].copy()
  result = aggregator.feed(copy)
  assert result.skipped and result.duplicate_of == "b1.jsonl"
  assert aggregator.num_annotations == 100 and aggregator.num_batches == 1
  np.testing.assert_array_equal(aggregator.labels()["posteriors"], before)
  # Reopened from its checkpoint, the duplicate is still known.
  reopened = feedback.StreamingAggregator(tmp_path / "out", feedback.StreamConfig(format="jsonl"))
  assert reopened.feed(copy).skipped
  with pytest.raises(ValueError, match="other settings"):
    feedback.StreamingAggregator(tmp_path / "out",
                                 feedback.StreamConfig(format="jsonl", method="majority_vote"))


def _state(out: Path) -> dict:
  path = out / "checkpoint" / "state.json"
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (FileNotFoundError, json.JSONDecodeError):
    return {}


def test_follow_killed_and_restarted_loses_and_double_counts_nothing(tmp_path):
  records = _records(num_items=400, num_annotators=20)
  inbox, out = tmp_path / "inbox", tmp_path / "out"
  inbox.mkdir()
  batches = [records[b:b + 100] for b in range(0, len(records), 100)]

  def deliver(indices):
    for i in indices:
      path = _write(inbox / f".{i:03d}.jsonl.part", batches[i])  # hidden while written
      os.utime(path, ns=(i * 10**9, i * 10**9))  # oldest first = name order
      path.rename(inbox / f"{i:03d}.jsonl")

  deliver(range(6))
  command = [sys.executable, str(REPO / "scripts/aggregate.py"),
             "--config=" + str(REPO / "configs/aggregate.py"), "--config.format=jsonl",
             f"--config.output_dir={out}", f"--follow={inbox}", "--poll_seconds=0.2"]
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  while _state(out).get("num_batches", 0) < 3 and time.time() < deadline:
    assert process.poll() is None, process.communicate()
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at = _state(out)["num_batches"]
  assert 3 <= killed_at <= 6
  deliver(range(6, len(batches)))  # the rest arrives while the job is down
  # Restarted: resumes, reads the rest, and exits once idle.
  done = subprocess.run(command + ["--idle_exit_seconds=0.5"], env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  state = _state(out)
  assert state["num_batches"] == len(batches)
  assert [b["name"] for b in state["batches"]] == [f"{i:03d}.jsonl" for i in range(len(batches))]
  assert state["num_annotations"] == len(records)
  # Same labels as one uninterrupted Python run over the same files.
  reference = feedback.StreamingAggregator(tmp_path / "ref", feedback.StreamConfig(
      format="jsonl", num_iters=100, tol=1e-5))
  for i in range(len(batches)):
    reference.feed(inbox / f"{i:03d}.jsonl")
  reference.converge()
  import csv  # pylint: disable=g-import-not-at-top
  with open(out / "labels.csv", encoding="utf-8") as handle:
    written = {row["item"]: row for row in csv.DictReader(handle)}
  current = reference.labels()
  assert len(written) == reference.num_items
  for item, name, confidence in zip(current["item_ids"], current["label_name"],
                                    current["confidence"]):
    assert written[item]["label"] == name
    assert abs(float(written[item]["confidence"]) - confidence) < 1e-4


def test_training_file_from_the_stream_keeps_every_item(tmp_path):
  config = feedback.SimulationConfig(num_items=120, num_annotators=10, annotations_per_item=3)
  records = feedback.to_records(feedback.simulate_annotations(jax.random.key(5), config))
  records[0]["response_b"] = records[0]["response_a"]  # identical responses: rejected
  for r in records:
    if r["item_id"] == records[0]["item_id"]:
      r["response_a"] = r["response_b"] = records[0]["response_a"]
  stream_config = feedback.StreamConfig(format="jsonl", review_threshold=0.8)
  aggregator = feedback.StreamingAggregator(tmp_path / "out", stream_config)
  for b in range(0, len(records), 120):
    aggregator.feed(records[b:b + 120])
  aggregator.converge()
  report = aggregator.write_training()
  assert report.num_trained + report.num_awaiting + report.num_rejected == aggregator.num_items
  assert report.num_rejected >= 1 and report.num_awaiting >= 1
  rows = [json.loads(line) for line in (tmp_path / "out/train.jsonl").read_text().splitlines()]
  waiting = [json.loads(line) for line in
             (tmp_path / "out/awaiting_review.jsonl").read_text().splitlines()]
  assert all(r["confidence"] >= 0.8 for r in rows)
  by_id = {r["annotation_id"]: r for r in records}
  for row in rows:  # lineage: the annotations behind each row are that item's
    assert {by_id[a]["item_id"] for a in row["annotation_ids"]} == {row["item"]}
    assert row["prompt"] == by_id[row["annotation_ids"][0]]["prompt"]
  assert len(rows) + len(waiting) + report.num_rejected == 120
  # Reopened from the checkpoint (texts and lineage restored): the same file.
  first = (tmp_path / "out/train.jsonl").read_text()
  reopened = feedback.StreamingAggregator(tmp_path / "out", stream_config)
  reopened.write_training(tmp_path / "again")
  assert (tmp_path / "again/train.jsonl").read_text() == first
