"""One rollout on the devices: sample completions, then the reference's log-probs and the critic's values.

    rollout = rollout_fn(params, ref_params, prompt_tokens, prompt_mask, prompt_ids, key)

A pure function (`make_rollout_fn`), jitted by the loop over the run's mesh:

1. `models.sample` draws `num_samples` completions of every prompt with the KV cache
   (prompt-major rows), with the log-prob of each drawn token under the distribution it
   was drawn from: the "old" log-probs of the update, no second policy pass.
2. The frozen reference (`ref_params`, or with None the policy's base under its LoRA
   adapters, adapters off) scores the same tokens (`objectives.completion_forward`: logits
   at the N slots that predict completion tokens, divided by the temperature), for the
   KL (objectives with `reference`).
3. PPO's critic gives the value of the state before every completion token.

Returns a dict of [R, ...] arrays (R = prompts x num_samples): tokens, attention_mask,
completion_mask, logprobs, stopped, lengths, and ref_logprobs / values when computed.
The scores come later, from the host (`rl.rewards`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlhf_jax import models
from rlhf_jax.train import networks
from rlhf_jax.train import objectives as objectives_lib

__all__ = ["make_rollout_fn"]


def make_rollout_fn(
    objective: objectives_lib.Objective,
    model: Any,
    sampling: models.SamplingConfig,
    layout: objectives_lib.RolloutLayout,
) -> Callable[..., dict[str, jax.Array]]:
  """The pure rollout function of `objective` (see the module docstring).

  Args:
    objective: the online objective (its `reference` and `value_model` decide what is
      computed besides the samples).
    model: the trained network (`Transformer`, or `networks.PolicyWithValue`).
    sampling: how to sample (`num_samples` per prompt, `max_new_tokens` = N).
    layout: the rollout rows' layout (prompt slots P, N, temperature).
  """
  is_pair = isinstance(model, networks.PolicyWithValue)
  policy_module = models.Transformer(model.policy_config) if is_pair else model
  value_module = models.ValueModel(model.value_config) if objective.value_model else None
  reference_module = models.lora.base_model(policy_module)

  def rollout(params, ref_params, prompt_tokens, prompt_mask, prompt_ids, key):
    _, policy_params = networks.policy_part(model, params)
    samples = models.sample(policy_module, policy_params, prompt_tokens, prompt_mask, key, sampling,
                            prompt_ids=prompt_ids)
    mask = samples.completion_mask
    result = {
        "tokens": samples.tokens, "attention_mask": samples.attention_mask, "completion_mask": mask,
        "logprobs": jnp.where(mask, samples.logprobs, 0.0), "stopped": samples.stopped,
        "lengths": samples.lengths,
    }
    if objective.reference:
      # ref_params None: the reference is the policy's frozen base, its LoRA adapters off
      # (`models.lora.base_model`), read from the same parameters.
      reference, reference_params = ((reference_module, policy_params) if ref_params is None
                                     else (policy_module, ref_params))
      logits, _ = objectives_lib.completion_forward(reference, reference_params, samples.tokens,
                                                    samples.attention_mask, layout)
      result["ref_logprobs"] = objectives_lib.completion_logps(logits, samples.tokens, mask, layout)
    if value_module is not None:
      values = value_module.apply({"params": params["value"]}, samples.tokens, samples.attention_mask)
      start = layout.prompt_length - 1
      result["values"] = jnp.where(mask, values[:, start:start + layout.completion_length], 0.0)
    return result

  return rollout
