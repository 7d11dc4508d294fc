"""Sampling from a trained policy (`rlhf_jax.train.sampling`, `scripts/sample.py`) and the
sampler on a 2-device mesh.

A tiny SFT run on the toy data (token ids, no tokenizer) is trained for a few steps; its
completions from a prompts file are checked against `models.generate` called directly
on the run's final parameters with prompts laid out by hand.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax import data, models
from rlhf_jax.train import loop, sampling

from train_testlib import tiny_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Lines 1, 3 and 6 are usable; 2 (not JSON), 4 (no prompt), 5 (not token ids) are not.
PROMPT_LINES = ['{"prompt": "5 6 7", "id": "a"}', "not json", '{"prompt": "9 10 11 12 13 14 15 16", "id": 7}',
                '{"text": "5 6"}', '{"prompt": "hello there"}', '{"prompt": "20 3 21"}']
USABLE = {1: [5, 6, 7], 3: [9, 10, 11, 12, 13, 14, 15, 16], 6: [20, 3, 21]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("sampling")
  config = tiny_config("sft", train__steps=6, train__log_every=6, optim__warmup_steps=2, eval__every=0,
                       checkpoint__every=0, eval__batch_size=4, train__fast_compile=True)
  results = loop.train(config, root / "sft")
  prompts = root / "prompts.jsonl"
  prompts.write_text("\n".join(PROMPT_LINES) + "\n")
  return root, results, prompts


@pytest.fixture(scope="module")
def policy(run):
  return sampling.load_policy(run[0] / "sft")


def _direct(policy, params, config, seed, lines):
  """`models.generate` on [bos] + ids of the usable lines, with their line numbers as ids."""
  prompts = [[data.TOY_BOS] + USABLE[line] for line in lines]
  tokens = np.zeros((len(prompts), 9), np.int32)
  mask = np.zeros(tokens.shape, bool)
  for i, prompt in enumerate(prompts):
    tokens[i, 9 - len(prompt):] = prompt  # left padded: the sampler's layout is its own business
    mask[i, 9 - len(prompt):] = True
  return models.generate(policy.model, params, tokens, mask, jax.random.key(seed), config,
                         prompt_ids=np.array(lines))


def test_sample_file_writes_what_generate_draws(run, policy, tmp_path):
  _, results, prompts = run
  config = policy.sampling_config(max_new_tokens=10, temperature=1.0, top_k=20, num_samples=2)
  assert (config.eos_id, config.pad_id) == (data.TOY_EOS, data.TOY_PAD)
  output, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
  summary = sampling.sample_file(policy, prompts, output, rejects_path=rejects, config=config, seed=3)
  assert (summary["read"], summary["sampled"], summary["rejected"], summary["completions"]) == (6, 3, 3, 6)
  assert summary["checkpoint_step"] == results["step"] == policy.step
  # Every usable prompt twice, in file order; rejects in file order with their reasons.
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert [(r["line"], r["sample"]) for r in records] == [(1, 0), (1, 1), (3, 0), (3, 1), (6, 0), (6, 1)]
  assert [r["id"] for r in records] == ["a", "a", 7, 7, None, None]
  reasons = [json.loads(line) for line in rejects.read_text().splitlines()]
  assert [(r["line"], r["code"]) for r in reasons] == [(2, "bad_json"), (4, "missing_field"), (5, "not_token_ids")]
  assert "token ids separated by spaces" in reasons[2]["reason"]
  # The same draws as models.generate on the run's final parameters.
  params = jax.device_get(results["state"].params)
  direct = _direct(policy, params, config, 3, [1, 3, 6])
  for row, record in enumerate(records):
    length = int(direct.lengths[row])
    ids = [int(t) for t in direct.completion_tokens[row, :length]]
    assert record["num_tokens"] == length and record["finished"] == bool(direct.stopped[row])
    # Toy text: the ids without pad, bos and eos (a barely trained model draws them too).
    assert record["completion"] == " ".join(str(t) for t in ids if t not in (data.TOY_PAD, data.TOY_BOS, data.TOY_EOS))
    assert record["logprob"] == pytest.approx(float(np.sum(direct.policy_logprobs[row])), abs=1e-4)
    assert record["sampling_logprob"] == pytest.approx(float(np.sum(direct.logprobs[row])), abs=1e-4)
    assert record["prompt"] == json.loads(PROMPT_LINES[record["line"] - 1])["prompt"]


def test_completions_do_not_depend_on_the_batch(run, tmp_path):
  _, _, prompts = run
  one_by_one = sampling.load_policy(run[0] / "sft", batch_size=1)
  config = one_by_one.sampling_config(max_new_tokens=10, temperature=1.0, top_k=20, num_samples=2)
  sampling.sample_file(one_by_one, prompts, tmp_path / "a.jsonl", rejects_path=tmp_path / "ra.jsonl", config=config,
                       seed=3)
  policy = sampling.load_policy(run[0] / "sft")
  assert policy.batch_size == 4
  sampling.sample_file(policy, prompts, tmp_path / "b.jsonl", rejects_path=tmp_path / "rb.jsonl", config=config,
                       seed=3)
  a = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
  b = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
  assert [r["completion"] for r in a] == [r["completion"] for r in b]
  for x, y in zip(a, b):
    assert x["logprob"] == pytest.approx(y["logprob"], abs=1e-4)
  # Another seed, other completions.
  sampling.sample_file(policy, prompts, tmp_path / "c.jsonl", rejects_path=tmp_path / "rc.jsonl", config=config,
                       seed=4)
  c = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
  assert [r["completion"] for r in c] != [r["completion"] for r in b]


def test_text_prompts_greedy_and_bad_inputs(run, policy, tmp_path):
  _, results, _ = run
  text = tmp_path / "prompts.txt"
  text.write_text("5 6 7\n\n20 3 21\n")
  greedy = policy.sampling_config(max_new_tokens=6, temperature=0.0)
  summary = sampling.sample_file(policy, text, tmp_path / "g.jsonl", rejects_path=tmp_path / "gr.jsonl",
                                 config=greedy, seed=0)
  assert (summary["read"], summary["sampled"], summary["rejected"]) == (2, 2, 0) and summary["rejects"] is None
  records = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
  assert [r["line"] for r in records] == [1, 3]
  direct = _direct(policy, jax.device_get(results["state"].params), greedy, 0, [1, 6])
  for row, record in enumerate(records):
    assert record["num_tokens"] == int(direct.lengths[row]) and record["sampling_logprob"] == 0.0
  # The library call on texts gives the same.
  completions = policy.sample(["5 6 7", "20 3 21"], greedy)
  assert [c.text for c in completions] == [r["completion"] for r in records]
  # Files that cannot be used: one-line errors naming the file.
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(data.DataError, match="empty.jsonl: the file holds no records"):
    sampling.sample_file(policy, empty, tmp_path / "o.jsonl", rejects_path=tmp_path / "r.jsonl", config=greedy)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "hello"}\n')
  with pytest.raises(data.DataError, match="none of its 1 prompts can be sampled"):
    sampling.sample_file(policy, bad, tmp_path / "o.jsonl", rejects_path=tmp_path / "r.jsonl", config=greedy)
  assert "not_token_ids" in (tmp_path / "r.jsonl").read_text()
  with pytest.raises(sampling.SampleError, match="must be three different files"):
    sampling.sample_file(policy, text, text, rejects_path=tmp_path / "r.jsonl", config=greedy)
  with pytest.raises(sampling.SampleError, match="exceed the model's max_len 128"):
    policy.sample(["5 6 7"], policy.sampling_config(max_new_tokens=125))


def test_runs_that_cannot_be_sampled(tmp_path):
  with pytest.raises(sampling.SampleError, match="no such run directory"):
    sampling.load_policy(tmp_path / "missing")
  reward = tmp_path / "rm"
  reward.mkdir()
  (reward / "config.json").write_text(json.dumps(tiny_config("reward_model").to_dict()))
  with pytest.raises(sampling.SampleError, match="objective 'reward_model', a reward model; sampling needs a language"):
    sampling.load_policy(reward)
  untrained = tmp_path / "sft"
  untrained.mkdir()
  (untrained / "config.json").write_text(json.dumps(tiny_config("sft").to_dict()))
  with pytest.raises(ValueError, match="no checkpoint in"):
    sampling.load_policy(untrained)


def _script(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO / "scripts" / "sample.py"), *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_script_samples_a_file_and_reports_errors_in_one_line(run, tmp_path):
  root, _, prompts = run
  output = tmp_path / "completions.jsonl"
  result = _script(f"--workdir={root / 'sft'}", f"--input={prompts}", f"--output={output}", "--num_samples=3",
                   "--temperature=0.7", "--max_new_tokens=8", "--stop_ids=3,4")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert (summary["read"], summary["sampled"], summary["rejected"], summary["completions"]) == (6, 3, 3, 9)
  assert summary["settings"]["stop_ids"] == [3, 4] and summary["rejects"] == str(tmp_path / "completions.rejects.jsonl")
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert len(records) == 9 and all(r["num_tokens"] <= 8 for r in records)
  # A completion ends at its first stop id (3, 4: kept in the text) or eos (2: dropped).
  for record in records:
    words = record["completion"].split()
    assert not {"3", "4"} & set(words[:-1]), record
    ends_with_stop = bool(words) and words[-1] in ("3", "4") and record["num_tokens"] == len(words)
    ends_with_eos = record["num_tokens"] == len(words) + 1
    assert record["finished"] == (ends_with_stop or ends_with_eos), record
  assert any(r["finished"] for r in records)
  for flags, message in [([f"--workdir={tmp_path / 'nowhere'}"], "no such run directory"),
                         ([f"--workdir={root / 'sft'}", "--stop_ids=3,x"], "--stop_ids must be token ids")]:
    result = _script(*flags, f"--input={prompts}", f"--output={output}")
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sample.py: error: ") and message in last and "Traceback" not in result.stderr


def test_sharded_sampler_equals_one_device(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, str(HERE / "sharded_sampling_run.py")], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  single = report["single"]["tokens"]
  assert len(single) == 8 and len({tuple(r) for r in single}) == 8
  for name, sharded in report["sharded"].items():
    assert sharded["tokens"] == single, name
    assert sharded["logprobs_diff"] < 1e-5 and sharded["policy_logprobs_diff"] < 1e-5, name
    assert sharded["lengths_equal"] and sharded["stopped_equal"], name
  # The layouts really differ: rows split over data and fsdp, weights over fsdp and tensor.
  assert report["sharded"]["data"]["tokens_shard_rows"] == [4, 4]
  assert report["sharded"]["fsdp"]["tokens_shard_rows"] == [4, 4]
  assert report["sharded"]["tensor"]["tokens_shard_rows"] == [8, 8]
  assert report["sharded"]["data"]["lm_head_shards"] == [[64, 512], [64, 512]]
  assert report["sharded"]["fsdp"]["lm_head_shards"] == [[32, 512], [32, 512]]
  assert report["sharded"]["tensor"]["lm_head_shards"] == [[64, 256], [64, 256]]
