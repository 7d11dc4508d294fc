"""The run directory (`rundir`): what a workdir is a run of, resume checks, metrics that
hold each step once, JSON without NaN. No training here (see test_train_loop.py)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from rlhf_jax.train import rundir


def _config(**overrides):
  config = {
      "seed": 0,
      "train": {"steps": 10, "log_every": 2},
      "optim": {"learning_rate": 1e-3, "b1": 0.9},
      "loss": {"name": "bradley_terry_soft"},
      "data": {"shared_length": 0},
  }
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _start(workdir: Path, config) -> None:
  """What a trainer leaves behind: config.json, run.json with inputs, a checkpoint."""
  rundir.write_config(workdir, config)
  rundir.write_run_info(workdir, inputs={"data.train": "sha-1"})
  (workdir / "checkpoints" / "4").mkdir(parents=True)
  (workdir / "metrics.jsonl").write_text('{"step": 2, "split": "train", "loss": 1.0}\n')


# ---------------------------------------------------------------------------------------
# prepare


def test_prepare_creates_the_directory_and_refuses_a_file(tmp_path):
  assert rundir.prepare(tmp_path / "a" / "b") == (tmp_path / "a" / "b").absolute()
  assert (tmp_path / "a" / "b").is_dir()
  path = tmp_path / "file.txt"
  path.write_text("not a directory")
  with pytest.raises(rundir.RunDirError, match=f"workdir {path} is a file, not a directory"):
    rundir.prepare(path)
  with pytest.raises(rundir.RunDirError, match="a parent folder is a file"):
    rundir.prepare(path / "run")
  assert path.read_text() == "not a directory"


# ---------------------------------------------------------------------------------------
# config_differences / check_resume


def test_config_differences_lists_old_and_new_values():
  stored = _config()
  refused, allowed = rundir.config_differences(
      stored, _config(**{"loss.name": "bradley_terry", "optim.learning_rate": 0.5, "train.steps": 20}),
      may_change=("train.steps",))
  assert refused == {"loss.name": ("bradley_terry_soft", "bradley_terry"), "optim.learning_rate": (1e-3, 0.5)}
  assert allowed == {"train.steps": (10, 20)}
  # Equal values of int and float type are equal (JSON keeps no distinction); a bool is not an int.
  assert rundir.config_differences({"a": 1, "b": True}, {"a": 1.0, "b": True}) == ({}, {})
  assert rundir.config_differences({"a": 1}, {"a": True})[0] == {"a": (1, True)}
  # A field one side lacks (another version of the code) differs; "section.*" covers a section.
  refused, allowed = rundir.config_differences(
      {"train": {"steps": 1}}, {"train": {"steps": 1, "new_field": 0.0}, "mesh": {"data": 2}},
      may_change=("mesh.*",))
  assert refused == {"train.new_field": ("(absent)", 0.0)} and allowed == {"mesh.data": ("(absent)", 2)}
  # Ignored fields are not compared.
  assert rundir.config_differences(stored, _config(**{"data.shared_length": 96}), ignore=("data.shared_length",)) \
      == ({}, {})


def test_a_new_directory_is_new(tmp_path):
  resume = rundir.check_resume(tmp_path, _config())
  assert resume.new and resume.changed == {} and resume.superseded is None


def test_same_config_resumes_and_may_change_fields_are_reported(tmp_path):
  _start(tmp_path, _config())
  resume = rundir.check_resume(tmp_path, _config(), inputs={"data.train": "sha-1"})
  assert not resume.new and resume.stored == json.loads((tmp_path / "config.json").read_text())
  resume = rundir.check_resume(tmp_path, _config(**{"train.steps": 30, "train.log_every": 5}),
                               may_change=("train.steps", "train.log_every"))
  assert resume.changed == {"train.steps": (10, 30), "train.log_every": (2, 5)}


def test_write_start_records_the_fields_a_resume_changed(tmp_path):
  rundir.write_start(tmp_path, _config(), rundir.check_resume(tmp_path, _config()), inputs={"data.train": "sha-1"})
  first = json.loads((tmp_path / "run.json").read_text())
  assert first["inputs"] == {"data.train": "sha-1"} and "changed" not in first and "resumed" not in first
  longer = _config(**{"train.steps": 30})
  resume = rundir.check_resume(tmp_path, longer, may_change=("train.steps",), inputs={"data.train": "sha-1"})
  rundir.write_start(tmp_path, longer, resume, inputs={"data.train": "sha-1"})
  assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 30
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["resumed"][0]["changed"] == {"train.steps": [10, 30]} and "changed" not in run


def test_another_config_is_refused_in_one_line_listing_the_fields(tmp_path):
  _start(tmp_path, _config())
  before = (tmp_path / "config.json").read_text()
  with pytest.raises(rundir.RunDirError) as error:
    rundir.check_resume(tmp_path, _config(**{"loss.name": "bradley_terry", "optim.learning_rate": 0.5,
                                             "train.steps": 30}), may_change=("train.steps",))
  message = str(error.value)
  assert "\n" not in message
  assert f"workdir {tmp_path} holds a run with other settings" in message
  assert 'loss.name "bradley_terry_soft" -> "bradley_terry", optim.learning_rate 0.001 -> 0.5.' in message
  assert "train.steps" not in message  # allowed to change
  assert "--force_new" in message
  assert (tmp_path / "config.json").read_text() == before  # the refusal changed nothing


def test_changed_input_files_are_refused(tmp_path):
  _start(tmp_path, _config())
  with pytest.raises(rundir.RunDirError, match=r'data.train \(input\) "sha-1" -> "sha-2"'):
    rundir.check_resume(tmp_path, _config(), inputs={"data.train": "sha-2"})
  with pytest.raises(rundir.RunDirError, match=r'data.eval \(input\) \(absent\) -> "sha-3"'):
    rundir.check_resume(tmp_path, _config(), inputs={"data.train": "sha-1", "data.eval": "sha-3"})


def test_checkpoints_without_config_are_refused(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  assert rundir.check_resume(tmp_path, _config()).new  # an empty folder (a run that failed early)
  (tmp_path / "checkpoints" / "100").mkdir()
  with pytest.raises(rundir.RunDirError, match="holds checkpoints but no config.json"):
    rundir.check_resume(tmp_path, _config())


def test_force_new_moves_the_run_aside_and_keeps_other_files(tmp_path):
  _start(tmp_path, _config())
  (tmp_path / "my_data.jsonl").write_text("user's file\n")
  resume = rundir.check_resume(tmp_path, _config(**{"loss.name": "other"}), force_new=True)
  assert resume.new and resume.superseded.parent == tmp_path / "superseded"
  assert sorted(p.name for p in resume.superseded.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl",
                                                                  "run.json"]
  assert (resume.superseded / "checkpoints" / "4").is_dir()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["my_data.jsonl", "superseded"]
  # A second force_new gets its own folder.
  _start(tmp_path, _config())
  again = rundir.check_resume(tmp_path, _config(), force_new=True)
  assert again.superseded != resume.superseded and (again.superseded / "config.json").is_file()


# ---------------------------------------------------------------------------------------
# JSON without NaN


def test_finite_and_dumps_never_write_bare_nan():
  payload = {"a": float("nan"), "b": [np.float32(np.inf), -math.inf, 1.5], "c": np.array([np.nan, 2.0]),
             "d": {"e": np.float64(3.0)}, "f": None}
  text = rundir.dumps(payload, sort_keys=True)
  assert json.loads(text) == {"a": "nan", "b": ["inf", "-inf", 1.5], "c": ["nan", 2.0], "d": {"e": 3.0},
                              "f": None}
  for token in ("NaN", "Infinity"):
    assert token not in text


# ---------------------------------------------------------------------------------------
# Metrics: each step once after a resume.


def _tfrecords(path: Path):
  """The records of a TFRecord file (length, masked CRC, data, masked CRC), read here."""
  data = path.read_bytes()
  offset = 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    yield data[offset + 12:offset + 12 + length]
    offset += 12 + length + 4


def _tensorboard_scalars(directory: Path, tag: str) -> list[tuple[int, float]]:
  """The (step, value) points of `tag` TensorBoard shows: event files in name order, and
  a SessionLog.START at step s hides the events of steps >= s read before it."""
  shown: list[tuple[int, float]] = []
  for path in sorted(directory.glob("events.out.tfevents.*")):
    for record in _tfrecords(path):
      event = event_pb2.Event.FromString(record)
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        shown = [(s, v) for s, v in shown if s < event.step]
      for value in event.summary.value:
        if value.tag == tag:
          shown.append((event.step, value.simple_value))
  return shown


def test_metric_writer_keeps_each_step_once_after_a_resume(tmp_path):
  first = rundir.MetricWriter(tmp_path, resume_from=0)
  for step in range(1, 8):
    first.write(step, {"loss": float(step)})
  first.write(4, {"accuracy": 0.5}, split="eval")
  first.close()
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 8, "split": "tra')  # a kill in the middle of a line
  # The run resumes from its checkpoint at step 4: steps 5-8 were written after it.
  second = rundir.MetricWriter(tmp_path, resume_from=4)
  assert [(r["step"], r["split"]) for r in second.kept] == [(1, "train"), (2, "train"), (3, "train"),
                                                           (4, "train"), (4, "eval")]
  for step in range(5, 10):
    second.write(step, {"loss": 10.0 * step})
  second.close()
  records = rundir.read_metrics(tmp_path, "train")
  assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0),
                                                       (6, 60.0), (7, 70.0), (8, 80.0), (9, 90.0)]
  assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
  assert _tensorboard_scalars(tmp_path / "tensorboard", "train/loss") == [
      (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0), (6, 60.0), (7, 70.0), (8, 80.0), (9, 90.0)]


def test_metric_writer_writes_non_finite_values_as_strings(tmp_path):
  writer = rundir.MetricWriter(tmp_path, tensorboard=False)
  writer.write(1, {"loss": float("nan"), "grad_norm": np.float32(np.inf)})
  writer.close()
  line = (tmp_path / "metrics.jsonl").read_text()
  assert json.loads(line) == {"step": 1, "split": "train", "loss": "nan", "grad_norm": "inf"}
  (record,) = rundir.read_metrics(tmp_path)
  assert math.isnan(record["loss"]) and record["grad_norm"] == math.inf
