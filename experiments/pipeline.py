"""The end-to-end job behind `make run`: human feedback -> labels -> reward model and DPO.

On a synthetic preference task whose truth is known, it runs every stage of the project
the way a researcher would on real data, and reports how much of the truth survives:

1. Task: prompts with two text responses; the preferred one follows a planted rule (it
   is polite: it holds words of `POLITE_WORDS`, the other holds words of `RUDE_WORDS`),
   amid filler words of random length.
2. Annotators: `feedback.simulate_annotations` draws a population (good, position- and
   length-biased, spammers, adversaries, fast, drifting annotators, golden items) that
   labels every comparison several times; the records are written as JSON Lines.
3. Aggregation: `feedback.pipeline.run` reads the records (validation, rejects),
   measures agreement and calibration, aggregates (Dawid-Skene by default) into labels
   with a confidence, routes low-confidence items to expert review, and writes
   `labels.csv`, `annotators.csv`, `report.md`. Its accuracy against the truth is
   compared with majority vote.
4. Data: the aggregation writes the resolved labels as a `feedback_labels` training
   file (`feedback/train.jsonl`: soft target P(a preferred), weight = confidence,
   lineage = annotation ids; `rlhf_jax.feedback.io.training`); items awaiting expert
   review are listed in `feedback/awaiting_review.jsonl`, not trained on.
5. Training: a tiny reward model with the confidence-weighted Bradley-Terry loss, and a
   tiny DPO policy, both evaluated on held-out pairs labelled by the truth.

Every stage writes into `workdir`; `summary.json` holds the numbers printed at the end.

Rerunning: the workdir knows what it is. `config.json` holds the config of the run in
it; a rerun with another config is refused before any work, with one line listing the
fields that differ (old -> new), except the fields in `MAY_CHANGE_ON_RESUME` (a training
stage's step count, cadences and layout: `rlhf_jax.train.MAY_CHANGE_ON_RESUME` under
`reward_model.` and `dpo.`). `force_new=True` (`scripts/run.py --force_new`) moves the
earlier run's files to `<workdir>/superseded/<time>/` and runs every stage afresh. With
the same config, simulation and aggregation run again (seconds; deterministic, so the
training files come out the same) and the training stages resume from their checkpoints,
a finished one reporting its recorded metrics; each stage also checks its own directory
(`rlhf_jax.train.train`), so a training file whose contents changed is refused too. No
stage ever reports a result computed under other settings, and `summary.json` is removed
at the start and written only when every stage has finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from rlhf_jax import feedback
from rlhf_jax import train as train_lib
from rlhf_jax.feedback.workflow import pipeline as feedback_pipeline
from rlhf_jax.train import rundir

__all__ = ["ConfigError", "MAY_CHANGE_ON_RESUME", "STAGES", "USER_ERRORS", "check_config", "format_summary",
           "make_task", "run", "simulate_feedback"]

# The training stages, each a `rlhf_jax.train.train` run in `<workdir>/<stage>`.
STAGES = ("reward_model", "dpo")
# What the job writes into its workdir (`force_new` moves exactly these aside).
ENTRIES = ("config.json", "summary.json", "annotations.jsonl", "feedback", "data", *STAGES)
# Fields that may differ from the stored config.json on a rerun: those of the trainer,
# in each training stage (the simulation and aggregation have none).
MAY_CHANGE_ON_RESUME = tuple(f"{stage}.{field}" for stage in STAGES for field in train_lib.MAY_CHANGE_ON_RESUME)
# The annotator types of `config.annotators`, whose shares must sum to 1.
SHARES = tuple(f"{name}_share" for name in feedback.ANNOTATOR_TYPES)


class ConfigError(ValueError):
  """A pipeline config value the job cannot use; the message names the field."""


# The mistakes a user can make (config, run directory, input files), reported by
# `scripts/run.py` in one line; all are ValueErrors or missing files.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, train_lib.TrainingError)

# The planted rule: the preferred response is the polite one.
POLITE_WORDS = ("please", "gladly", "certainly", "thanks", "welcome", "happy")
RUDE_WORDS = ("whatever", "go", "away", "ugh", "annoying", "stop")
FILLER_WORDS = ("the", "river", "stone", "garden", "blue", "quiet", "market", "seven", "paper",
                "window", "cloud", "lamp", "orange", "north", "bridge", "song")
TOPICS = ("bread", "tides", "birds", "maps", "clocks", "tea", "snow", "bees", "ships", "salt")


def _response(rng: np.random.Generator, rule_words: tuple[str, ...]) -> str:
  words = list(rng.choice(FILLER_WORDS, size=int(rng.integers(3, 9))))
  for _ in range(int(rng.integers(1, 3))):
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(rule_words)))
  return " ".join(words)


def make_task(num_pairs: int, seed: int) -> list[dict[str, str]]:
  """Prompts with a preferred (`good`) and a dispreferred (`bad`) response."""
  rng = np.random.default_rng(seed)
  return [{"prompt": f"\n\nHuman: tell me about {rng.choice(TOPICS)}, request {i}.\n\nAssistant:",
           "good": " " + _response(rng, POLITE_WORDS), "bad": " " + _response(rng, RUDE_WORDS)}
          for i in range(num_pairs)]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def simulate_feedback(config: ml_collections.ConfigDict, task: list[dict[str, str]], path: Path
                      ) -> tuple[feedback.Simulation, np.ndarray]:
  """Simulated annotators label the task; returns the simulation and a-is-good per item.

  The simulator decides per item which position holds the preferred response (its true
  label, a or b); the task's good response is put in that position.
  """
  sim_config = feedback.SimulationConfig(num_items=len(task), **config.annotators.to_dict())
  simulation = feedback.simulate_annotations(jax.random.key(config.seed), sim_config)
  a_is_good = simulation.true_labels == feedback.A_PREFERRED
  records = feedback.to_records(simulation, with_text=True)
  for record in records:
    item = int(record["item_id"].rsplit("-", 1)[1])
    pair = task[item]
    record["prompt"] = pair["prompt"]
    record["response_a"], record["response_b"] = (
        (pair["good"], pair["bad"]) if a_is_good[item] else (pair["bad"], pair["good"]))
  _write_jsonl(path, records)
  # Beside the records, so that the aggregation report scores its drift verdicts against
  # the known change points (detection rate and delay).
  feedback.write_annotator_truth(simulation, path.with_name("annotator_truth.csv"))
  return simulation, a_is_good


def _eval_file(task: list[dict[str, str]], path: Path) -> None:
  _write_jsonl(path, [{"prompt": p["prompt"], "chosen": p["good"], "rejected": p["bad"]} for p in task])


def _train(base: ml_collections.ConfigDict, train_path: Path, eval_path: Path, workdir: Path
           ) -> dict[str, Any]:
  config = ml_collections.ConfigDict(base.to_dict())
  config.data.train = str(train_path)
  config.data.eval = str(eval_path)
  return train_lib.train(config, workdir)


def _aggregate_config(config: ml_collections.ConfigDict, annotations_path: Path, output_dir: Path
                      ) -> ml_collections.ConfigDict:
  aggregate_config = ml_collections.ConfigDict(config.aggregate.to_dict())
  aggregate_config.input = str(annotations_path)
  aggregate_config.format = "jsonl"
  aggregate_config.output_dir = str(output_dir)
  return aggregate_config


def _integer(config: ml_collections.ConfigDict, field: str, low: int, meaning: str = "") -> None:
  node = config
  for part in field.split("."):
    node = node[part]
  if isinstance(node, bool) or not isinstance(node, int) or node < low:
    raise ConfigError(f"config.{field} must be an integer >= {low}{meaning}, got {node!r}.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks the whole job's config before any work; raises `ConfigError` (or the
  trainer's ValueError) naming the first field it cannot use.

  The annotator shares must sum to 1: a share given alone is not scaled, the message
  names every share and their sum, so that the population is the one asked for.
  """
  _integer(config, "seed", 0)
  _integer(config, "task.num_pairs", 1)
  _integer(config, "task.num_eval", 1)
  shares = {name: config.annotators[name] for name in SHARES}
  for name, value in shares.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
      raise ConfigError(f"config.annotators.{name} must be a share in [0, 1], got {value!r}.")
  total = sum(shares.values())
  if abs(total - 1.0) > 1e-6:
    terms = " + ".join(f"{name} {value:g}" for name, value in shares.items())
    raise ConfigError(f"config.annotators.*_share must sum to 1, got {total:g} ({terms}); change one by "
                      f"{1 - total:+g}, e.g. --config.annotators.good_share={shares['good_share'] + 1 - total:g}.")
  try:
    feedback.SimulationConfig(num_items=int(config.task.num_pairs), **config.annotators.to_dict())
  except (TypeError, ValueError) as error:
    raise ConfigError(str(error).replace("SimulationConfig.", "config.annotators.")) from None
  try:
    feedback_pipeline.validate_config(_aggregate_config(config, Path("annotations.jsonl"), Path("feedback")))
  except feedback_pipeline.ConfigError as error:
    raise ConfigError(str(error).replace("config.", "config.aggregate.", 1)) from None
  for stage in STAGES:
    _integer(config, f"{stage}.train.steps", 0, " (0 skips the stage)")
    if config[stage].train.steps > 0:
      train_lib.check_config(config[stage], where=f"config.{stage}.")


