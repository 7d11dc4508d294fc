"""`data.eval_fraction`: a seeded train/eval split of one training file (`inputs.split_by_prompt`)."""

import hashlib
import json

import numpy as np
import pytest

from rlhf_jax.train import inputs, rundir

from train_testlib import load_datasets, tiny_config


def _rank(seed, prompt):
  # The documented rank of a prompt group: sha256 of "<seed>\0<prompt>".
  return hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()


def test_split_is_deterministic_disjoint_covering_with_the_asked_count():
  prompts = [f"prompt {i}" for i in range(200)]
  train, evaluation = inputs.split_by_prompt(prompts, 0.1, seed=3)
  again_train, again_eval = inputs.split_by_prompt(prompts, 0.1, seed=3)
  np.testing.assert_array_equal(train, again_train)
  np.testing.assert_array_equal(evaluation, again_eval)
  assert len(evaluation) == 20 and len(train) == 180  # round(0.1 * 200), no prompt repeats
  assert not set(train) & set(evaluation)
  assert sorted([*train, *evaluation]) == list(range(200))
  assert list(evaluation) == sorted(evaluation) and list(train) == sorted(train)
  # The held-out prompts are the 20 of lowest rank (worked out here from the formula).
  expected = sorted(range(200), key=lambda i: _rank(3, prompts[i]))[:20]
  assert set(evaluation) == set(expected)
  # Another seed, another split; the order of the rows does not matter.
  assert set(inputs.split_by_prompt(prompts, 0.1, seed=4)[1]) != set(evaluation)
  order = np.random.default_rng(0).permutation(200)
  shuffled = [prompts[i] for i in order]
  held = inputs.split_by_prompt(shuffled, 0.1, seed=3)[1]
  assert {shuffled[i] for i in held} == {prompts[i] for i in evaluation}
  # The target is f * N rounded half up: 0.25 of 10 is 2.5 -> 3, 0.5 of 7 is 3.5 -> 4, 0.3 of 7 is 2.1 -> 2.
  assert len(inputs.split_by_prompt(prompts[:10], 0.25, seed=0)[1]) == 3
  assert len(inputs.split_by_prompt(prompts[:7], 0.5, seed=0)[1]) == 4
  assert len(inputs.split_by_prompt(prompts[:7], 0.3, seed=0)[1]) == 2


def test_pairs_of_one_prompt_stay_on_one_side():
  # 30 prompts with 3 pairs each, 20 with one pair: 110 examples.
  prompts = [f"shared {i}" for i in range(30) for _ in range(3)] + [f"single {i}" for i in range(20)]
  train, evaluation = inputs.split_by_prompt(prompts, 0.2, seed=0)
  train_prompts = {prompts[i] for i in train}
  eval_prompts = {prompts[i] for i in evaluation}
  assert not train_prompts & eval_prompts  # no prompt on both sides
  assert sorted([*train, *evaluation]) == list(range(110))
  # Whole groups in rank order until at least 0.2 * 110 = 22 examples: dropping the
  # last group taken would leave fewer than 22.
  groups = sorted(set(prompts), key=lambda p: _rank(0, p))
  sizes = {p: prompts.count(p) for p in groups}
  taken, count = [], 0
  for prompt in groups:
    if count >= 22:
      break
    taken.append(prompt)
    count += sizes[prompt]
  assert eval_prompts == set(taken) and len(evaluation) == count
  assert count - sizes[taken[-1]] < 22 <= count
  # Examples without a prompt are groups of their own.
  train, evaluation = inputs.split_by_prompt([""] * 10, 0.3, seed=0)
  assert len(evaluation) == 3 and len(train) == 7


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, True, "0.1"])
def test_fraction_outside_the_open_interval_is_refused(fraction):
  with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
    inputs.split_by_prompt(["a", "b", "c"], fraction, seed=0)


def test_splits_with_an_empty_side_are_refused():
  with pytest.raises(ValueError, match="holds out none"):
    inputs.split_by_prompt([f"p{i}" for i in range(10)], 0.01, seed=0)
  with pytest.raises(ValueError, match="share 1 prompt.*leaves no training example"):
    inputs.split_by_prompt(["same"] * 10, 0.5, seed=0)


