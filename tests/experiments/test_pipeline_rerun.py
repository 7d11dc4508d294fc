"""Rerunning the `make run` job: a workdir knows what it is, bad settings are refused
before any work, and no stage reports a result computed under other settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import pipeline
from rlhf_jax import cli
from rlhf_jax.train import rundir

REPO = Path(__file__).resolve().parents[2]
# A small job: 60 comparisons, 16 held-out pairs, no plots, 4 reward-model steps, no DPO.
SMALL = {"task.num_pairs": 60, "task.num_eval": 16, "aggregate.report.plots": False, "reward_model.train.steps": 4,
         "reward_model.train.log_every": 2, "reward_model.eval.every": 0, "reward_model.optim.warmup_steps": 1,
         "reward_model.train.progress_bar": False, "dpo.train.steps": 0}


def _config(**overrides):
  config = cli.load_config_file(REPO / "configs" / "pipeline.py")
  for path, value in {**SMALL, **overrides}.items():
    node = config
    *parents, leaf = path.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _flags(**overrides):
  """The same job as command-line overrides of scripts/run.py."""
  return [f"--config.{path}={value}" for path, value in {**SMALL, **overrides}.items()]


def _run_script(workdir, *flags):
  return subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), f"--workdir={workdir}", *flags],
                        cwd=REPO, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _one_line_error(result, program="run.py"):
  assert "Traceback" not in result.stderr, result.stderr
  return result.stderr.strip().splitlines()[-1].removeprefix(f"{program}: error: ")


# ---------------------------------------------------------------------------------------
# Settings checked before any work.


@pytest.mark.parametrize("overrides, message", [
    ({"annotators.spammer_share": 0.3},
     "config.annotators.*_share must sum to 1, got 1.2 (good_share 0.55 + position_biased_share 0.1 + "
     "length_biased_share 0.05 + spammer_share 0.3 + adversary_share 0.1 + fast_share 0.05 + drifting_share "
     "0.05); change one by -0.2, e.g. --config.annotators.good_share=0.35."),
    ({"annotators.spammer_share": -0.1, "annotators.good_share": 0.75},
     "config.annotators.spammer_share must be a share in [0, 1], got -0.1."),
    ({"reward_model.train.steps": -1},
     "config.reward_model.train.steps must be an integer >= 0 (0 skips the stage), got -1."),
    ({"task.num_pairs": 0}, "config.task.num_pairs must be an integer >= 1, got 0."),
    ({"annotators.annotations_per_item": 50}, "config.annotators.annotations_per_item: expected at most "
     "num_annotators=40 (distinct annotators), got 50."),
    ({"aggregate.routing.confidence_threshold": 2.0},
     "config.aggregate.routing.confidence_threshold = 2.0 is not valid: expected a number in [0.0, 1.0]."),
    ({"aggregate.method": "majority_votes"}, "config.aggregate.method = 'majority_votes' is not valid"),
    ({"reward_model.optim.warmup_steps": 10},
     "config.reward_model.optim.warmup_steps must lie in [0, train.steps) = [0, 4), got 10."),
    ({"reward_model.train.batch_size": 0}, "config.reward_model.train.batch_size must be a positive int, got 0."),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, overrides, message):
  with pytest.raises(ValueError) as error:
    pipeline.run(_config(**overrides), tmp_path / "run")
  assert str(error.value).startswith(message)
  assert not (tmp_path / "run").exists()


def test_shares_that_sum_to_one_pass_and_a_skipped_stage_is_not_checked():
  pipeline.check_config(_config(**{"annotators.spammer_share": 0.3, "annotators.good_share": 0.35}))
  # steps=0 skips DPO: its other fields are not used, so they are not checked.
  pipeline.check_config(_config(**{"dpo.train.steps": 0, "dpo.optim.warmup_steps": 99}))


def test_run_script_reports_setting_and_workdir_mistakes_in_one_line(tmp_path):
  shares = _run_script(tmp_path / "run", "--config.annotators.spammer_share=0.3")
  assert shares.returncode == 2
  assert _one_line_error(shares).startswith("config.annotators.*_share must sum to 1, got 1.2 (")
  steps = _run_script(tmp_path / "run", "--config.reward_model.train.steps=-1")
  assert steps.returncode == 2
  assert _one_line_error(steps) == ("config.reward_model.train.steps must be an integer >= 0 (0 skips the "
                                    "stage), got -1.")
  assert not (tmp_path / "run").exists()  # refused before any work
  path = tmp_path / "a_file"
  path.write_text("x")
  not_a_directory = _run_script(path)
  assert not_a_directory.returncode == 2
  assert _one_line_error(not_a_directory) == (f"workdir {path} is a file, not a directory; choose a directory "
                                              "(--workdir).")


# ---------------------------------------------------------------------------------------
# Reruns.


def test_another_config_is_refused_before_any_work_and_force_new_reruns(tmp_path):
  config = _config(**{"reward_model.train.steps": 0})  # simulation and aggregation only
  first = pipeline.run(config, tmp_path)
  assert first["reward_model_eval_accuracy"] is None and "majority_vote" in first["label_accuracy"]
  outputs = {name: (tmp_path / name).read_bytes() for name in ("config.json", "summary.json", "annotations.jsonl",
                                                               "feedback/labels.csv", "feedback/train.jsonl")}
  other = _config(**{"reward_model.train.steps": 0, "aggregate.method": "majority_vote", "seed": 3})
  with pytest.raises(rundir.RunDirError) as error:
    pipeline.run(other, tmp_path)
  assert f"workdir {tmp_path} holds a run with other settings: " \
         'aggregate.method "dawid_skene" -> "majority_vote", seed 0 -> 3.' in str(error.value)
  assert {name: (tmp_path / name).read_bytes() for name in outputs} == outputs  # nothing was touched

  second = pipeline.run(other, tmp_path, force_new=True)
  assert set(second["label_accuracy"]) == {"majority_vote"}
  assert json.loads((tmp_path / "summary.json").read_text()) == second
  (superseded,) = (tmp_path / "superseded").iterdir()
  assert {name: (superseded / name).read_bytes() for name in outputs} == outputs
  assert json.loads((tmp_path / "config.json").read_text())["aggregate"]["method"] == "majority_vote"


def test_a_stopped_stage_reports_no_result(tmp_path, monkeypatch):
  """A training stage stopped by SIGTERM (here: a trainer that says so) ends the job:
  no summary.json, not even the one an earlier start left."""
  calls = []

  def stopped_train(config, workdir, **kwargs):
    calls.append(Path(workdir).name)
    return {"step": 2, "preempted": True, "eval/accuracy": 0.25}  # an unfinished model's evaluation

  monkeypatch.setattr(pipeline.train_lib, "train", stopped_train)
  (tmp_path / "summary.json").write_text('{"reward_model_eval_accuracy": 0.99}\n')  # an earlier start's
  summary = pipeline.run(_config(**{"dpo.train.steps": 4, "dpo.optim.warmup_steps": 1}), tmp_path)
  assert calls == ["reward_model"]  # DPO did not start
  assert summary["stopped"] == {"stage": "reward_model", "step": 2}
  assert "reward_model_eval_accuracy" not in summary
  assert not (tmp_path / "summary.json").exists()
  assert pipeline.format_summary(summary).startswith("Stopped in stage reward_model at step 2 with a checkpoint")


@pytest.mark.slow
def test_rerun_with_another_reward_model_never_reports_the_old_one(tmp_path):
  """The issue's example: after a run, another reward-model loss and learning rate are
  refused (one line, fields old -> new), also another aggregation method (which used to
  end in a BatchIterator traceback); --force_new trains the new model from scratch and
  reports it under its own name."""
  first = _run_script(tmp_path, *_flags())
  assert first.returncode == 0, first.stderr
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["reward_model_loss"] == "bradley_terry_soft"
  assert "Reward model (loss bradley_terry_soft)" in first.stdout

  again = _run_script(tmp_path, *_flags())  # the same settings: resumed, the same numbers
  assert again.returncode == 0, again.stderr
  resumed = json.loads((tmp_path / "summary.json").read_text())
  assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in summary.items() if k != "seconds"}

  changed = {"reward_model.loss.name": "bradley_terry", "reward_model.optim.learning_rate": 0.5}
  refused = _run_script(tmp_path, *_flags(**changed))
  assert refused.returncode == 2
  assert _one_line_error(refused).startswith(
      f"workdir {tmp_path} holds a run with other settings: reward_model.loss.name \"bradley_terry_soft\" -> "
      "\"bradley_terry\", reward_model.optim.learning_rate 0.001 -> 0.5. ")
  method = _run_script(tmp_path, *_flags(**{"aggregate.method": "majority_vote"}))
  assert method.returncode == 2
  assert 'aggregate.method "dawid_skene" -> "majority_vote"' in _one_line_error(method)
  assert json.loads((tmp_path / "summary.json").read_text()) == resumed

  fresh = _run_script(tmp_path, *_flags(**changed), "--force_new")
  assert fresh.returncode == 0, fresh.stderr
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["reward_model_loss"] == "bradley_terry"
  assert "Reward model (loss bradley_terry)" in fresh.stdout
  stage = json.loads((tmp_path / "reward_model" / "config.json").read_text())
  assert (stage["loss"]["name"], stage["optim"]["learning_rate"]) == ("bradley_terry", 0.5)
  # Trained from step 0 in a fresh stage directory, every step logged once.
  assert [r["step"] for r in rundir.read_metrics(tmp_path / "reward_model", "train")] == [2, 4]
  (superseded,) = (tmp_path / "superseded").iterdir()
  assert json.loads((superseded / "reward_model" / "config.json").read_text())["loss"]["name"] == \
      "bradley_terry_soft"


def test_summary_json_holds_no_bare_nan(tmp_path, monkeypatch):
  def finished_train(config, workdir, **kwargs):
    return {"step": 4, "preempted": False, "eval/accuracy": 0.75, "eval/ece": float("nan")}

  monkeypatch.setattr(pipeline.train_lib, "train", finished_train)
  summary = pipeline.run(_config(), tmp_path)
  assert summary["reward_model_eval_accuracy"] == 0.75

  def refuse(token):
    raise ValueError(f"bare {token} in summary.json")
  stored = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
  assert stored["reward_model_eval_ece"] == "nan" and stored["reward_model_eval_accuracy"] == 0.75
  assert "ECE nan" in pipeline.format_summary(summary)
