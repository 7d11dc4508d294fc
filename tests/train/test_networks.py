"""The networks an objective trains: the preset with the data's vocabulary, reward models
with K heads or K independently initialised members (rewards [B, members x heads], each
member equal to a lone reward model with its parameters), and the policy part of a
policy with a critic."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import models
from rlhf_jax.train import networks

SETTINGS = networks.ModelSettings(preset="tiny", vocab_size=0, param_dtype="float32", dtype=None, remat=None)


def _inputs():
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 20, size=(3, 6)), jnp.int32)
  return tokens, jnp.ones(tokens.shape, jnp.bool_)


def test_model_config_takes_the_data_vocabulary_unless_set():
  config = networks.model_config(SETTINGS, 20, max_len=8)
  assert (config.vocab_size, config.max_len) == (20, 8)
  assert config == models.get_preset("tiny", vocab_size=20, max_len=8, param_dtype="float32")
  wider = dataclasses.replace(SETTINGS, vocab_size=64, dtype="bfloat16", remat=True)
  config = networks.model_config(wider, 20)
  assert (config.vocab_size, config.dtype, config.remat) == (64, "bfloat16", True)
  with pytest.raises(ValueError, match="model.vocab_size 10 is smaller than the data's vocabulary \\(20 ids\\)"):
    networks.model_config(dataclasses.replace(SETTINGS, vocab_size=10), 20)


@pytest.mark.slow  # about 15 s on 2 quiet cores; CI runs it with make test-slow
def test_ensemble_members_are_independent_reward_models():
  settings = dataclasses.replace(SETTINGS, reward_heads=2, ensemble_models=3)
  ensemble = networks.build_model(settings, 20, "reward", max_len=8)
  tokens, mask = _inputs()
  params = ensemble.init(jax.random.key(0), tokens, mask)["params"]
  rewards = networks.apply_reward(ensemble, params, tokens, mask)
  assert rewards.shape == (3, 6) and rewards.dtype == jnp.float32
  single = networks.build_model(dataclasses.replace(settings, ensemble_models=1), 20, "reward", max_len=8)
  assert isinstance(single, models.RewardModel)
  for member in range(3):
    member_params = jax.tree.map(lambda x: x[member], params["members"])
    expected = single.apply({"params": member_params}, tokens, mask)
    np.testing.assert_allclose(rewards[:, 2 * member:2 * member + 2], expected, rtol=1e-5, atol=1e-5)
  first = jax.tree.leaves(params["members"])[0]
  assert not np.allclose(first[0], first[1])  # each member has its own initialisation


def test_policy_with_value_and_its_policy_part():
  model = networks.build_model(SETTINGS, 20, "policy_value", max_len=8)
  tokens, mask = _inputs()
  params = model.init(jax.random.key(1), tokens, mask)["params"]
  logits, values = model.apply({"params": params}, tokens, mask)
  assert logits.shape == (3, 6, 20) and values.shape == (3, 6)
  policy, policy_params = networks.policy_part(model, params)
  np.testing.assert_allclose(networks.apply_policy(policy, policy_params, tokens, mask), logits, rtol=1e-6)
  alone = networks.build_model(SETTINGS, 20, "policy", max_len=8)
  assert networks.policy_part(alone, policy_params) == (alone, policy_params)
  with pytest.raises(ValueError, match="unknown model kind 'critic'"):
    networks.build_model(SETTINGS, 20, "critic")
  with pytest.raises(ValueError, match="must be >= 1, got 0 and 1"):
    networks.build_model(dataclasses.replace(SETTINGS, reward_heads=0), 20, "reward")
