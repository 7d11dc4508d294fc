"""Training objectives by name, offline and online alike: one contract (`contract.py`).

    objective = objectives.get("dpo")
    settings = objectives.settings_from(objective, config.loss)      # at the top of a loop
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

Weighting and accumulation: the loss is `sum_i weight_i * loss_i / batch["loss_denominator"]`,
where the train step computes the denominator once for the whole global batch (by
default the sum of the weights, `batch["weight"]` or ones) and hands it to every
microbatch. Summing the microbatch losses therefore gives exactly the loss (and
gradient) of the full batch, for any weights.
"""

from rlhf_jax.train.objectives.contract import (
    DATA_KINDS,
    MODEL_KINDS,
    OBJECTIVES,
    OFFLINE_DATA,
    Layout,
    Objective,
    check_choice,
    config_defaults,
    get,
    loss_default,
    names,
    register,
    settings_from,
    weighted_sum,
)
from rlhf_jax.train.objectives.logps import pair_logps, sequence_logps
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

__all__ = [
    "DATA_KINDS",
    "DPOSettings",
    "KTOSettings",
    "Layout",
    "MODEL_KINDS",
    "OBJECTIVES",
    "OFFLINE_DATA",
    "ORPOSettings",
    "Objective",
    "RELIABILITY_PARAM",
    "REWARD_LOSSES",
    "RewardModelSettings",
    "SFTSettings",
    "SimPOSettings",
    "check_choice",
    "config_defaults",
    "dpo",
    "get",
    "kto",
    "loss_default",
    "names",
    "orpo",
    "pair_logps",
    "pair_rewards",
    "register",
    "reliability_table",
    "reward_model",
    "sequence_logps",
    "settings_from",
    "sft",
    "simpo",
    "weighted_sum",
]
