"""Whole runs of `train()`: learning the toy rules, exact resume, bad data files, and run
directories that know what they are (a rerun never reports another config's numbers)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax import cli, data, host_memory
from rlhf_jax.train import checkpoint, loop, networks, rundir
from rlhf_jax.train import config as config_lib
from rlhf_jax.train.components import FAST_COMPILE_OPTIONS

from train_testlib import load_datasets, numpy_sequence_logps, tiny_config

REPO = Path(__file__).resolve().parents[2]
HH_RLHF = REPO / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base-test-head1500.jsonl.gz"


def _short(objective, **overrides):
  settings = dict(train__steps=60, train__log_every=20, optim__warmup_steps=5, eval__every=0,
                  checkpoint__every=0, data__toy__num_train=1024, data__toy__num_eval=32)
  settings.update(overrides)
  return tiny_config(objective, **settings)


def _forward(config, kind, vocab_size=32):
  """The raw model outputs (logits or rewards) as a jitted function of (params, tokens, mask)."""
  model = networks.build_model(config_lib.model_settings(config), vocab_size, kind)
  return jax.jit(lambda p, t, m: model.apply({"params": p}, t, m), compiler_options=FAST_COMPILE_OPTIONS)


def test_dpo_drives_implicit_reward_accuracy_to_one(tmp_path):
  config = _short("dpo")
  results = loop.train(config, tmp_path)
  assert results["step"] == 60 and not results["preempted"]
  assert results["eval/accuracy"] == 1.0
  # Independent check: implicit rewards beta * (log pi - log pi_ref), the policy's from its
  # raw logits, the reference's from the run's cache (checked against the reference
  # model's logits in test_train_step.py).
  pairs = load_datasets(config, tmp_path / "data").eval
  (cache,) = (tmp_path / "reference_cache").glob("reference_eval_*.npz")
  with np.load(cache) as stored:
    np.testing.assert_array_equal(stored["example_index"], pairs["example_index"])
    ref = {part: stored[f"ref_{part}_logps"] for part in ("chosen", "rejected")}
  apply = _forward(config, "policy")
  policy = jax.device_get(results["state"].params)

  def logps(part):
    logits = np.asarray(apply(policy, pairs[f"{part}_tokens"], pairs[f"{part}_attention_mask"]))
    return numpy_sequence_logps(logits, pairs[f"{part}_tokens"], pairs[f"{part}_loss_mask"])

  chosen = 0.1 * (logps("chosen") - ref["chosen"])
  rejected = 0.1 * (logps("rejected") - ref["rejected"])
  assert np.mean(chosen > rejected) == 1.0
  np.testing.assert_allclose(results["eval/margin"], np.mean(chosen - rejected), rtol=1e-3)
  # The run directory holds what the run was.
  assert json.loads((tmp_path / "config.json").read_text())["objective"] == "dpo"
  run = json.loads((tmp_path / "run.json").read_text())
  assert set(run["git"]) == {"commit", "dirty"} and "train" in run["arrays_sha256"]
  assert run["host_memory"] == host_memory.status()  # what this process's malloc was set to
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "train"] == [20, 40, 60]
  assert any(name.startswith("events") for name in os.listdir(tmp_path / "tensorboard"))


def test_reward_model_learns_the_planted_rule(tmp_path):
  config = _short("reward_model")
  results = loop.train(config, tmp_path)
  assert results["eval/accuracy"] == 1.0
  assert results["eval/ece"] < 0.1
  # Independent check of the accuracy from the model's raw rewards on held-out pairs.
  pairs = load_datasets(config, tmp_path / "data").eval
  apply = _forward(config, "reward")
  params = jax.device_get(results["state"].params)
  chosen = np.asarray(apply(params, pairs["chosen_tokens"], pairs["chosen_attention_mask"]))[:, 0]
  rejected = np.asarray(apply(params, pairs["rejected_tokens"], pairs["rejected_attention_mask"]))[:, 0]
  assert np.mean(chosen > rejected) == 1.0
  # The rule is the marker: swapping GOOD for BAD in a chosen completion lowers its reward.
  swapped = pairs["chosen_tokens"].copy()
  swapped[swapped == data.TOY_GOOD] = data.TOY_BAD
  flipped = np.asarray(apply(params, swapped, pairs["chosen_attention_mask"]))[:, 0]
  assert np.mean(flipped < chosen) == 1.0


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
  config = tiny_config("sft", train__steps=12, train__batch_size=8, train__log_every=4, optim__warmup_steps=2,
                       eval__every=0, checkpoint__every=0, data__toy__num_train=40, data__toy__num_eval=0)
  straight = loop.train(config, tmp_path / "straight")
  first = loop.train(config, tmp_path / "resumed", stop_at_step=6)
  assert first["preempted"] and first["step"] == 6
  # The checkpoint holds the data position: 6 batches of 8 from 40 examples (5 per epoch).
  saved = json.loads((tmp_path / "resumed" / "checkpoints" / "6" / "data" / "metadata").read_text())
  assert (saved["epoch"], saved["position"]) == (1, 8)
  second = loop.train(config, tmp_path / "resumed")
  assert second["step"] == 12 and not second["preempted"]
  a, b = jax.device_get(straight["state"]), jax.device_get(second["state"])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert straight["train/loss"] == second["train/loss"]


def test_bad_rows_go_to_the_rejects_file(tmp_path):
  lines = [
      '{"prompt": "What is 2+2?", "chosen": " It is 4.", "rejected": " It is 5."}',
      '{"prompt": "Capital of France?", "chosen": " Paris.", "rejected": " Rome."}',
      '{"prompt": "Color of the sky?", "chosen": " Blue.", "rejected": " Green."',  # bad JSON
      '{"prompt": "Say hi", "chosen": " Hi!"}',  # no rejected
      '{"prompt": "Opposite of hot?", "chosen": " Cold.", "rejected": " Warm."}',
      '{"prompt": "Count to three", "chosen": " One, two, three.", "rejected": " One, three."}',
  ]
  path = tmp_path / "train.jsonl"
  path.write_text("\n".join(lines) + "\n")
  config = tiny_config("reward_model", data__train=str(path), data__tokenizer_vocab_size=300)
  datasets = load_datasets(config, tmp_path / "run")
  assert len(datasets.train["chosen_tokens"]) == 4 and datasets.eval is None
  assert datasets.info.vocab_size == 300  # a tokenizer trained on the file, in the workdir
  assert (tmp_path / "run" / "tokenizer" / "spm.model").is_file()
  rejects_file = tmp_path / "run" / "rejects" / "train.jsonl"
  rejects = [json.loads(line) for line in rejects_file.read_text().splitlines()]
  assert [(r["line"], r["code"], r["field"]) for r in rejects] == [
      (3, "bad_json", None), (4, "missing_field", "rejected")]
  counts = datasets.provenance["data"]["train"]
  assert (counts["read"], counts["accepted"], counts["rejected"]) == (6, 4, 2)


def test_unusable_file_is_a_clear_error_without_traceback(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"question": "no preference fields here"}\n')
  result = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "train.py"), "--config=configs/reward_model.py:preset=tiny",
       f"--workdir={tmp_path / 'run'}", f"--config.data.train={path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1
  assert "train.py: error:" in result.stderr and str(path) in result.stderr
  assert "cannot detect the preference format" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_hh_rlhf_reward_model_smoke(tmp_path):
  if not HH_RLHF.is_file():
    pytest.skip(f"real data not found at {HH_RLHF} (../shared/data is absent)")
  config = tiny_config("reward_model", data__train=str(HH_RLHF), data__eval=str(HH_RLHF), train__steps=20,
                       train__batch_size=8, eval__batch_size=64, optim__warmup_steps=2)
  results = loop.train(config, tmp_path)
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["data"]["train"]["format"] == "hh_rlhf"
  assert run["data"]["train"]["read"] == 1500
  assert run["data"]["train"]["read"] == run["data"]["train"]["accepted"] + run["data"]["train"]["rejected"]
  assert (tmp_path / "tokenizer" / "spm.model").is_file()
  assert 0.0 <= results["eval/accuracy"] <= 1.0 and np.isfinite(results["eval/loss"])


@pytest.mark.slow
def test_sigterm_saves_and_resume_finishes(tmp_path):
  """A real SIGTERM in a subprocess: checkpoint at the next step, clean exit, then resume."""
  import signal
  import time
  command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config=configs/sft.py:preset=tiny",
             f"--workdir={tmp_path}", "--config.train.steps=100000", "--config.train.log_every=1",
             "--config.eval.every=0", "--config.checkpoint.every=0", "--config.data.toy.num_eval=0",
             "--config.train.progress_bar=false",
             # No warmup: the resumed run is only a few steps long, shorter than the default warmup.
             "--config.optim.warmup_steps=0"]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"))
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 5):
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == cli.EXIT_STOPPED == 75, stderr  # stopped, resumable: not "finished"
  final = json.loads(stdout.strip().splitlines()[-1])
  assert final["preempted"] and final["step"] >= 5
  assert checkpoint.Checkpointer(tmp_path).latest_step() == final["step"]
  # The same command (with a finite length) resumes from that checkpoint and finishes.
  command[command.index("--config.train.steps=100000")] = f"--config.train.steps={final['step'] + 2}"
  resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240,
                           env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert resumed.returncode == 0, resumed.stderr
  done = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert done["step"] == final["step"] + 2 and not done["preempted"]
  # scripts/train.py keeps freed memory by default (rlhf_jax.host_memory) and says so.
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["host_memory"].startswith("freed memory kept (glibc mallopt M_ARENA_MAX=1")
  assert run["resumed"][0]["host_memory"] == run["host_memory"]
  steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
  assert steps == list(range(1, final["step"] + 3))  # no step lost or repeated


@pytest.mark.slow
def test_init_from_an_sft_run(tmp_path):
  """DPO starts from an SFT run's parameters; a reward model takes them as its backbone."""
  sft = loop.train(tiny_config("sft", train__steps=4, data__toy__num_eval=0, optim__warmup_steps=0),
                   tmp_path / "sft")
  sft_params = jax.device_get(sft["state"].params)
  frozen = dict(train__steps=1, data__toy__num_eval=0, optim__warmup_steps=0, optim__learning_rate=0.0,
                model__init_from=str(tmp_path / "sft"))
  dpo = loop.train(tiny_config("dpo", **frozen), tmp_path / "dpo")
  for a, b in zip(jax.tree.leaves(sft_params), jax.tree.leaves(jax.device_get(dpo["state"].params))):
    np.testing.assert_array_equal(a, b)
  assert dpo["train/margin"] == 0.0  # the reference is the SFT policy itself
  reward = jax.device_get(loop.train(tiny_config("reward_model", **frozen), tmp_path / "rm")["state"].params)
  backbone = {k: v for k, v in sft_params.items() if k != "lm_head"}
  for a, b in zip(jax.tree.leaves(backbone), jax.tree.leaves(reward["backbone"])):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="do not fit this model"):
    loop.train(tiny_config("dpo", **{**frozen, "model__init_from": str(tmp_path / "rm")}), tmp_path / "bad")


