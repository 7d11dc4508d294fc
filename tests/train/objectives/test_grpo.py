"""GRPO and RLOO (`objectives/grpo.py`): group baselines and the GRPO loss with its KL
term against NumPy.

Every reference is computed independently in float64 NumPy (GAE by its backward
recursion, whitening with the unbiased variance, log-softmaxes of the model's full
forward pass, not the objectives' slot-wise logits)."""

import jax
import numpy as np

from rlhf_jax import models
from rlhf_jax.train import objectives

from objectives_testlib import (
    CONFIG, N, as_numpy, fast_jit, numpy_completion_logps, synthetic_rollout, with_denominator)


def test_prepare_grpo_and_rloo_group_baselines():
  rollout, _ = synthetic_rollout(rows=8, group_size=4)
  r = as_numpy(rollout)
  mask = r["completion_mask"]
  settings = objectives.GRPOSettings(missing_eos_penalty=1.0)
  grpo = fast_jit(lambda x: objectives.get("grpo").prepare(x, settings))(rollout)
  scores = (r["scores"] - 1.0 * (~r["stopped"])).reshape(2, 4)
  expected = (scores - scores.mean(1, keepdims=True)) / (scores.std(1, ddof=1, keepdims=True) + 1e-4)
  np.testing.assert_allclose(grpo["advantages"], np.where(mask, expected.reshape(-1)[:, None], 0), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(grpo["kl_coef"], np.full(8, 0.3), rtol=1e-6)
  dr = fast_jit(lambda x: objectives.get("grpo").prepare(x, objectives.GRPOSettings(scale="none")))(rollout)
  plain = r["scores"].reshape(2, 4)
  np.testing.assert_allclose(dr["advantages"][:, 0], (plain - plain.mean(1, keepdims=True)).reshape(-1), rtol=1e-5,
                             atol=1e-6)

  rloo = fast_jit(lambda x: objectives.get("rloo").prepare(x, objectives.RLOOSettings(kl_coef=0.7)))(rollout)
  # kl_coef comes from the rollout (the loop's controller), not from the settings.
  sequence = r["scores"] - 0.3 * np.where(mask, r["logprobs"] - r["ref_logprobs"], 0).sum(1)
  grouped = sequence.reshape(2, 4)
  leave_one_out = np.stack([grouped[:, i] - np.delete(grouped, i, axis=1).mean(1) for i in range(4)], 1)
  np.testing.assert_allclose(rloo["advantages"], np.where(mask, leave_one_out.reshape(-1)[:, None], 0), rtol=1e-5,
                             atol=1e-5)


def test_grpo_loss_with_kl_term_matches_numpy():
  model = models.Transformer(CONFIG)
  rollout, layout = synthetic_rollout(rows=8, group_size=4)
  params = fast_jit(model.init)(jax.random.key(2), rollout.tokens, rollout.attention_mask)["params"]
  for aggregation in ("sequence_mean", "constant_normalizer"):
    settings = objectives.GRPOSettings(aggregation=aggregation, clip_eps=0.2)
    objective = objectives.get("grpo")
    batch = fast_jit(lambda x: objective.prepare(x, settings))(rollout)
    loss, _ = fast_jit(lambda p, b: objective.fn(p, with_denominator(objective, b, settings), None, model=model,
                                                settings=settings, layout=layout))(params, batch)
    logits = fast_jit(model.apply)({"params": params}, rollout.tokens, rollout.attention_mask)
    logps, _ = numpy_completion_logps(logits, rollout.tokens, 1.0)
    b = {k: np.asarray(v, np.float64) for k, v in batch.items()}
    mask = b["completion_mask"].astype(bool)
    ratio = np.exp(logps - b["old_logprobs"])
    policy = np.maximum(-b["advantages"] * ratio, -b["advantages"] * np.clip(ratio, 0.8, 1.2))
    log_ratio = logps - b["ref_logprobs"]
    kl = np.exp(-log_ratio) - 1 + log_ratio
    per_token = np.where(mask, policy + 0.3 * kl, 0.0)
    expected = ((per_token.sum(1) / mask.sum(1)).mean() if aggregation == "sequence_mean"
                else per_token.sum() / (8 * N))
    np.testing.assert_allclose(float(loss), expected, rtol=2e-4, atol=1e-6, err_msg=aggregation)
