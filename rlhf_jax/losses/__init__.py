"""Functional RLHF objectives: pure, jit-able, per-example, documented.

Import them directly (`from rlhf_jax import losses; losses.dpo(...)`) or by name through
the registry (`losses.get("dpo")`, `losses.names()`) so that configs compose objectives.
"""

from rlhf_jax.losses.dpo_family import DPO_VARIANTS, dpo
from rlhf_jax.losses.policy import (
    AGGREGATIONS,
    GRPO_SCALES,
    KL_KINDS,
    AdaptiveKLState,
    adaptive_kl_init,
    adaptive_kl_update,
    aggregate,
    gae,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    masked_sum,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    sequence_logprobs,
    whiten,
)
from rlhf_jax.losses.preference import kto, kto_reference_kl, orpo, simpo
from rlhf_jax.losses.registry import get, names, register
from rlhf_jax.losses.reward import (
    bradley_terry,
    bradley_terry_soft,
    bradley_terry_ties,
    crowd_bt,
    plackett_luce,
    reward_centering,
)

__all__ = [
    "AGGREGATIONS",
    "AdaptiveKLState",
    "DPO_VARIANTS",
    "GRPO_SCALES",
    "KL_KINDS",
    "adaptive_kl_init",
    "adaptive_kl_update",
    "aggregate",
    "bradley_terry",
    "bradley_terry_soft",
    "bradley_terry_ties",
    "crowd_bt",
    "dpo",
    "gae",
    "get",
    "grpo_advantages",
    "kl_penalty",
    "kto",
    "kto_reference_kl",
    "masked_mean",
    "masked_sum",
    "names",
    "orpo",
    "plackett_luce",
    "ppo_policy_loss",
    "ppo_value_loss",
    "register",
    "reward_centering",
    "rloo_advantages",
    "sequence_logprobs",
    "simpo",
    "whiten",
]