def run(config: ml_collections.ConfigDict, workdir: str | Path, *, force_new: bool = False) -> dict[str, Any]:
  """Runs every stage into `workdir`; returns (and writes to summary.json) the numbers.

  A training stage stopped early (SIGTERM) ends the job: the summary then holds
  "stopped": {"stage", "step"} and summary.json is not written; rerun to resume.

  Raises:
    ConfigError, ValueError: a config field the job cannot use (named), before any work.
    rundir.RunDirError: `workdir` is a file, or holds a run with other settings (the
      fields that differ are listed); `force_new` starts afresh.
  """
  check_config(config)
  workdir = rundir.prepare(workdir)
  rundir.check_resume(workdir, config.to_dict(), may_change=MAY_CHANGE_ON_RESUME, force_new=force_new,
                      entries=ENTRIES)
  # A summary describes a finished run: the one of an earlier start goes now, and the
  # new one is written once every stage has finished.
  (workdir / "summary.json").unlink(missing_ok=True)
  rundir.write_config(workdir, config.to_dict())
  start = time.time()
  task = make_task(config.task.num_pairs + config.task.num_eval, config.seed)
  train_task, eval_task = task[: config.task.num_pairs], task[config.task.num_pairs:]

  annotations_path = workdir / "annotations.jsonl"
  simulation, a_is_good = simulate_feedback(config, train_task, annotations_path)

  aggregate_config = _aggregate_config(config, annotations_path, workdir / "feedback")
  outputs = feedback_pipeline.run(aggregate_config, progress=False)
  print(outputs.summary_text())

  # Accuracy of the labels against the truth, and of majority vote for comparison.
  encoded = outputs.read_report.annotations
  truth = np.array([int(simulation.true_labels[int(i.rsplit("-", 1)[1])]) for i in encoded.item_ids])
  votes = feedback.majority_vote(encoded.items, encoded.annotators, encoded.labels,
                                 num_classes=encoded.num_classes, num_items=encoded.num_items)
  label_accuracy = {
      config.aggregate.method: float(np.mean(np.asarray(outputs.result.labels) == truth)),
      "majority_vote": float(np.mean(np.asarray(votes.labels) == truth)),
  }

  # The training file is the aggregation's own (`feedback.io.training`): the resolved
  # labels with their texts; items awaiting expert review are listed beside it.
  training = outputs.training
  train_path = training.path
  data_dir = workdir / "data"
  data_dir.mkdir(exist_ok=True)
  eval_path = data_dir / "eval.jsonl"
  _eval_file(eval_task, eval_path)

  results = {}
  for name in STAGES:
    if config[name].train.steps > 0:
      results[name] = _train(config[name], train_path, eval_path, workdir / name)
      if results[name]["preempted"]:
        # Its evaluations so far are of an unfinished model: nothing is reported.
        return {"stopped": {"stage": name, "step": int(results[name]["step"])},
                "seconds": round(time.time() - start, 1)}

  summary = {
      "annotations": int(outputs.read_report.num_read),
      "items": int(encoded.num_items),
      "annotators": int(encoded.num_annotators),
      "label_accuracy": label_accuracy,
      "expert_review_items": int(np.sum(outputs.expert_review)),
      "awaiting_review_items": training.num_awaiting,
      "rejected_items": training.num_rejected,
      "training_pairs": training.num_trained,
      # The objectives the numbers below belong to, as configured for this run.
      "reward_model_loss": config.reward_model.loss.name,
      "dpo_variant": config.dpo.loss.variant,
      "reward_model_eval_accuracy": results.get("reward_model", {}).get("eval/accuracy"),
      "reward_model_eval_ece": results.get("reward_model", {}).get("eval/ece"),
      "dpo_eval_implicit_reward_accuracy": results.get("dpo", {}).get("eval/accuracy"),
      "seconds": round(time.time() - start, 1),
  }
  (workdir / "summary.json").write_text(rundir.dumps(summary, indent=2) + "\n")
  return summary


