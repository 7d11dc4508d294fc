"""Shared pieces of the objective tests: toy pairs, a jitted model forward (the NumPy
references' input), a synthetic scored rollout, and NumPy references (GAE, whitening,
completion log-probs) written independently of the objectives."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import data
from rlhf_jax import models
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import networks
from rlhf_jax.train import objectives
from rlhf_jax.train.components import FAST_COMPILE_OPTIONS


def toy_pairs(n=4, seed=0):
  return data.toy_preference_data(n, seed=seed, vocab_size=32, max_length=16).arrays


fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE_OPTIONS)


class ForwardModel:
  """A model, its parameters and a jitted raw forward (the NumPy references' input)."""

  def __init__(self, config, kind, key):
    self.model = networks.build_model(config_lib.model_settings(config), 32, kind)
    tokens = jnp.zeros((2, 8), jnp.int32)
    self.params = fast_jit(lambda k: nn.unbox(self.model.init(k, tokens, jnp.ones_like(tokens, bool))["params"]))(
        jax.random.key(key))
    self._apply = fast_jit(lambda p, t, m: self.model.apply({"params": p}, t, m))

  def outputs(self, tokens, mask):
    return np.asarray(self._apply(self.params, tokens, mask), np.float64)


def run_objective(name, model, config, params, batch):
  objective = objectives.get(name)
  settings = objectives.settings_from(objective, config.loss)
  return fast_jit(lambda p, b: objective.fn(p, b, jax.random.key(0), model=model, settings=settings,
                                        layout=objectives.Layout()))(params, batch)


def pair_rewards(reward_model, arrays):
  chosen = reward_model.outputs(arrays["chosen_tokens"], arrays["chosen_attention_mask"])
  rejected = reward_model.outputs(arrays["rejected_tokens"], arrays["rejected_attention_mask"])
  assert chosen.shape == (len(arrays["chosen_tokens"]), 2)
  return chosen, rejected


VOCAB, P, N = 24, 4, 5


CONFIG = models.get_preset("tiny", vocab_size=VOCAB, max_len=16)


def synthetic_rollout(rows=8, group_size=2, seed=0, temperature=1.0):
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


def as_numpy(rollout):
  return {k: np.asarray(getattr(rollout, k), np.float64 if getattr(rollout, k).dtype == jnp.float32 else None)
          for k in ("tokens", "attention_mask", "completion_mask", "logprobs", "ref_logprobs", "values", "scores",
                    "stopped")}


def numpy_gae(rewards, values, mask, gamma, lam):
  advantages = np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    valid = np.flatnonzero(mask[b])
    next_value, next_advantage = 0.0, 0.0
    for t in valid[::-1]:
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      advantages[b, t] = delta + gamma * lam * next_advantage
      next_value, next_advantage = values[b, t], advantages[b, t]
  return advantages, np.where(mask, advantages + values, 0.0)


def numpy_whiten(x, mask, shift_mean=True):
  valid = x[mask]
  mean = valid.mean()
  var = ((valid - mean) ** 2).sum() / max(valid.size - 1, 1)
  out = (x - mean) / np.sqrt(var + 1e-8) + (0 if shift_mean else mean)
  return np.where(mask, out, 0.0)


def numpy_completion_logps(logits, tokens, scale):
  """Log-probs [R, N] of the completion tokens from full-forward logits [R, P + N, V]."""
  scaled = np.asarray(logits, np.float64)[:, P - 1:P - 1 + N] * scale
  log_softmax = scaled - scaled.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  return np.take_along_axis(log_softmax, np.asarray(tokens)[:, P:, None], -1)[..., 0], log_softmax


def with_denominator(objective, batch, settings):
  batch = dict(batch)
  batch["loss_denominator"] = objective.denominator(batch, settings)
  batch["loss_rows"] = jnp.float32(next(iter(batch.values())).shape[0])
  return batch