# ---------------------------------------------------------------------------------------
# Run directories: resume only what the directory is a run of.


def _quick(**overrides):
  """A few SFT steps on 40 toy sequences, with an evaluation set of 8."""
  settings = dict(train__steps=6, train__batch_size=8, train__log_every=2, optim__warmup_steps=2, eval__every=0,
                  checkpoint__every=0, data__toy__num_train=40, data__toy__num_eval=8)
  settings.update(overrides)
  return tiny_config("sft", **settings)


def _strict_json(text):
  """json.loads that fails on NaN / Infinity tokens (not JSON)."""
  def refuse(token):
    raise ValueError(f"bare {token} in JSON")
  return json.loads(text, parse_constant=refuse)


def _params(results):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(results["state"].params))]


def test_another_config_is_refused_and_force_new_starts_afresh(tmp_path):
  first = loop.train(_quick(), tmp_path)
  stored = (tmp_path / "config.json").read_text()
  metrics = (tmp_path / "metrics.jsonl").read_text()
  other = _quick(seed=1)  # (the compiled step stays the same: a short test)
  with pytest.raises(rundir.RunDirError) as error:
    loop.train(other, tmp_path)
  assert "holds a run with other settings: seed 0 -> 1." in str(error.value)
  assert "\n" not in str(error.value)
  # Nothing of the run changed: config, metrics, checkpoint.
  assert (tmp_path / "config.json").read_text() == stored
  assert (tmp_path / "metrics.jsonl").read_text() == metrics
  assert checkpoint.Checkpointer(tmp_path).all_steps() == [6]

  fresh = loop.train(other, tmp_path, force_new=True)
  assert fresh["step"] == 6 and not fresh["preempted"]
  # It trained from step 0 with the new settings: every logged step once, the new
  # learning rate in config.json, and the earlier run kept aside.
  assert [r["step"] for r in rundir.read_metrics(tmp_path, "train")] == [2, 4, 6]
  assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1
  (superseded,) = (tmp_path / "superseded").iterdir()
  assert (superseded / "config.json").read_text() == stored
  assert (superseded / "metrics.jsonl").read_text() == metrics
  assert any(not np.array_equal(a, b) for a, b in zip(_params(first), _params(fresh)))