def _pairs_file(path):
  rows = [{"prompt": f"Question {i // 2}?", "chosen": f" Answer {i} is right.", "rejected": f" Answer {i} is off."}
          for i in range(40)]  # 20 prompts, 2 pairs each
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path, rows


def test_load_datasets_holds_out_whole_prompts_and_records_the_split(tmp_path):
  path, rows = _pairs_file(tmp_path / "pairs.jsonl")
  config = tiny_config("reward_model", data__train=str(path), data__tokenizer_vocab_size=300,
                       data__eval_fraction=0.25, data__eval_split_seed=7)
  datasets = load_datasets(config, tmp_path / "run")
  split = datasets.provenance["data"]["split"]
  assert split["examples"] == {"train": 30, "eval": 10} and split["prompts"] == {"train": 15, "eval": 5}
  assert (split["eval_fraction"], split["seed"], split["grouped_by"]) == (0.25, 7, "prompt")
  assert split["file_fingerprint"] == datasets.provenance["data"]["train"]["fingerprint"]
  assert len(datasets.train["chosen_tokens"]) == 30 and len(datasets.eval["chosen_tokens"]) == 10
  assert datasets.provenance["data"]["eval"] == {"split_of": str(path), "examples": 10}
  # The same file and seed give the same split (in a fresh run directory), another seed another.
  again = load_datasets(config, tmp_path / "again")
  assert again.provenance["data"]["split"] == split
  assert again.provenance["arrays_sha256"] == datasets.provenance["arrays_sha256"]
  config.data.eval_split_seed = 8
  other = load_datasets(config, tmp_path / "other")
  assert other.provenance["data"]["split"]["fingerprints"]["eval"] != split["fingerprints"]["eval"]
  # The held-out pairs are those of split_by_prompt, whole prompts.
  expected = inputs.split_by_prompt([r["prompt"] for r in rows], 0.25, seed=7)[1]
  assert len({rows[i]["prompt"] for i in expected}) == 5
  # run.json keeps the record.
  rundir.write_run_info(tmp_path / "run", **datasets.provenance)
  assert json.loads((tmp_path / "run" / "run.json").read_text())["data"]["split"] == split


def test_eval_fraction_with_an_eval_file_or_toy_data_is_refused(tmp_path):
  path, _ = _pairs_file(tmp_path / "pairs.jsonl")
  both = tiny_config("reward_model", data__train=str(path), data__eval=str(path), data__eval_fraction=0.2)
  with pytest.raises(ValueError, match="data.eval .* and data.eval_fraction .* are both set"):
    load_datasets(both, tmp_path / "run")
  with pytest.raises(ValueError, match="data.train, which is empty"):
    load_datasets(tiny_config("reward_model", data__eval_fraction=0.2), tmp_path / "toy")
  with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
    load_datasets(tiny_config("reward_model", data__train=str(path), data__eval_fraction=1.0), tmp_path / "x")


def test_mismatched_pairs_hand_example():
  # Row layout: [bos, prompt..., completion..., eos, pad...]; loss mask on completion + eos.
  tokens = np.array([[1, 10, 11, 20, 21, 2, 0, 0],
                     [1, 12, 30, 2, 0, 0, 0, 0],
                     [1, 13, 14, 15, 40, 41, 42, 2]])
  attention = tokens != 0
  loss_mask = np.zeros_like(attention)
  loss_mask[0, 3:6] = loss_mask[1, 2:4] = loss_mask[2, 4:8] = True
  kl = inputs.mismatched_pairs({"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask}, pad_id=0)
  np.testing.assert_array_equal(kl["kl_tokens"], [[1, 10, 11, 30, 2, 0, 0, 0],
                                                  [1, 12, 40, 41, 42, 2, 0, 0],
                                                  [1, 13, 14, 15, 20, 21, 2, 0]])
  np.testing.assert_array_equal(kl["kl_loss_mask"], [[0, 0, 0, 1, 1, 0, 0, 0],
                                                     [0, 0, 1, 1, 1, 1, 0, 0],
                                                     [0, 0, 0, 0, 1, 1, 1, 0]])
  np.testing.assert_array_equal(kl["kl_attention_mask"], kl["kl_tokens"] != 0)
