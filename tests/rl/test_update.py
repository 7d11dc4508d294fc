"""The rollout and the update of one iteration, against step-by-step references.

- rollout: the old log-probs (the sampler's) and the reference's log-probs equal
  log-softmaxes of full forward passes of the policy and of the reference on the sampled
  tokens, computed in NumPy; the critic's values are its full forward at the slots
  before each completion token.
- update: epochs x shuffled minibatches in one jitted scan equal the train step called
  minibatch by minibatch in Python on the same permutations; the adaptive KL controller
  moves the coefficient by Ziegler et al.'s formula; the rollout metrics equal NumPy's.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax import models
from rlhf_jax.rl import update as update_lib
from rlhf_jax.rl.rollout import make_rollout_fn
from rlhf_jax.train import networks, objectives, step as step_lib
from rlhf_jax.train.components import FAST_COMPILE_OPTIONS
from rlhf_jax.train.state import TrainState

_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE_OPTIONS)
VOCAB, P, N = 20, 5, 6
CONFIG = models.get_preset("tiny", vocab_size=VOCAB, max_len=16)


def _prompts(batch=4, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, P + 1, size=batch)
  tokens = np.zeros((batch, P), np.int32)
  mask = np.zeros((batch, P), bool)
  for i, length in enumerate(lengths):
    tokens[i, P - length:] = [1] + list(rng.integers(3, VOCAB, size=length - 1))
    mask[i, P - length:] = True
  return jnp.asarray(tokens), jnp.asarray(mask)


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_rollout_log_probs_and_values_against_full_forward_passes():
  model = networks.PolicyWithValue(CONFIG, CONFIG)
  tokens, mask = _prompts()
  params = _jit(model.init)(jax.random.key(0), tokens, mask)["params"]
  reference = _jit(model.init)(jax.random.key(1), tokens, mask)["params"]["policy"]
  sampling = models.SamplingConfig(max_new_tokens=N, temperature=0.8, eos_id=2, num_samples=2, cache_segments=1)
  layout = objectives.RolloutLayout(P, N, temperature=0.8)
  rollout = _jit(make_rollout_fn(objectives.get("ppo"), model, sampling, layout))(
      params, reference, tokens, mask, jnp.arange(4), jax.random.key(3))
  rows, full_mask = np.asarray(rollout["tokens"]), np.asarray(rollout["attention_mask"])
  completion_mask = np.asarray(rollout["completion_mask"])
  assert rows.shape == (8, P + N) and completion_mask.any(1).all()
  np.testing.assert_array_equal(completion_mask.sum(1), rollout["lengths"])
  policy = models.Transformer(CONFIG)
  apply = _jit(lambda p, t, m: policy.apply({"params": p}, t, m))
  for name, which in (("logprobs", params["policy"]), ("ref_logprobs", reference)):
    log_probs = _log_softmax(np.asarray(apply(which, rows, full_mask))[:, P - 1:P - 1 + N] / 0.8)
    expected = np.take_along_axis(log_probs, rows[:, P:, None], -1)[..., 0]
    np.testing.assert_allclose(rollout[name], np.where(completion_mask, expected, 0), atol=2e-5, err_msg=name)
  values = _jit(lambda p, t, m: models.ValueModel(CONFIG).apply({"params": p}, t, m))(params["value"], rows, full_mask)
  np.testing.assert_allclose(rollout["values"], np.where(completion_mask, np.asarray(values)[:, P - 1:P - 1 + N], 0),
                             atol=1e-5)


def _scored_rollout(seed=0, rows=8):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, VOCAB, size=(rows, P + N)).astype(np.int32)
  lengths = rng.integers(1, N + 1, size=rows)
  completion_mask = np.arange(N)[None] < lengths[:, None]
  attention = np.concatenate([np.ones((rows, P), bool), completion_mask], 1)
  logprobs = np.where(completion_mask, -rng.uniform(0.5, 3, (rows, N)), 0).astype(np.float32)
  return {"tokens": jnp.asarray(tokens), "attention_mask": jnp.asarray(attention),
          "completion_mask": jnp.asarray(completion_mask), "logprobs": jnp.asarray(logprobs),
          "ref_logprobs": jnp.asarray(np.where(completion_mask, logprobs - rng.uniform(0, 0.5, (rows, N)), 0),
                                      jnp.float32),
          "scores": jnp.asarray(rng.normal(size=rows), jnp.float32), "stopped": jnp.asarray(lengths < N)}


def test_update_is_epochs_of_shuffled_minibatches_of_the_train_step():
  model = models.Transformer(CONFIG)
  arrays = _scored_rollout()
  params = _jit(model.init)(jax.random.key(0), arrays["tokens"], arrays["attention_mask"])["params"]
  tx = optax.apply_if_finite(optax.sgd(0.05), 10)  # linear in the gradients: rounding stays small
  objective = objectives.get("grpo")
  settings = objectives.GRPOSettings(adaptive_kl_target=0.3, adaptive_kl_horizon=50.0)
  layout = objectives.Layout(rollout=objectives.RolloutLayout(P, N))
  base = jax.random.key_data(jax.random.key(7))
  state = update_lib.OnlineState(
      train=TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), rng=base),
      kl_coef=jnp.float32(0.1))
  key = jax.random.key(11)
  update = _jit(update_lib.make_update_fn(objective, model, tx, settings=settings, layout=layout, group_size=2,
                                          epochs=2, minibatches=2))
  new_state, metrics = update(state, arrays, key)

  # The same by hand: prepare, then per epoch a permutation and two train steps.
  rollout = objectives.Rollout(
      tokens=arrays["tokens"], attention_mask=arrays["attention_mask"], completion_mask=arrays["completion_mask"],
      logprobs=arrays["logprobs"], scores=arrays["scores"], stopped=arrays["stopped"], kl_coef=jnp.float32(0.1),
      ref_logprobs=arrays["ref_logprobs"], group_size=2)
  batch = _jit(lambda r: objective.prepare(r, settings))(rollout)
  step = _jit(step_lib.train_step_fn(objective, model, tx, settings=settings, layout=layout))
  train = state.train
  losses = []
  for epoch in range(2):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), 8))
    assert sorted(order) == list(range(8))
    for half in (order[:4], order[4:]):
      train, step_metrics = step(train, {k: v[half] for k, v in batch.items()}, jax.random.wrap_key_data(base))
      losses.append(float(step_metrics["loss"]))
  assert int(new_state.train.step) == 4
  for a, b in zip(jax.tree.leaves(new_state.train.params), jax.tree.leaves(train.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-5)

  # Rollout metrics and the adaptive KL controller, by hand.
  mask = np.asarray(arrays["completion_mask"])
  kl = np.where(mask, np.asarray(arrays["logprobs"], np.float64) - np.asarray(arrays["ref_logprobs"]), 0).sum(1)
  scores = np.asarray(arrays["scores"], np.float64)
  np.testing.assert_allclose(metrics["kl"], kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["reward_mean"], scores.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["reward_std"], scores.std(), rtol=1e-5)
  np.testing.assert_allclose(metrics["rlhf_reward_mean"], (scores - 0.1 * kl).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["completion_length"], mask.sum(1).mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["eos_fraction"], np.mean(arrays["stopped"]), rtol=1e-6)
  expected_coef = 0.1 * (1 + np.clip(kl.mean() / 0.3 - 1, -0.2, 0.2) * 8 / 50.0)
  np.testing.assert_allclose(new_state.kl_coef, expected_coef, rtol=1e-5)


def test_explained_variance():
  rng = np.random.default_rng(0)
  returns = rng.normal(size=(4, 5))
  values = returns + 0.3 * rng.normal(size=(4, 5))
  mask = rng.random((4, 5)) < 0.7
  r, v = returns[mask], values[mask]
  expected = 1 - np.var(r - v) / np.var(r)
  np.testing.assert_allclose(update_lib.explained_variance(jnp.asarray(values), jnp.asarray(returns),
                                                           jnp.asarray(mask)), expected, rtol=1e-5)
