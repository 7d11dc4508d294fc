"""PPO (`objectives/ppo.py`): `prepare` (KL rewards, GAE, whitening) and the clipped
policy and value losses against NumPy; microbatches give the minibatch gradient.

Every reference is computed independently in float64 NumPy (GAE by its backward
recursion, whitening with the unbiased variance, log-softmaxes of the model's full
forward pass, not the objectives' slot-wise logits)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.train import networks
from rlhf_jax.train import objectives
from rlhf_jax.train import step as step_lib
from rlhf_jax.train.state import TrainState

from objectives_testlib import (
    CONFIG, N, P, as_numpy, fast_jit, numpy_completion_logps, numpy_gae, numpy_whiten, synthetic_rollout,
    with_denominator)


@pytest.mark.parametrize("estimator, whiten_rewards, whiten_advantages, eos_penalty",
                         [("k1", False, True, 0.0), ("k3", True, False, 2.5)])
def test_prepare_ppo_is_kl_rewards_then_gae(estimator, whiten_rewards, whiten_advantages, eos_penalty):
  rollout, _ = synthetic_rollout()
  settings = objectives.PPOSettings(kl_estimator=estimator, whiten_rewards=whiten_rewards,
                                    whiten_advantages=whiten_advantages, missing_eos_penalty=eos_penalty,
                                    gamma=0.97, lam=0.9)
  batch = fast_jit(lambda r: objectives.get("ppo").prepare(r, settings))(rollout)
  r = as_numpy(rollout)
  mask = r["completion_mask"]
  log_ratio = r["logprobs"] - r["ref_logprobs"]
  kl = log_ratio if estimator == "k1" else np.exp(-log_ratio) - 1 + log_ratio
  rewards = np.where(mask, -0.3 * kl, 0.0)
  scores = r["scores"] - eos_penalty * (~r["stopped"])
  last = mask.sum(1) - 1
  rewards[np.arange(len(last)), last] += scores
  if whiten_rewards:
    rewards = numpy_whiten(rewards, mask, shift_mean=False)
  advantages, returns = numpy_gae(rewards, r["values"], mask, 0.97, 0.9)
  if whiten_advantages:
    advantages = numpy_whiten(advantages, mask)
  np.testing.assert_allclose(batch["advantages"], advantages, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(batch["returns"], returns, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(batch["old_values"], r["values"], atol=0)
  np.testing.assert_array_equal(batch["completion_mask"], mask)


@pytest.mark.parametrize("aggregation, temperature", [("token_mean", 1.0), ("sequence_mean", 0.7)])
def test_ppo_loss_matches_numpy(aggregation, temperature):
  model = networks.PolicyWithValue(CONFIG, CONFIG)
  rollout, layout = synthetic_rollout(temperature=temperature)
  params = fast_jit(model.init)(jax.random.key(1), rollout.tokens, rollout.attention_mask)["params"]
  settings = objectives.PPOSettings(aggregation=aggregation, value_clip_eps=0.1, value_coef=0.3, clip_eps=0.1,
                                    entropy_coef=0.01)
  objective = objectives.get("ppo")
  batch = fast_jit(lambda x: objective.prepare(x, settings))(rollout)
  loss, outputs = fast_jit(lambda p, b: objective.fn(p, with_denominator(objective, b, settings), None,
                                                    model=model, settings=settings, layout=layout))(params, batch)
  logits, values = fast_jit(model.apply)({"params": params}, rollout.tokens, rollout.attention_mask)
  logps, log_softmax = numpy_completion_logps(logits, rollout.tokens, 1 / temperature)
  b = {k: np.asarray(v, np.float64) for k, v in batch.items()}
  mask = b["completion_mask"].astype(bool)
  ratio = np.exp(logps - b["old_logprobs"])
  policy = np.maximum(-b["advantages"] * ratio, -b["advantages"] * np.clip(ratio, 0.9, 1.1))
  new_values = np.asarray(values, np.float64)[:, P - 1:P - 1 + N]
  clipped = np.clip(new_values, b["old_values"] - 0.1, b["old_values"] + 0.1)
  value = 0.5 * np.maximum((new_values - b["returns"]) ** 2, (clipped - b["returns"]) ** 2)
  entropy = -(np.exp(log_softmax) * log_softmax).sum(-1)
  per_token = policy + 0.3 * value - 0.01 * entropy

  def reduce(x):
    x = np.where(mask, x, 0.0)
    if aggregation == "token_mean":
      return x.sum() / mask.sum()
    return (x.sum(1) / mask.sum(1)).mean()

  np.testing.assert_allclose(float(loss), reduce(per_token), rtol=2e-4, atol=1e-6)
  # The reported components average (over rows) to their share of the loss.
  np.testing.assert_allclose(float(np.mean(outputs["policy_loss"])), reduce(policy), rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(float(np.mean(outputs["value_loss"])), reduce(value), rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(outputs["entropy"], np.where(mask, entropy, 0).sum(1) / mask.sum(1), rtol=1e-4)


def test_microbatches_give_the_minibatch_gradient():
  """The per-row losses over the step's denominator add up across microbatches: one
  step with 2 microbatches equals one step on the whole minibatch."""
  model = networks.PolicyWithValue(CONFIG, CONFIG)
  rollout, layout = synthetic_rollout(rows=8)
  params = fast_jit(model.init)(jax.random.key(4), rollout.tokens, rollout.attention_mask)["params"]
  tx = optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=10)
  objective = objectives.get("ppo")
  settings = objectives.PPOSettings()
  batch = fast_jit(lambda x: objective.prepare(x, settings))(rollout)
  results = []
  for micro in (1, 2):
    step = fast_jit(step_lib.train_step_fn(objective, model, tx, settings=settings, layout=layout, microbatches=micro))
    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    new_state, metrics = step(state, batch, jax.random.key(0))
    results.append((new_state.params, metrics))
  for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for name in ("loss", "policy_loss", "value_loss"):
    np.testing.assert_allclose(results[0][1][name], results[1][1][name], rtol=1e-4, atol=1e-6, err_msg=name)
