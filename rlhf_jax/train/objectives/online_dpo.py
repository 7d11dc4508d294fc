"""Online DPO: two samples per prompt, ranked by the reward, the DPO loss against the reference.

Each iteration the policy samples two completions of every prompt; the one the reward
source scores higher becomes "chosen", the other "rejected", and the pair is trained
with the DPO loss (any `losses.DPO_VARIANTS`) against the frozen reference. Guo et al.
2024, "Direct Language Model Alignment from Online AI Feedback" (arXiv 2402.04792);
Calandriello et al. 2024 (arXiv 2403.08635). A pair whose two scores are equal carries
no preference and gets weight 0.

Log-probs are of the tempered distribution the completions were drawn from
(`RolloutLayout.temperature`, 1 by default: plain DPO).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.train.objectives.contract import Rollout, register
from rlhf_jax.train.objectives.logps import completion_forward, completion_logps, concat, token_entropy
from rlhf_jax.train.objectives.ppo import penalized_scores
from rlhf_jax.train.objectives.preference import DPOSettings, dpo_loss

__all__ = ["OnlineDPOSettings", "online_dpo", "prepare_online_dpo"]


@dataclasses.dataclass(frozen=True)
class OnlineDPOSettings(DPOSettings):
  """Attributes: those of `DPOSettings` (variant, beta, label_smoothing, ...) and
    missing_eos_penalty: subtracted from the score of a completion that did not end
      within max_new_tokens before the two are ranked (as `PPOSettings`); 0 off.
  """

  missing_eos_penalty: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    if self.missing_eos_penalty < 0:
      raise ValueError(f"config loss.missing_eos_penalty must be >= 0, got {self.missing_eos_penalty}.")


def prepare_online_dpo(rollout: Rollout, settings: OnlineDPOSettings) -> dict[str, jax.Array]:
  """Pairs [B] from the rollout's 2B rows (two samples per prompt, consecutive): the
  higher-scored sample is chosen (the first one on a tie, with weight 0)."""
  if rollout.group_size != 2:
    raise ValueError(f"online_dpo ranks two samples per prompt; set rollout.num_samples=2 (got "
                     f"{rollout.group_size}).")
  scores = penalized_scores(rollout, settings.missing_eos_penalty).reshape(-1, 2)
  pairs = scores.shape[0]
  second_better = scores[:, 1] > scores[:, 0]
  chosen = 2 * jnp.arange(pairs) + second_better.astype(jnp.int32)
  rejected = 2 * jnp.arange(pairs) + 1 - second_better.astype(jnp.int32)
  ref = jnp.sum(jnp.where(rollout.completion_mask, rollout.ref_logprobs, 0.0), axis=-1)
  batch = {"weight": (scores[:, 0] != scores[:, 1]).astype(jnp.float32)}
  for part, rows in (("chosen", chosen), ("rejected", rejected)):
    batch[f"{part}_tokens"] = rollout.tokens[rows]
    batch[f"{part}_attention_mask"] = rollout.attention_mask[rows]
    batch[f"{part}_completion_mask"] = rollout.completion_mask[rows]
    batch[f"ref_{part}_logps"] = ref[rows]
  return batch


@register("online_dpo", settings=OnlineDPOSettings, data="rollouts", model="policy", reference=True,
          prepare=prepare_online_dpo)
def online_dpo(params, batch, rng, *, model, settings: OnlineDPOSettings, layout):
  """The DPO loss (`preference.dpo_loss`) on pairs of the policy's own samples."""
  del rng
  rollout = layout.rollout
  tokens = concat(batch["chosen_tokens"], batch["rejected_tokens"])
  mask = concat(batch["chosen_completion_mask"], batch["rejected_completion_mask"])
  logits, _ = completion_forward(model, params, tokens, concat(batch["chosen_attention_mask"],
                                                               batch["rejected_attention_mask"]), rollout)
  logps = jnp.sum(completion_logps(logits, tokens, mask, rollout), axis=-1)
  lengths = jnp.sum(mask, axis=-1).astype(jnp.float32)
  size = batch["chosen_tokens"].shape[0]
  policy = {"chosen_logps": logps[:size], "rejected_logps": logps[size:],
            "chosen_lengths": lengths[:size], "rejected_lengths": lengths[size:]}
  loss, outputs = dpo_loss(policy, batch, settings)
  # The policy's entropy on the pair's completions (a metric, like the PPO family's).
  entropy = losses.masked_mean(token_entropy(jax.lax.stop_gradient(logits), mask), mask, axis=-1)
  outputs["entropy"] = 0.5 * (entropy[:size] + entropy[size:])
  return loss, outputs
