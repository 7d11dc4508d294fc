"""The one registry helper: registration, lookup, errors with close matches."""

import pytest

from rlhf_jax.registry import Registry


def test_register_decorator_and_direct_value():
  registry = Registry("widget")

  @registry.register("alpha")
  def alpha():
    return 1

  registry.register("beta", 2)
  assert registry.get("alpha") is alpha
  assert registry.get("beta") == 2
  assert registry.names() == ("alpha", "beta")
  assert "alpha" in registry and "gamma" not in registry
  assert list(registry) == ["alpha", "beta"] and len(registry) == 2
  assert registry.items() == [("alpha", alpha), ("beta", 2)]


def test_duplicate_name_refused_unless_overwrite():
  registry = Registry("widget")
  registry.register("alpha", 1)
  with pytest.raises(ValueError, match="widget 'alpha' is already registered"):
    registry.register("alpha", 2)
  registry.register("alpha", 3, overwrite=True)
  assert registry.get("alpha") == 3


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_names_refused(name):
  with pytest.raises(ValueError, match="non-empty string"):
    Registry("widget").register(name, 1)


def test_unknown_name_lists_close_matches_then_every_name():
  registry = Registry("objective")
  for name in ("dpo", "kto", "orpo", "simpo", "reward_model"):
    registry.register(name, name)
  with pytest.raises(ValueError) as error:
    registry.get("dpp")
  message = str(error.value)
  assert message.startswith("unknown objective 'dpp'; did you mean 'dpo'?")
  assert message.endswith("Valid objective names: dpo, kto, orpo, reward_model, simpo.")
  with pytest.raises(ValueError) as error:
    registry.get("zzzzzz")
  assert "did you mean" not in str(error.value)
  assert str(error.value).startswith("unknown objective 'zzzzzz'. Valid objective names:")
  with pytest.raises(ValueError, match="unknown objective None"):
    registry.get(None)
