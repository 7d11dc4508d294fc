"""Scoring texts with a trained reward model (`rlhf_jax.train.score`, `scripts/score.py`).

One tiny reward model with two heads is trained on a file of polite (chosen) and rude
(rejected) answers; its scores are checked against a forward pass built independently
(model from the config, parameters from the run's final state, tokens laid out by hand
from the tokenizer), its pairwise accuracy against the trainer's own evaluation.
"""

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import loop, networks, score
from rlhf_jax.train.components import FAST_COMPILE_OPTIONS

from train_testlib import tiny_config

REPO = Path(__file__).resolve().parents[2]
MAX_LENGTH, MAX_PROMPT_LENGTH = 40, 24
POLITE = ("please", "gladly", "certainly", "thanks", "welcome")
RUDE = ("whatever", "ugh", "annoying", "stop", "away")
FILLER = ("the", "river", "stone", "garden", "blue", "quiet", "market", "paper", "lamp")
TOPICS = ("bread", "tides", "birds", "maps", "tea", "snow")


def _pairs(count: int, seed: int) -> list[dict[str, str]]:
  rng = np.random.default_rng(seed)

  def answer(marks):
    words = list(rng.choice(FILLER, size=int(rng.integers(3, 7))))
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(marks)))
    return " " + " ".join(words)

  return [{"prompt": f"\n\nHuman: tell me about {rng.choice(TOPICS)} {i}.\n\nAssistant:",
           "chosen": answer(POLITE), "rejected": answer(RUDE)} for i in range(count)]


