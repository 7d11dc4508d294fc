"""The losses registry (`rlhf_jax/losses/registry.py`) maps names to the public functions
and rejects unknown names clearly."""

import numpy as np
import pytest

from rlhf_jax import losses
from rlhf_jax.registry import Registry

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


def test_register_user_objective_and_refuse_silent_overwrite(monkeypatch):
  # A scratch copy of the registry, so the user objective does not outlive this test.
  scratch = Registry("objective")
  for name, fn in losses.registry.LOSSES.items():
    scratch.register(name, fn)
  monkeypatch.setattr(losses.registry, "LOSSES", scratch)

  def squared_margin(chosen_rewards, rejected_rewards):
    return (1.0 - (chosen_rewards - rejected_rewards)) ** 2

  losses.register("test_squared_margin", squared_margin)
  fn = losses.get("test_squared_margin")
  np.testing.assert_allclose(np.asarray(fn(np.array([2.0]), np.array([0.5]))), [0.25])
  with pytest.raises(ValueError, match="already registered"):
    losses.register("test_squared_margin", squared_margin)
  with pytest.raises(ValueError, match="already registered"):
    losses.register("dpo", squared_margin)
  with pytest.raises(ValueError, match="callable"):
    losses.register("not_callable", 3.0)
  losses.register("dpo", squared_margin, overwrite=True)
  assert losses.get("dpo") is squared_margin


def test_user_objective_does_not_outlive_its_test():
  # The test above registered into a scratch copy: the real registry is untouched.
  assert "test_squared_margin" not in losses.names()
  assert losses.get("dpo") is losses.dpo


# The DPO variants by themselves: registry name -> the `dpo(variant=...)` name.
VARIANT_NAMES = {
    "dpo_sigmoid": "sigmoid", "cdpo": "cdpo", "dpo_robust": "robust", "ipo": "ipo",
    "hinge": "hinge", "exo_pair": "exo_pair", "nca_pair": "nca_pair", "bco_pair": "bco_pair",
    "sppo_hard": "sppo_hard", "aot": "aot", "aot_unpaired": "aot_unpaired",
    "apo_zero": "apo_zero", "apo_down": "apo_down", "discopop": "discopop",
    "dpo_sigmoid_norm": "sigmoid_norm",
}


@pytest.mark.parametrize("name", sorted(VARIANT_NAMES))
def test_dpo_variants_are_registered_under_their_own_names(name):
  fn = losses.get(name)
  assert fn is getattr(losses, f"{name}_loss")
  assert fn is losses.DPO_VARIANT_LOSSES.get(VARIANT_NAMES[name])


def test_every_dpo_variant_is_registered_by_itself():
  assert sorted(VARIANT_NAMES.values()) == sorted(losses.DPO_VARIANTS)
  assert set(VARIANT_NAMES) <= set(losses.names())


def test_ipo_by_name_computes_ipo():
  # (d - 1/(2 beta))^2 with d = 3 - 1 = 2 and beta = 0.5: (2 - 1)^2 = 1.
  ipo = losses.get("ipo")
  np.testing.assert_allclose(ipo(np.array([3.0]), np.array([1.0]), beta=0.5), [1.0])


@pytest.mark.parametrize("misspelt, suggestion", [
    ("ipoo", "'ipo'"), ("bradley_terr", "'bradley_terry'"), ("kl_penlty", "'kl_penalty'"),
    ("simpoo", "'simpo'")])
def test_misspelt_name_gives_close_matches_then_every_name(misspelt, suggestion):
  with pytest.raises(ValueError) as error:
    losses.get(misspelt)
  message = str(error.value)
  assert message.startswith(f"unknown objective {misspelt!r}; did you mean {suggestion}")
  assert message.endswith(f"Valid objective names: {', '.join(losses.names())}.")


def test_far_off_name_suggests_nothing():
  with pytest.raises(ValueError) as error:
    losses.get("zzzzzzzz")
  assert "did you mean" not in str(error.value)
  assert "Valid objective names: aot, aot_unpaired" in str(error.value)
