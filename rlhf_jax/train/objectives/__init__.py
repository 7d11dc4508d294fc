"""Training objectives by name, offline and online alike: one contract (`contract.py`).

    objective = objectives.get("dpo")
    settings = objectives.settings_from(objective, {"beta": 0.2})    # train.config.loss_settings(config)
    loss, outputs = objective.fn(params, batch, rng, model=model, settings=settings,
                                 layout=objectives.Layout())

Adding an objective is adding one function with its settings dataclass:

    @dataclasses.dataclass(frozen=True)
    class MySettings:
      beta: float = objectives.loss_default(losses.my_loss, "beta")

    @objectives.register("my_loss", settings=MySettings, data="pairs", model="policy")
    def my_loss(params, batch, rng, *, model, settings, layout):
      ...
      return objectives.weighted_sum(per_example, batch), {"loss": per_example}

`data` is the batch kind ("pairs", "sequences", "unpaired" from `rlhf_jax.data`, or
"rollouts" for online objectives, see `contract.py`), `model` the network ("policy" or
"reward"), `reference=True` asks for the frozen reference's log-probs in the batch.
An online objective adds `prepare` (scored rollout -> batch) and, for a critic,
`value_model=True`:

    @objectives.register("my_pg", settings=MyPGSettings, data="rollouts", model="policy",
                         reference=True, prepare=prepare_my_pg)
    def my_pg(params, batch, rng, *, model, settings, layout): ...   # layout.rollout

Offline: sft, reward_model, dpo, simpo, orpo, kto. Online (trained by `rlhf_jax.rl`):
ppo (`ppo.py`), grpo and rloo (`grpo.py`), online_dpo (`online_dpo.py`).

Weighting and accumulation: the loss is `sum_i weight_i * loss_i / batch["loss_denominator"]`,
where the train step computes the denominator once for the whole global batch (by
default the sum of the weights, `batch["weight"]` or ones) and hands it to every
microbatch. Summing the microbatch losses therefore gives exactly the loss (and
gradient) of the full batch, for any weights. It also hands over `batch["loss_rows"]`,
the number of rows of the global batch: a per-example output `x_i * loss_rows /
loss_denominator` averages, over the rows of all microbatches, to `sum_i x_i /
loss_denominator` (how the online objectives report their loss components exactly).
"""

from rlhf_jax.train.objectives.contract import (
    DATA_KINDS,
    MODEL_KINDS,
    OBJECTIVES,
    OFFLINE_DATA,
    Layout,
    Objective,
    Rollout,
    RolloutLayout,
    check_choice,
    config_defaults,
    get,
    loss_default,
    names,
    register,
    settings_from,
    weighted_sum,
)
from rlhf_jax.train.objectives.logps import completion_forward, completion_logps, pair_logps, sequence_logps
# Importing the modules registers their objectives.
from rlhf_jax.train.objectives.kto import KTOSettings, kto
from rlhf_jax.train.objectives.preference import DPOSettings, ORPOSettings, SimPOSettings, dpo, orpo, simpo
from rlhf_jax.train.objectives.reward_model import (
    RELIABILITY_PARAM,
    REWARD_LOSSES,
    RewardModelSettings,
    pair_rewards,
    reliability_table,
    reward_model,
)
from rlhf_jax.train.objectives.sft import SFTSettings, sft
from rlhf_jax.train.objectives.ppo import PPOSettings, ppo
from rlhf_jax.train.objectives.grpo import GRPOSettings, RLOOSettings, grpo, rloo
from rlhf_jax.train.objectives.online_dpo import OnlineDPOSettings, online_dpo

__all__ = [
    "DATA_KINDS",
    "DPOSettings",
    "GRPOSettings",
    "KTOSettings",
    "Layout",
    "MODEL_KINDS",
    "OBJECTIVES",
    "OFFLINE_DATA",
    "ORPOSettings",
    "Objective",
    "OnlineDPOSettings",
    "PPOSettings",
    "RELIABILITY_PARAM",
    "REWARD_LOSSES",
    "RLOOSettings",
    "RewardModelSettings",
    "Rollout",
    "RolloutLayout",
    "SFTSettings",
    "SimPOSettings",
    "check_choice",
    "completion_forward",
    "completion_logps",
    "config_defaults",
    "dpo",
    "get",
    "grpo",
    "kto",
    "loss_default",
    "names",
    "online_dpo",
    "orpo",
    "pair_logps",
    "pair_rewards",
    "ppo",
    "register",
    "reliability_table",
    "reward_model",
    "rloo",
    "sequence_logps",
    "settings_from",
    "sft",
    "simpo",
    "weighted_sum",
]