def _write(path: Path, rows) -> Path:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A trained two-head reward model: (workdir, train() results, eval file)."""
  root = tmp_path_factory.mktemp("score")
  train_file = _write(root / "train.jsonl", _pairs(160, seed=1))
  eval_file = _write(root / "eval.jsonl", _pairs(40, seed=2))
  config = tiny_config(
      "reward_model", data__train=str(train_file), data__eval=str(eval_file), data__tokenizer_vocab_size=400,
      data__max_length=MAX_LENGTH, data__max_prompt_length=MAX_PROMPT_LENGTH, model__reward_heads=2,
      train__steps=24, train__log_every=12, optim__warmup_steps=2, eval__every=0, checkpoint__every=0,
      eval__batch_size=16)
  results = loop.train(config, root / "rm")
  return root / "rm", results, eval_file


@pytest.fixture(scope="module")
def scorer(run):
  return score.load_reward_model(run[0])


# Rows of every hand-made batch (padded), so the direct forward compiles once.
_ROWS = 48


@functools.lru_cache(maxsize=None)
def _direct_apply(vocab_size: int):
  """The model built from a fresh config (not the run's config.json), applied under jit."""
  model = networks.build_model(config_lib.model_settings(tiny_config("reward_model", model__reward_heads=2)),
                               vocab_size, "reward")
  return jax.jit(lambda p, t, m: model.apply({"params": p}, t, m), compiler_options=FAST_COMPILE_OPTIONS)


def _direct_rewards(workdir: Path, params, prompts, completions, cut=None) -> np.ndarray:
  """[N, K] rewards from a forward pass set up by hand: the model built from a fresh
  config, the tokens [bos] prompt completion [eos] laid out from the tokenizer's ids, the
  prompt cut from the left to MAX_PROMPT_LENGTH - 1 ids, the completion from the right
  (then without eos) to fill MAX_LENGTH. `cut` (a dict) counts the cut prompts and
  completions."""
  tokenizer = data.Tokenizer.load(workdir / "tokenizer" / "spm.model")
  assert len(prompts) <= _ROWS
  tokens = np.full((_ROWS, MAX_LENGTH), tokenizer.pad_id, np.int32)
  cut = {} if cut is None else cut
  for i, (prompt, completion) in enumerate(zip(prompts, completions)):
    prompt_ids, completion_ids = tokenizer.encode(prompt), tokenizer.encode(completion)
    cut["prompt"] = cut.get("prompt", 0) + (len(prompt_ids) > MAX_PROMPT_LENGTH - 1)
    prompt_ids = prompt_ids[-(MAX_PROMPT_LENGTH - 1):]
    cut["completion"] = cut.get("completion", 0) + (1 + len(prompt_ids) + len(completion_ids) + 1 > MAX_LENGTH)
    row = [tokenizer.bos_id, *prompt_ids, *completion_ids, tokenizer.eos_id][:MAX_LENGTH]
    tokens[i, :len(row)] = row
  mask = tokens != tokenizer.pad_id
  return np.asarray(_direct_apply(tokenizer.vocab_size)(params, tokens, mask))[:len(prompts)]


def test_scores_equal_a_direct_forward_pass(run, scorer):
  workdir, results, eval_file = run
  rows = [json.loads(line) for line in eval_file.read_text().splitlines()][:6]
  prompts = [r["prompt"] for r in rows] + [
      # Cut prompt (left) and cut completion (right, no eos): the trainer's truncation.
      "\n\nHuman: " + " ".join(["tell me about the quiet river"] * 12) + "\n\nAssistant:", "Hi."]
  completions = [r["chosen"] for r in rows] + [" thanks", " " + " ".join(["gladly the blue lamp"] * 30)]
  params = jax.device_get(results["state"].params)
  cut = {}
  expected = _direct_rewards(workdir, params, prompts, completions, cut)
  assert cut == {"prompt": 1, "completion": 1}  # only the two long texts
  assert expected.shape == (8, 2) and not np.allclose(expected[:, 0], expected[:, 1])  # two distinct heads
  assert scorer.step == results["step"] and scorer.num_outputs == 2
  np.testing.assert_allclose(scorer.per_head(prompts, completions), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scorer(prompts, completions), expected.mean(axis=1), rtol=1e-5, atol=1e-5)
  assert scorer.score(prompts, completions).truncated == cut


def test_pair_accuracy_equals_the_trainers_evaluation(run, scorer, tmp_path):
  workdir, results, eval_file = run
  pairs = data.load_preference_data(eval_file)
  scored = scorer.score_pairs(pairs)
  # The trainer's own evaluation of the final parameters on the same file.
  assert results["eval/accuracy"] > 0.5
  assert scored.metrics["accuracy"] == pytest.approx(results["eval/accuracy"], abs=1e-12)
  assert scored.metrics["ece"] == pytest.approx(results["eval/ece"], abs=1e-6)
  # And from the direct forward pass, in NumPy.
  params = jax.device_get(results["state"].params)
  chosen = _direct_rewards(workdir, params, pairs.prompts, pairs.chosen).mean(axis=1)
  rejected = _direct_rewards(workdir, params, pairs.prompts, pairs.rejected).mean(axis=1)
  assert scored.metrics["accuracy"] == pytest.approx(np.mean(chosen > rejected), abs=1e-12)
  # The file path: one line of scores per pair, with its line number.
  summary = score.score_file(scorer, eval_file, tmp_path / "scores.jsonl", rejects_path=tmp_path / "rejects.jsonl")
  lines = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
  assert summary["kind"] == "pairs" and summary["format"] == "explicit"
  assert (summary["read"], summary["scored"], summary["rejected"]) == (40, 40, 0)
  assert summary["accuracy"] == pytest.approx(results["eval/accuracy"], abs=1e-12)
  assert [line["line"] for line in lines] == list(range(1, 41))
  np.testing.assert_allclose([line["margin"] for line in lines], chosen - rejected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose([line["chosen_head_scores"] for line in lines],
                             _direct_rewards(workdir, params, pairs.prompts, pairs.chosen), rtol=1e-4, atol=1e-5)
  assert [line["correct"] for line in lines] == list(chosen > rejected)
  assert not (tmp_path / "rejects.jsonl").exists()


def test_feedback_labels_orient_pairs_and_leave_ties_out(run, scorer, tmp_path):
  workdir, results, _ = run
  rows = _pairs(4, seed=3)
  labels = [  # b preferred, a preferred, a tie, a preferred
      {"prompt": rows[0]["prompt"], "response_a": rows[0]["rejected"], "response_b": rows[0]["chosen"], "label": "b"},
      {"prompt": rows[1]["prompt"], "response_a": rows[1]["chosen"], "response_b": rows[1]["rejected"], "label": "a"},
      {"prompt": rows[2]["prompt"], "response_a": rows[2]["chosen"], "response_b": rows[2]["rejected"], "label": "tie"},
      {"prompt": rows[3]["prompt"], "response_a": rows[3]["rejected"], "response_b": rows[3]["chosen"], "label": "a"},
  ]
  summary = score.score_file(scorer, _write(tmp_path / "labels.jsonl", labels), tmp_path / "s.jsonl",
                             rejects_path=tmp_path / "r.jsonl")
  assert summary["format"] == "feedback_labels" and summary["ties"] == 1 and summary["decided_pairs"] == 3
  params = jax.device_get(results["state"].params)
  preferred = [rows[0]["chosen"], rows[1]["chosen"], rows[3]["rejected"]]
  other = [rows[0]["rejected"], rows[1]["rejected"], rows[3]["chosen"]]
  prompts = [rows[i]["prompt"] for i in (0, 1, 3)]
  margin = (_direct_rewards(workdir, params, prompts, preferred)
            - _direct_rewards(workdir, params, prompts, other)).mean(axis=1)
  assert summary["accuracy"] == pytest.approx(np.mean(margin > 0), abs=1e-12)
  lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
  assert [line["correct"] for line in lines] == [bool(margin[0] > 0), bool(margin[1] > 0), None, bool(margin[2] > 0)]


def test_bad_rows_go_to_the_rejects_file(run, scorer, tmp_path):
  workdir, results, _ = run
  long_prompt = "\n\nHuman: " + " ".join(["tell me about the quiet river"] * 40) + "\n\nAssistant:"
  rows = [
      {"prompt": "\n\nHuman: hi\n\nAssistant:", "completion": " thanks, gladly", "id": "a"},
      '{"prompt": "broken", "completion": ',  # line 2: not JSON
      {"prompt": "\n\nHuman: hi\n\nAssistant:", "completion": "  "},  # line 3: empty completion
      {"prompt": "\n\nHuman: hi\n\nAssistant:", "completion": 7},  # line 4: not a string
      {"prompt": long_prompt, "completion": " ugh"},  # line 5: nothing left once the prompt fills the row
      {"prompt": "\n\nHuman: bye\n\nAssistant:", "completion": " whatever"},
  ]
  path = _write(tmp_path / "completions.jsonl", rows)
  # A run whose prompts may fill the whole row (max_prompt_length = max_length), as a
  # config can set: then a long prompt leaves no room for the completion.
  full = copy.copy(scorer)
  full.max_prompt_length = full.max_length
  (tmp_path / "rejects.jsonl").write_text('{"stale": "from an earlier scoring"}\n')
  summary = score.score_file(full, path, tmp_path / "scores.jsonl", rejects_path=tmp_path / "rejects.jsonl")
  assert summary["kind"] == "completions" and summary["format"] == "prompt_completion"
  assert (summary["read"], summary["scored"], summary["rejected"]) == (6, 2, 4)
  rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
  assert [(r["line"], r["field"], r["code"]) for r in rejects] == [
      (2, None, "bad_json"), (3, "completion", "empty_completion"), (4, "completion", "wrong_type"),
      (5, "completion", "empty_after_truncation")]
  assert all(r["file"] == str(path) and r["reason"] for r in rejects)
  assert summary["first_reject"].startswith(f"{path} line 2: not valid JSON")
  lines = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
  assert [(line["line"], line["id"]) for line in lines] == [(1, "a"), (6, None)]
  params = jax.device_get(results["state"].params)
  expected = _direct_rewards(workdir, params, [rows[0]["prompt"], rows[5]["prompt"]],
                             [rows[0]["completion"], rows[5]["completion"]])
  np.testing.assert_allclose([line["score"] for line in lines], expected.mean(axis=1), rtol=1e-4, atol=1e-5)
  # The library call names the completion it cannot score.
  with pytest.raises(score.ScoreError, match="completion 0: .*empty after truncation"):
    full([long_prompt], [" ugh"])
  # Nothing scorable: a clear error, and no scores of the earlier call left to read.
  only_long = _write(tmp_path / "long.jsonl", [rows[4]])
  with pytest.raises(data.DataError, match=f"{only_long}: no completion .* survives truncation .*line 1"):
    score.score_file(full, only_long, tmp_path / "scores.jsonl", rejects_path=tmp_path / "rejects.jsonl")
  assert not (tmp_path / "scores.jsonl").exists() and not (tmp_path / "rejects.jsonl").exists()


def test_run_directories_that_cannot_score_are_clear_errors(run, tmp_path):
  workdir = run[0]
  with pytest.raises(score.ScoreError, match="no such run directory"):
    score.load_reward_model(tmp_path / "missing")
  dpo = tmp_path / "dpo"
  dpo.mkdir()
  (dpo / "config.json").write_text(json.dumps(tiny_config("dpo", data__train="x.jsonl").to_dict()))
  with pytest.raises(score.ScoreError, match="objective 'dpo'"):
    score.load_reward_model(dpo)
  toy = tmp_path / "toy"
  toy.mkdir()
  (toy / "config.json").write_text(json.dumps(tiny_config("reward_model").to_dict()))
  with pytest.raises(score.ScoreError, match="synthetic toy data"):
    score.load_reward_model(toy)
  # The tokenizer file was replaced after training: refused, not scored with other ids.
  copied = tmp_path / "copy"
  shutil.copytree(workdir, copied)
  run_json = json.loads((copied / "run.json").read_text())
  run_json["data"]["tokenizer"]["fingerprint"] = "0" * 64
  (copied / "run.json").write_text(json.dumps(run_json))
  with pytest.raises(score.ScoreError, match="not the one the run trained with"):
    score.load_reward_model(copied)
  shutil.copy(workdir / "run.json", copied / "run.json")
  shutil.rmtree(copied / "checkpoints")
  with pytest.raises(score.ScoreError, match="no checkpoint"):
    score.load_reward_model(copied)


def test_script_prints_accuracy_and_fails_cleanly(run, tmp_path):
  workdir, results, eval_file = run
  command = [sys.executable, str(REPO / "scripts" / "score.py"), f"--workdir={workdir}", f"--input={eval_file}",
             f"--output={tmp_path / 'scores.jsonl'}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert done.returncode == 0, done.stderr
  assert f"pairwise accuracy {results['eval/accuracy']:.4f} on 40 labelled pairs" in done.stdout
  summary = json.loads(done.stdout.strip().splitlines()[-1])
  assert summary["scored"] == 40 and summary["checkpoint_step"] == results["step"]
  bad = _write(tmp_path / "bad.jsonl", [{"question": "nothing to score"}])
  failed = subprocess.run(command[:3] + [f"--input={bad}", f"--output={tmp_path / 'x.jsonl'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
  assert failed.returncode == 1
  assert f"score.py: error: {bad}: cannot tell what to score" in failed.stderr
  assert "Traceback" not in failed.stderr


def test_file_job_paths_must_differ_old_outputs_go_and_every_record_is_counted(tmp_path):
  source, output, rejects = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
  for path in (source, output, rejects):
    path.write_text('{"old": 1}\n')
  with pytest.raises(score.ScoreError, match="three different files"):
    score.fresh_file_paths(source, output, source, score.ScoreError)
  assert score.fresh_file_paths(str(source), output, rejects, score.ScoreError) == (source, output, rejects)
  assert source.exists() and not output.exists() and not rejects.exists()
  summary = score.write_file_job(source, output, rejects, [{"line": 1}, {"line": 3}], read=2, done=2, rejected=0,
                                 done_name="scored")
  assert summary == {"input": str(source), "output": str(output), "rejects": None, "first_reject": None}
  assert [json.loads(line) for line in output.read_text().splitlines()] == [{"line": 1}, {"line": 3}]
  with pytest.raises(AssertionError, match="read 3 != scored 2 . rejected 0"):
    score.write_file_job(source, output, rejects, [{"line": 1}, {"line": 3}], read=3, done=2, rejected=0,
                         done_name="scored")
