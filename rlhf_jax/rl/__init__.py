"""Online RLHF: the policy samples, a reward source scores, an objective updates; repeated.

    from rlhf_jax import rl, train
    config = train.base_config("ppo", "tiny")           # or configs/ppo.py:get_config
    results = rl.train(config, "/tmp/ppo")               # resumes if /tmp/ppo has a checkpoint

or `python scripts/train.py --config=configs/ppo.py:preset=tiny --workdir=DIR`, which
dispatches here for every online objective (`objectives.get(name).online`).

Modules: `prompts` (prompt files and toy prompts), `rewards` (reward-model checkpoints,
ensembles and their combination, Python functions), `rollout` (sampling with
`models.generate`'s sampler, reference log-probs, critic values), `update` (prepare +
epochs x shuffled minibatches of the shared train step, the KL controller), `loop`
(`train`), `toy` (the tiny presets' reward). The objectives themselves (ppo, grpo, rloo,
online_dpo) are in `rlhf_jax.train.objectives`, next to the offline ones: one registry.
"""

from rlhf_jax.rl.loop import OnlineComponents, PromptInfo, RolloutSettings, build, load_policy, train
from rlhf_jax.rl.prompts import PROMPT_FORMATS, PromptSettings, Prompts, load_prompts, toy_prompts
from rlhf_jax.rl.rewards import (
    COMBINES,
    FunctionReward,
    ModelReward,
    RewardSettings,
    RewardSource,
    combine,
    make_reward_source,
)
from rlhf_jax.rl.rollout import make_rollout_fn
from rlhf_jax.rl.update import OnlineState, explained_variance, make_update_fn, rollout_metrics

__all__ = [
    "COMBINES",
    "FunctionReward",
    "ModelReward",
    "OnlineComponents",
    "OnlineState",
    "PROMPT_FORMATS",
    "PromptInfo",
    "PromptSettings",
    "Prompts",
    "RewardSettings",
    "RewardSource",
    "RolloutSettings",
    "build",
    "combine",
    "explained_variance",
    "load_policy",
    "load_prompts",
    "make_reward_source",
    "make_rollout_fn",
    "make_update_fn",
    "rollout_metrics",
    "toy_prompts",
    "train",
]