def test_fields_that_may_change_on_resume_continue_the_run_and_are_recorded(tmp_path):
  assert {"train.steps", "train.log_every", "eval.every", "checkpoint.every", "mesh.data"} <= set(
      loop.MAY_CHANGE_ON_RESUME)
  loop.train(_quick(), tmp_path)
  longer = loop.train(_quick(train__steps=8, train__log_every=4), tmp_path)
  assert longer["step"] == 8 and not longer["preempted"]
  assert [r["step"] for r in rundir.read_metrics(tmp_path, "train")] == [2, 4, 6, 8]
  run = json.loads((tmp_path / "run.json").read_text())
  assert run["resumed"][0]["changed"] == {"train.log_every": [2, 4], "train.steps": [6, 8]}
  assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 8
  # Fewer steps than the checkpoint holds cannot resume.
  with pytest.raises(rundir.RunDirError, match="train.steps 5 is below the step 8 of the checkpoint"):
    loop.train(_quick(train__steps=5), tmp_path)


def test_a_changed_data_file_is_refused(tmp_path):
  rows = [{"prompt": f"Question {i}?", "chosen": f" Good answer {i}.", "rejected": f" Bad {i}."} for i in range(8)]
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = tiny_config("reward_model", data__train=str(path), data__tokenizer_vocab_size=300, train__steps=2,
                       train__batch_size=4, train__log_every=1, optim__warmup_steps=0, eval__batch_size=4)
  loop.train(config, tmp_path / "run")
  rows[0]["chosen"], rows[0]["rejected"] = rows[0]["rejected"], rows[0]["chosen"]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # same path, other contents
  with pytest.raises(rundir.RunDirError, match=r"data.train \(input\) \"[0-9a-f]{37}\.\.\.\" -> \"[0-9a-f]{37}\.\.\.\"\. "):
    loop.train(config, tmp_path / "run")


