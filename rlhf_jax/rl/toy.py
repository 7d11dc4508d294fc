"""The toy task of the tiny online presets: a reward whose best policy is known.

Toy prompts and completions are token ids written as numbers (`rl.prompts`); the reward
of a completion is how often it holds the toy data's GOOD marker (`data.TOY_GOOD`, the
word "3"). A policy that writes only GOOD until `rollout.max_new_tokens` scores the most;
with a KL penalty the best policy is the reference tilted towards GOOD.

    python scripts/train.py --config=configs/ppo.py:preset=tiny --workdir=/tmp/ppo
    # reward.function defaults to rlhf_jax.rl.toy:good_marker_count in the tiny preset
"""

from __future__ import annotations

from typing import Sequence

from rlhf_jax.data import toy

__all__ = ["good_marker_count"]


def good_marker_count(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
  """The number of GOOD markers (token `data.TOY_GOOD`) in each toy completion."""
  del prompts
  marker = str(toy.TOY_GOOD)
  return [float(completion.split().count(marker)) for completion in completions]
