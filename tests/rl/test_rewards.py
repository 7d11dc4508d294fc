"""Reward sources: ensemble combinations against NumPy, Python functions, and reward-model
checkpoints against a forward pass of the trained parameters on hand-made token rows."""

import jax
import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.rl import rewards
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import networks
from rlhf_jax.train.components import FAST_COMPILE_OPTIONS

from rl_testlib import MAX_LENGTH, MAX_PROMPT_LENGTH


def test_combine_against_numpy():
  rng = np.random.default_rng(0)
  members = rng.normal(size=(7, 3)).astype(np.float32)
  np.testing.assert_allclose(rewards.combine(members, "mean"), members.astype(np.float64).mean(1), rtol=1e-6)
  np.testing.assert_allclose(rewards.combine(members, "min"), members.min(1), rtol=0)
  expected = members.mean(1) - 0.5 * np.sqrt(((members - members.mean(1, keepdims=True)) ** 2).mean(1))
  np.testing.assert_allclose(rewards.combine(members, "mean_minus_std", std_coef=0.5), expected, rtol=1e-5)
  one = members[:, :1]
  for method in rewards.COMBINES:  # a single member is its own score
    np.testing.assert_allclose(rewards.combine(one, method), one[:, 0], rtol=1e-6)
  with pytest.raises(ValueError, match="unknown reward.combine 'max'"):
    rewards.combine(members, "max")


def test_settings_need_exactly_one_source():
  with pytest.raises(ValueError, match="exactly one reward source.*not both"):
    rewards.RewardSettings(checkpoints=("a",), function="m:f")
  with pytest.raises(ValueError, match="exactly one reward source"):
    rewards.RewardSettings()
  with pytest.raises(ValueError, match="reward.combine must be one of"):
    rewards.RewardSettings(function="m:f", combine="median")


def test_function_source_and_its_errors():
  source = rewards.make_reward_source(rewards.RewardSettings(function="rl_testlib:count_token_5"))
  scores = source(["p", "q", "r"], ["5 5 7", "", "6 5"])
  np.testing.assert_array_equal(scores, [[2.0], [0.0], [1.0]])
  assert scores.dtype == np.float32 and source.describe()["file"].endswith("rl_testlib.py")
  with pytest.raises(ValueError, match="must be 'module:function'"):
    rewards.FunctionReward("rl_testlib.count_token_5")
  with pytest.raises(ValueError, match="cannot import module 'no_such_module_here'"):
    rewards.FunctionReward("no_such_module_here:f")
  with pytest.raises(ValueError, match="has no function 'missing'"):
    rewards.FunctionReward("rl_testlib:missing")
  with pytest.raises(ValueError, match=r"returned shape \(2,\) for 3 completions"):
    rewards.FunctionReward("rl_testlib:one_float_too_few")(["a"] * 3, ["b"] * 3)
  with pytest.raises(ValueError, match="non-finite rewards for 1 completions, the first at index 1"):
    rewards.FunctionReward("rl_testlib:nan_for_the_second")(["a"] * 3, ["b", "c", "d"])


def _direct_rewards(workdir, params, config, prompts, completions):
  """[N, 2] rewards from the run's final parameters on rows laid out by hand:
  [bos] prompt (its last tokens) completion [eos], read at the last real token."""
  tokenizer = data.Tokenizer.load(workdir / "tokenizer" / "spm.model")
  rows = []
  for prompt, completion in zip(prompts, completions):
    prompt_ids = tokenizer.encode(prompt)[-(MAX_PROMPT_LENGTH - 1):]
    ids = [tokenizer.bos_id] + prompt_ids + tokenizer.encode(completion) + [tokenizer.eos_id]
    rows.append(ids[:MAX_LENGTH])
  tokens = np.full((len(rows), MAX_LENGTH), tokenizer.pad_id, np.int32)
  mask = np.zeros(tokens.shape, bool)
  for i, ids in enumerate(rows):
    tokens[i, :len(ids)], mask[i, :len(ids)] = ids, True
  model = networks.build_model(config_lib.model_settings(config), tokenizer.vocab_size, "reward")
  apply = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m), compiler_options=FAST_COMPILE_OPTIONS)
  return np.asarray(apply(params, tokens, mask))


def test_reward_model_source_equals_the_checkpoint_evaluated_directly(reward_run):
  workdir, params, config, _ = reward_run
  prompts = ["\n\nHuman: tell me about stone.\n\nAssistant:"] * 3 + ["\n\nHuman: hi\n\nAssistant:"]
  # The third completion is empty (the policy ended at once): scored as [bos] prompt [eos].
  completions = [" please the river", " ugh blue", "", " certainly quiet garden stone"]
  source = rewards.make_reward_source(rewards.RewardSettings(checkpoints=(str(workdir),)))
  assert source.num_members == 2
  members = source(prompts, completions)
  direct = _direct_rewards(workdir, params, config, prompts, completions)
  np.testing.assert_allclose(members, direct, rtol=1e-5, atol=1e-5)
  # An ensemble of two runs (the same one twice here): every head of every run is a
  # member, combined as NumPy says.
  ensemble = rewards.make_reward_source(rewards.RewardSettings(checkpoints=(str(workdir), str(workdir)),
                                                               combine="mean_minus_std", std_coef=2.0))
  both = ensemble(prompts, completions)
  assert both.shape == (4, 4)
  np.testing.assert_allclose(both, np.concatenate([direct, direct], 1), rtol=1e-5, atol=1e-5)
  combined = rewards.combine(both, "mean_minus_std", 2.0)
  np.testing.assert_allclose(combined, direct.mean(1) - 2.0 * np.abs(direct[:, 0] - direct[:, 1]) / 2, rtol=1e-4,
                             atol=1e-5)
  assert ensemble.describe()["checkpoints"][0]["outputs"] == 2


def test_a_missing_reward_run_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="reward.checkpoints: .*nowhere is not a directory"):
    rewards.make_reward_source(rewards.RewardSettings(checkpoints=(str(tmp_path / "nowhere"),)))