def test_stop_at_step_on_a_run_at_that_step_trains_nothing(tmp_path):
  first = loop.train(_quick(), tmp_path, stop_at_step=4)
  assert first["preempted"] and first["step"] == 4
  again = loop.train(_quick(), tmp_path, stop_at_step=4)
  assert again["preempted"] and again["step"] == 4
  assert checkpoint.Checkpointer(tmp_path).all_steps() == [4]
  for a, b in zip(_params(first), _params(again)):
    np.testing.assert_array_equal(a, b)
  # No step was timed: no throughput, and nothing that is not JSON.
  assert again["examples_per_second"] is None
  printable = {k: v for k, v in again.items() if k != "state"}
  assert _strict_json(rundir.dumps(printable)) == json.loads(rundir.dumps(printable))
  assert again["train/loss"] == first["train/loss"]  # the recorded metrics of step 4
  assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [2, 4]


def test_rerunning_a_finished_run_reports_its_recorded_metrics(tmp_path):
  done = loop.train(_quick(), tmp_path)
  metrics = (tmp_path / "metrics.jsonl").read_text()
  again = loop.train(_quick(), tmp_path)
  assert again["step"] == 6 and not again["preempted"]
  assert (tmp_path / "metrics.jsonl").read_text() == metrics  # no second final evaluation
  for name in ("train/loss", "eval/loss", "eval/perplexity"):
    assert again[name] == done[name]


