"""Online objectives (ppo, grpo, rloo, online_dpo): `prepare` and the losses against NumPy.

Every reference here is computed independently in float64 NumPy: GAE by its backward
recursion, whitening with the unbiased variance, the clipped surrogate and value losses
from log-softmaxes of the model's full forward pass (not the objectives' slot-wise
logits), group baselines by their definitions.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import models
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import networks, objectives, step as step_lib
from rlhf_jax.train.components import FAST_COMPILE_OPTIONS
from rlhf_jax.train.state import TrainState

from train_testlib import log_sigmoid

VOCAB, P, N = 24, 4, 5
# Compiling dominates these small programs: no backend optimisation.
_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE_OPTIONS)
CONFIG = models.get_preset("tiny", vocab_size=VOCAB, max_len=16)


def _rollout(rows=8, group_size=2, seed=0, temperature=1.0):
  """A synthetic scored rollout of random tokens with ragged completions."""
  rng = np.random.default_rng(seed)
  prompt_lengths = rng.integers(1, P + 1, size=rows)
  lengths = rng.integers(1, N + 1, size=rows)
  lengths[0] = N  # one row runs to the end
  tokens = np.zeros((rows, P + N), np.int32)
  attention = np.zeros((rows, P + N), bool)
  completion_mask = np.arange(N)[None, :] < lengths[:, None]
  for i in range(rows):
    tokens[i, P - prompt_lengths[i]:P] = rng.integers(3, VOCAB, size=prompt_lengths[i])
    attention[i, P - prompt_lengths[i]:P] = True
    tokens[i, P:P + lengths[i]] = rng.integers(3, VOCAB, size=lengths[i])
    attention[i, P:P + lengths[i]] = True
  logprobs = np.where(completion_mask, -rng.uniform(0.5, 4.0, (rows, N)), 0.0).astype(np.float32)
  ref = np.where(completion_mask, logprobs + rng.normal(0, 0.3, (rows, N)), 0.0).astype(np.float32)
  values = np.where(completion_mask, rng.normal(0, 1, (rows, N)), 0.0).astype(np.float32)
  scores = rng.normal(0, 1, rows).astype(np.float32)
  scores[1] = scores[0]  # a tie inside the first group
  stopped = lengths < N
  rollout = objectives.Rollout(
      tokens=jnp.asarray(tokens), attention_mask=jnp.asarray(attention), completion_mask=jnp.asarray(completion_mask),
      logprobs=jnp.asarray(logprobs), scores=jnp.asarray(scores), stopped=jnp.asarray(stopped),
      kl_coef=jnp.float32(0.3), ref_logprobs=jnp.asarray(ref), values=jnp.asarray(values), group_size=group_size)
  layout = objectives.Layout(rollout=objectives.RolloutLayout(P, N, temperature))
  return rollout, layout


def _np(rollout):
  return {k: np.asarray(getattr(rollout, k), np.float64 if getattr(rollout, k).dtype == jnp.float32 else None)
          for k in ("tokens", "attention_mask", "completion_mask", "logprobs", "ref_logprobs", "values", "scores",
                    "stopped")}


def _numpy_gae(rewards, values, mask, gamma, lam):
  advantages = np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    valid = np.flatnonzero(mask[b])
    next_value, next_advantage = 0.0, 0.0
    for t in valid[::-1]:
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      advantages[b, t] = delta + gamma * lam * next_advantage
      next_value, next_advantage = values[b, t], advantages[b, t]
  return advantages, np.where(mask, advantages + values, 0.0)


def _numpy_whiten(x, mask, shift_mean=True):
  valid = x[mask]
  mean = valid.mean()
  var = ((valid - mean) ** 2).sum() / max(valid.size - 1, 1)
  out = (x - mean) / np.sqrt(var + 1e-8) + (0 if shift_mean else mean)
  return np.where(mask, out, 0.0)


@pytest.mark.parametrize("estimator, whiten_rewards, whiten_advantages, eos_penalty",
                         [("k1", False, True, 0.0), ("k3", True, False, 2.5)])
def test_prepare_ppo_is_kl_rewards_then_gae(estimator, whiten_rewards, whiten_advantages, eos_penalty):
  rollout, _ = _rollout()
  settings = objectives.PPOSettings(kl_estimator=estimator, whiten_rewards=whiten_rewards,
                                    whiten_advantages=whiten_advantages, missing_eos_penalty=eos_penalty,
                                    gamma=0.97, lam=0.9)
  batch = _jit(lambda r: objectives.get("ppo").prepare(r, settings))(rollout)
  r = _np(rollout)
  mask = r["completion_mask"]
  log_ratio = r["logprobs"] - r["ref_logprobs"]
  kl = log_ratio if estimator == "k1" else np.exp(-log_ratio) - 1 + log_ratio
  rewards = np.where(mask, -0.3 * kl, 0.0)
  scores = r["scores"] - eos_penalty * (~r["stopped"])
  last = mask.sum(1) - 1
  rewards[np.arange(len(last)), last] += scores
  if whiten_rewards:
    rewards = _numpy_whiten(rewards, mask, shift_mean=False)
  advantages, returns = _numpy_gae(rewards, r["values"], mask, 0.97, 0.9)
  if whiten_advantages:
    advantages = _numpy_whiten(advantages, mask)
  np.testing.assert_allclose(batch["advantages"], advantages, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(batch["returns"], returns, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(batch["old_values"], r["values"], atol=0)
  np.testing.assert_array_equal(batch["completion_mask"], mask)


def test_prepare_grpo_and_rloo_group_baselines():
  rollout, _ = _rollout(rows=8, group_size=4)
  r = _np(rollout)
  mask = r["completion_mask"]
  grpo = _jit(lambda x: objectives.get("grpo").prepare(x, objectives.GRPOSettings(missing_eos_penalty=1.0)))(rollout)
  scores = (r["scores"] - 1.0 * (~r["stopped"])).reshape(2, 4)
  expected = (scores - scores.mean(1, keepdims=True)) / (scores.std(1, ddof=1, keepdims=True) + 1e-4)
  np.testing.assert_allclose(grpo["advantages"], np.where(mask, expected.reshape(-1)[:, None], 0), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(grpo["kl_coef"], np.full(8, 0.3), rtol=1e-6)
  dr = _jit(lambda x: objectives.get("grpo").prepare(x, objectives.GRPOSettings(scale="none")))(rollout)
  plain = r["scores"].reshape(2, 4)
  np.testing.assert_allclose(dr["advantages"][:, 0], (plain - plain.mean(1, keepdims=True)).reshape(-1), rtol=1e-5,
                             atol=1e-6)

  rloo = _jit(lambda x: objectives.get("rloo").prepare(x, objectives.RLOOSettings(kl_coef=0.7)))(rollout)
  # kl_coef comes from the rollout (the loop's controller), not from the settings.
  sequence = r["scores"] - 0.3 * np.where(mask, r["logprobs"] - r["ref_logprobs"], 0).sum(1)
  grouped = sequence.reshape(2, 4)
  leave_one_out = np.stack([grouped[:, i] - np.delete(grouped, i, axis=1).mean(1) for i in range(4)], 1)
  np.testing.assert_allclose(rloo["advantages"], np.where(mask, leave_one_out.reshape(-1)[:, None], 0), rtol=1e-5,
                             atol=1e-5)


def test_prepare_online_dpo_ranks_each_pair():
  rollout, _ = _rollout(rows=8, group_size=2)
  r = _np(rollout)
  batch = _jit(lambda x: objectives.get("online_dpo").prepare(x, objectives.OnlineDPOSettings()))(rollout)
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
    objectives.get("online_dpo").prepare(_rollout(rows=8, group_size=4)[0], objectives.OnlineDPOSettings())


def _numpy_completion_logps(logits, tokens, scale):
  """Log-probs [R, N] of the completion tokens from full-forward logits [R, P + N, V]."""
  scaled = np.asarray(logits, np.float64)[:, P - 1:P - 1 + N] * scale
  log_softmax = scaled - scaled.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  return np.take_along_axis(log_softmax, np.asarray(tokens)[:, P:, None], -1)[..., 0], log_softmax


def _with_denominator(objective, batch, settings):
  batch = dict(batch)
  batch["loss_denominator"] = objective.denominator(batch, settings)
  batch["loss_rows"] = jnp.float32(next(iter(batch.values())).shape[0])
  return batch


@pytest.mark.parametrize("aggregation, temperature", [("token_mean", 1.0), ("sequence_mean", 0.7)])
def test_ppo_loss_matches_numpy(aggregation, temperature):
  model = networks.PolicyWithValue(CONFIG, CONFIG)
  rollout, layout = _rollout(temperature=temperature)
  params = _jit(model.init)(jax.random.key(1), rollout.tokens, rollout.attention_mask)["params"]
  settings = objectives.PPOSettings(aggregation=aggregation, value_clip_eps=0.1, value_coef=0.3, clip_eps=0.1,
                                    entropy_coef=0.01)
  objective = objectives.get("ppo")
  batch = _jit(lambda x: objective.prepare(x, settings))(rollout)
  loss, outputs = _jit(lambda p, b: objective.fn(p, _with_denominator(objective, b, settings), None,
                                                    model=model, settings=settings, layout=layout))(params, batch)
  logits, values = _jit(model.apply)({"params": params}, rollout.tokens, rollout.attention_mask)
  logps, log_softmax = _numpy_completion_logps(logits, rollout.tokens, 1 / temperature)
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


def test_grpo_loss_with_kl_term_matches_numpy():
  model = models.Transformer(CONFIG)
  rollout, layout = _rollout(rows=8, group_size=4)
  params = _jit(model.init)(jax.random.key(2), rollout.tokens, rollout.attention_mask)["params"]
  for aggregation in ("sequence_mean", "constant_normalizer"):
    settings = objectives.GRPOSettings(aggregation=aggregation, clip_eps=0.2)
    objective = objectives.get("grpo")
    batch = _jit(lambda x: objective.prepare(x, settings))(rollout)
    loss, _ = _jit(lambda p, b: objective.fn(p, _with_denominator(objective, b, settings), None, model=model,
                                                settings=settings, layout=layout))(params, batch)
    logits = _jit(model.apply)({"params": params}, rollout.tokens, rollout.attention_mask)
    logps, _ = _numpy_completion_logps(logits, rollout.tokens, 1.0)
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


def test_online_dpo_loss_is_dpo_on_the_ranked_pairs():
  model = models.Transformer(CONFIG)
  rollout, layout = _rollout(rows=8, group_size=2)
  params = _jit(model.init)(jax.random.key(3), rollout.tokens, rollout.attention_mask)["params"]
  settings = objectives.OnlineDPOSettings(beta=0.5)
  objective = objectives.get("online_dpo")
  batch = _jit(lambda x: objective.prepare(x, settings))(rollout)
  loss, outputs = _jit(lambda p, b: objective.fn(p, _with_denominator(objective, b, settings), None, model=model,
                                                    settings=settings, layout=layout))(params, batch)
  logits = np.asarray(_jit(model.apply)({"params": params}, rollout.tokens, rollout.attention_mask))
  logps, _ = _numpy_completion_logps(logits, rollout.tokens, 1.0)
  sums = np.where(np.asarray(rollout.completion_mask), logps, 0).sum(1)
  r = _np(rollout)
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
  _, log_softmax = _numpy_completion_logps(logits, rollout.tokens, 1.0)
  mask = r["completion_mask"]
  per_row = np.where(mask, -(np.exp(log_softmax) * log_softmax).sum(-1), 0).sum(1) / mask.sum(1)
  for pair in range(4):
    a, b = 2 * pair, 2 * pair + 1
    np.testing.assert_allclose(outputs["entropy"][pair], (per_row[a] + per_row[b]) / 2, rtol=1e-4)


def test_microbatches_give_the_minibatch_gradient():
  """The per-row losses over the step's denominator add up across microbatches: one
  step with 2 microbatches equals one step on the whole minibatch."""
  model = networks.PolicyWithValue(CONFIG, CONFIG)
  rollout, layout = _rollout(rows=8)
  params = _jit(model.init)(jax.random.key(4), rollout.tokens, rollout.attention_mask)["params"]
  tx = optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=10)
  objective = objectives.get("ppo")
  settings = objectives.PPOSettings()
  batch = _jit(lambda x: objective.prepare(x, settings))(rollout)
  results = []
  for micro in (1, 2):
    step = _jit(step_lib.train_step_fn(objective, model, tx, settings=settings, layout=layout, microbatches=micro))
    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    new_state, metrics = step(state, batch, jax.random.key(0))
    results.append((new_state.params, metrics))
  for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for name in ("loss", "policy_loss", "value_loss"):
    np.testing.assert_allclose(results[0][1][name], results[1][1][name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["ppo", "grpo", "rloo", "online_dpo"])
def test_online_objectives_share_the_registry_and_config(name):
  objective = objectives.get(name)
  assert objective.online and objective.data == "rollouts" and objective.prepare is not None
  assert objective.value_model == (name == "ppo")
  assert name in objectives.names(online=True) and name not in objectives.names(online=False)
  config = config_lib.base_config(name, "tiny")
  assert config.loss.to_dict() == dataclasses.asdict(objective.settings())
  assert "eval" not in config and "batch_size" not in config.train and "rollout" in config


def test_bad_online_settings_name_the_field():
  with pytest.raises(ValueError, match="config loss.aggregation must be one of"):
    objectives.PPOSettings(aggregation="mean")
  with pytest.raises(ValueError, match="config loss.kl_estimator must be one of"):
    objectives.GRPOSettings(kl_estimator="k4")
  with pytest.raises(ValueError, match="config loss.scale must be one of"):
    objectives.GRPOSettings(scale="std")
  with pytest.raises(ValueError, match="loss.dual_clip must be 0"):
    objectives.RLOOSettings(dual_clip=0.5)
  with pytest.raises(ValueError, match="loss.lam must lie in"):
    objectives.PPOSettings(lam=1.5)
