"""Objectives by name, so configs can compose them: `get("dpo")`, `get("ipo")`, `names()`.

The names are the public function names, the DPO variant functions without their
"_loss" suffix: `get("ipo")` is `ipo_loss`, `get("dpo_sigmoid")` is `dpo_sigmoid_loss`.
A misspelt name fails with the close matches and every valid name.
"""

from __future__ import annotations

from typing import Callable

# Modules by their full path: the package attribute `dpo` is the function, not the module.
import rlhf_jax.losses.dpo_family as _dpo_family
import rlhf_jax.losses.policy as _policy
import rlhf_jax.losses.preference as _preference
import rlhf_jax.losses.reward as _reward
from rlhf_jax.registry import Registry

__all__ = ["LOSSES", "get", "names", "register"]

LOSSES: Registry[Callable[..., object]] = Registry("objective")

for _fn in (
    # Reward models.
    _reward.bradley_terry,
    _reward.bradley_terry_soft,
    _reward.bradley_terry_ties,
    _reward.crowd_bt,
    _reward.plackett_luce,
    _reward.reward_centering,
    # Offline preference optimization.
    _dpo_family.dpo,
    _preference.simpo,
    _preference.orpo,
    _preference.kto,
    # Online policy optimization.
    _policy.sequence_logprobs,
    _policy.kl_penalty,
    _policy.gae,
    _policy.whiten,
    _policy.ppo_policy_loss,
    _policy.ppo_value_loss,
    _policy.grpo_advantages,
    _policy.rloo_advantages,
):
  LOSSES.register(_fn.__name__, _fn)

# Each DPO variant by itself, under its function's name without "_loss" ("ipo" is
# `ipo_loss`); `dpo(variant=...)` calls the same functions.
for _, _fn in _dpo_family.DPO_VARIANT_LOSSES.items():
  LOSSES.register(_fn.__name__.removesuffix("_loss"), _fn)
del _fn


def names() -> tuple[str, ...]:
  """The registered objective names, sorted."""
  return LOSSES.names()


def get(name: str) -> Callable[..., object]:
  """The objective registered as `name`; an unknown name raises ValueError with the close
  matches and every valid name."""
  return LOSSES.get(name)


def register(name: str, fn: Callable[..., object], *, overwrite: bool = False) -> None:
  """Adds a user objective, so a config can name it like a built-in one."""
  if not callable(fn):
    raise ValueError(f"objective {name!r} must be callable, got {type(fn).__name__}.")
  LOSSES.register(name, fn, overwrite=overwrite)