def format_summary(summary: dict[str, Any]) -> str:
  if summary.get("stopped"):
    stopped = summary["stopped"]
    return (f"Stopped in stage {stopped['stage']} at step {stopped['step']} with a checkpoint; rerun the same "
            "command to resume (no results are reported for an unfinished run).")
  accuracy = ", ".join(f"{k} {v:.3f}" for k, v in summary["label_accuracy"].items())
  def fmt(value):
    return "-" if value is None or isinstance(value, str) else f"{value:.3f}"
  return "\n".join([
      f"{summary['annotations']} simulated annotations of {summary['items']} comparisons by "
      f"{summary['annotators']} annotators.",
      f"Label accuracy against the truth: {accuracy}.",
      f"{summary['expert_review_items']} items routed to expert review, {summary['awaiting_review_items']} "
      f"awaiting a decision (feedback/awaiting_review.jsonl, kept out of training); "
      f"{summary['training_pairs']} training pairs, {summary['rejected_items']} rejected.",
      f"Reward model (loss {summary['reward_model_loss']}): held-out accuracy "
      f"{fmt(summary['reward_model_eval_accuracy'])}, ECE {fmt(summary['reward_model_eval_ece'])}.",
      f"DPO (variant {summary['dpo_variant']}): held-out implicit-reward accuracy "
      f"{fmt(summary['dpo_eval_implicit_reward_accuracy'])}.",
      f"Total {summary['seconds']} s.",
  ])