def test_workdir_naming_a_file_is_a_one_line_error(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("x")
  with pytest.raises(rundir.RunDirError, match="is a file, not a directory"):
    loop.train(_quick(), path)
  result = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "train.py"), "--config=configs/sft.py:preset=tiny",
       f"--workdir={path}"], cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"train.py: error: workdir {path} is a file, not a directory; choose a directory (--workdir).")
  assert "Traceback" not in result.stderr


def _train_script(workdir, *flags):
  command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config=configs/sft.py:preset=tiny",
             f"--workdir={workdir}", "--config.train.steps=4", "--config.train.batch_size=8",
             "--config.train.log_every=1", "--config.optim.warmup_steps=1", "--config.train.progress_bar=false",
             "--config.data.toy.num_train=40", "--config.data.toy.num_eval=8", "--config.eval.every=0", *flags]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.slow
def test_train_script_exit_codes_and_refusal(tmp_path):
  """75 when stopped (resumable), 1 and one line for another config, 0 when finished."""
  stopped = _train_script(tmp_path, "--stop_at_step=2")
  assert stopped.returncode == cli.EXIT_STOPPED, stopped.stderr
  assert _strict_json(stopped.stdout.strip().splitlines()[-1])["step"] == 2
  again = _train_script(tmp_path, "--stop_at_step=2")  # already there: no step, no NaN
  assert again.returncode == cli.EXIT_STOPPED, again.stderr
  printed = _strict_json(again.stdout.strip().splitlines()[-1])
  assert printed["step"] == 2 and printed["examples_per_second"] is None

  refused = _train_script(tmp_path, "--config.loss.aggregation=sequence_mean")
  assert refused.returncode == 1
  last = refused.stderr.strip().splitlines()[-1]
  assert last.startswith(f"train.py: error: workdir {tmp_path} holds a run with other settings: "
                         'loss.aggregation "token_mean" -> "sequence_mean".')
  assert "Traceback" not in refused.stderr

  fresh = _train_script(tmp_path, "--config.loss.aggregation=sequence_mean", "--force_new")
  assert fresh.returncode == 0, fresh.stderr
  assert _strict_json(fresh.stdout.strip().splitlines()[-1])["step"] == 4
  assert [r["step"] for r in rundir.read_metrics(tmp_path, "train")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_sigkill_then_resume_logs_each_step_once(tmp_path):
  """A real SIGKILL after a checkpoint and some more logged steps; the resumed run's
  metrics.jsonl (and TensorBoard view) holds every step once."""
  import signal
  import time
  command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config=configs/sft.py:preset=tiny",
             f"--workdir={tmp_path}", "--config.train.steps=100000", "--config.train.log_every=1",
             "--config.eval.every=0", "--config.checkpoint.every=3", "--config.checkpoint.async_save=false",
             "--config.data.toy.num_eval=0", "--config.train.progress_bar=false", "--config.optim.warmup_steps=0"]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"))
  metrics = tmp_path / "metrics.jsonl"

  def state():
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").glob("*") if p.name.isdigit()) \
        if (tmp_path / "checkpoints").is_dir() else []
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()[:-1]] \
        if metrics.is_file() else []
    return saved, logged

  deadline = time.time() + 240
  try:
    while time.time() < deadline:
      saved, logged = state()
      # Killed between checkpoints: some steps were logged after the last one.
      if saved and logged and logged[-1] >= saved[-1] + 1 and logged[-1] % 3 != 0:
        break
      time.sleep(0.05)
    process.kill()
  finally:
    process.kill()
    process.communicate(timeout=60)
  assert process.returncode == -signal.SIGKILL
  saved, logged = state()
  assert logged and logged[-1] > saved[-1], (saved, logged)  # the case that used to repeat steps
  end = logged[-1] + 3
  command[command.index("--config.train.steps=100000")] = f"--config.train.steps={end}"
  resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240,
                           env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert resumed.returncode == 0, resumed.stderr
  steps = [r["step"] for r in rundir.read_metrics(tmp_path, "train")]
  assert steps == list(range(1, end + 1))
