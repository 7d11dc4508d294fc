"""Objectives by name, so configs can compose them: `get("dpo")`, `names()`."""

from __future__ import annotations

from typing import Callable

# Modules by their full path: the package attribute `dpo` is the function, not the module.
from rlhf_jax.losses.dpo_family import dpo as _dpo_fn
import rlhf_jax.losses.policy as _policy
import rlhf_jax.losses.preference as _preference
import rlhf_jax.losses.reward as _reward

_REGISTRY: dict[str, Callable[..., object]] = {
    # Reward models.
    "bradley_terry": _reward.bradley_terry,
    "bradley_terry_soft": _reward.bradley_terry_soft,
    "bradley_terry_ties": _reward.bradley_terry_ties,
    "crowd_bt": _reward.crowd_bt,
    "plackett_luce": _reward.plackett_luce,
    "reward_centering": _reward.reward_centering,
    # Offline preference optimization.
    "dpo": _dpo_fn,
    "simpo": _preference.simpo,
    "orpo": _preference.orpo,
    "kto": _preference.kto,
    # Online policy optimization.
    "sequence_logprobs": _policy.sequence_logprobs,
    "kl_penalty": _policy.kl_penalty,
    "gae": _policy.gae,
    "whiten": _policy.whiten,
    "ppo_policy_loss": _policy.ppo_policy_loss,
    "ppo_value_loss": _policy.ppo_value_loss,
    "grpo_advantages": _policy.grpo_advantages,
    "rloo_advantages": _policy.rloo_advantages,
}


def names() -> tuple[str, ...]:
  """The registered objective names, sorted."""
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Callable[..., object]:
  """Returns the objective registered under `name`; raises ValueError listing valid names."""
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown objective {name!r}; valid names: {', '.join(names())}.") from None


def register(name: str, fn: Callable[..., object], *, overwrite: bool = False) -> None:
  """Adds a user objective, so a config can name it like a built-in one."""
  if not callable(fn):
    raise ValueError(f"objective {name!r} must be callable, got {type(fn).__name__}.")
  if name in _REGISTRY and not overwrite:
    raise ValueError(f"objective {name!r} is already registered; pass overwrite=True to replace it.")
  _REGISTRY[name] = fn
