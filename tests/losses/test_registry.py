"""The registry maps names to the public functions and rejects unknown names clearly."""

import numpy as np
import pytest

from rlhf_jax import losses

# Every objective the foundation issue names; the registry must serve each by its name.
EXPECTED = {
    "bradley_terry", "bradley_terry_soft", "bradley_terry_ties", "crowd_bt", "plackett_luce",
    "reward_centering", "dpo", "simpo", "orpo", "kto", "sequence_logprobs", "kl_penalty", "gae",
    "whiten", "ppo_policy_loss", "ppo_value_loss", "grpo_advantages", "rloo_advantages",
}


def test_names_cover_every_objective():
  assert EXPECTED <= set(losses.names())
  assert list(losses.names()) == sorted(losses.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_get_returns_the_public_function(name):
  assert losses.get(name) is getattr(losses, name)


def test_unknown_name_lists_valid_ones():
  with pytest.raises(ValueError, match="unknown objective 'dpo_v9'.*bradley_terry.*simpo"):
    losses.get("dpo_v9")


def test_register_user_objective_and_refuse_silent_overwrite():
  def squared_margin(chosen_rewards, rejected_rewards):
    return (1.0 - (chosen_rewards - rejected_rewards)) ** 2

  losses.register("test_squared_margin", squared_margin)
  try:
    fn = losses.get("test_squared_margin")
    np.testing.assert_allclose(np.asarray(fn(np.array([2.0]), np.array([0.5]))), [0.25])
    with pytest.raises(ValueError, match="already registered"):
      losses.register("test_squared_margin", squared_margin)
    with pytest.raises(ValueError, match="already registered"):
      losses.register("dpo", squared_margin)
  finally:
    losses.registry._REGISTRY.pop("test_squared_margin", None)
  with pytest.raises(ValueError, match="callable"):
    losses.register("not_callable", 3.0)
