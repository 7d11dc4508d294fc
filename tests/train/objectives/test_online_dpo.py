"""Online DPO (`objectives/online_dpo.py`): pairs ranked by the reward, and the DPO loss on
them against NumPy.

Every reference is computed independently in float64 NumPy (GAE by its backward
recursion, whitening with the unbiased variance, log-softmaxes of the model's full
forward pass, not the objectives' slot-wise logits)."""

import jax
import numpy as np
import pytest

from rlhf_jax import models
from rlhf_jax.train import objectives

from objectives_testlib import CONFIG, as_numpy, fast_jit, numpy_completion_logps, synthetic_rollout, with_denominator
from train_testlib import log_sigmoid


def test_prepare_online_dpo_ranks_each_pair():
  rollout, _ = synthetic_rollout(rows=8, group_size=2)
  r = as_numpy(rollout)
  batch = fast_jit(lambda x: objectives.get("online_dpo").prepare(x, objectives.OnlineDPOSettings()))(rollout)
  ref_sums = np.where(r["completion_mask"], r["ref_logprobs"], 0).sum(1)
  for pair in range(4):
    a, b = 2 * pair, 2 * pair + 1
    chosen, rejected = (b, a) if r["scores"][b] > r["scores"][a] else (a, b)
    np.testing.assert_array_equal(batch["chosen_tokens"][pair], r["tokens"][chosen])
    np.testing.assert_array_equal(batch["rejected_completion_mask"][pair], r["completion_mask"][rejected])
    np.testing.assert_allclose(batch["ref_chosen_logps"][pair], ref_sums[chosen], rtol=1e-5)
    np.testing.assert_allclose(batch["ref_rejected_logps"][pair], ref_sums[rejected], rtol=1e-5)
    assert batch["weight"][pair] == float(r["scores"][a] != r["scores"][b])
  assert batch["weight"][0] == 0.0  # the tie of the first group carries no preference
  with pytest.raises(ValueError, match="rollout.num_samples=2"):
    objectives.get("online_dpo").prepare(synthetic_rollout(rows=8, group_size=4)[0], objectives.OnlineDPOSettings())


def test_online_dpo_loss_is_dpo_on_the_ranked_pairs():
  model = models.Transformer(CONFIG)
  rollout, layout = synthetic_rollout(rows=8, group_size=2)
  params = fast_jit(model.init)(jax.random.key(3), rollout.tokens, rollout.attention_mask)["params"]
  settings = objectives.OnlineDPOSettings(beta=0.5)
  objective = objectives.get("online_dpo")
  batch = fast_jit(lambda x: objective.prepare(x, settings))(rollout)
  loss, outputs = fast_jit(lambda p, b: objective.fn(p, with_denominator(objective, b, settings), None, model=model,
                                                    settings=settings, layout=layout))(params, batch)
  logits = np.asarray(fast_jit(model.apply)({"params": params}, rollout.tokens, rollout.attention_mask))
  logps, _ = numpy_completion_logps(logits, rollout.tokens, 1.0)
  sums = np.where(np.asarray(rollout.completion_mask), logps, 0).sum(1)
  r = as_numpy(rollout)
  ref_sums = np.where(r["completion_mask"], r["ref_logprobs"], 0).sum(1)
  total, weights = 0.0, 0.0
  for pair in range(4):
    a, b = 2 * pair, 2 * pair + 1
    chosen, rejected = (b, a) if r["scores"][b] > r["scores"][a] else (a, b)
    z = 0.5 * ((sums[chosen] - ref_sums[chosen]) - (sums[rejected] - ref_sums[rejected]))
    weight = float(r["scores"][a] != r["scores"][b])
    total += -weight * log_sigmoid(z)
    weights += weight
  np.testing.assert_allclose(float(loss), total / weights, rtol=2e-4)
  assert set(outputs) >= {"chosen_reward", "rejected_reward", "margin", "accuracy"}
  # Entropy: the mean over the pair's two completions of each one's token-mean entropy.
  _, log_softmax = numpy_completion_logps(logits, rollout.tokens, 1.0)
  mask = r["completion_mask"]
  per_row = np.where(mask, -(np.exp(log_softmax) * log_softmax).sum(-1), 0).sum(1) / mask.sum(1)
  for pair in range(4):
    a, b = 2 * pair, 2 * pair + 1
    np.testing.assert_allclose(outputs["entropy"][pair], (per_row[a] + per_row[b]) / 2, rtol=1e-4)
