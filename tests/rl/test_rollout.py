"""One rollout (`rl.rollout`): the sampled tokens' old log-probs, the reference's
log-probs and the critic's values, each against an independent NumPy log-softmax (or a
plain forward) of the full rows, zero outside the completions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import models
from rlhf_jax.rl.rollout import make_rollout_fn
from rlhf_jax.train import networks
from rlhf_jax.train import objectives

VOCAB, P, N = 24, 4, 5


def _numpy_completion_logps(logits, tokens, temperature):
  """Log-probs [R, N] of the completion tokens: slot P - 1 + j predicts token P + j."""
  scaled = np.asarray(logits, np.float64)[:, P - 1:P - 1 + N] / temperature
  log_softmax = scaled - scaled.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  return np.take_along_axis(log_softmax, np.asarray(tokens)[:, P:, None], -1)[..., 0]


@pytest.mark.slow  # about 15 s on 2 quiet cores; CI runs it with make test-slow
def test_ppo_rollout_matches_independent_forwards():
  config = models.get_preset("tiny", vocab_size=VOCAB, max_len=16)
  model = networks.PolicyWithValue(config, config)
  prompts = np.array([[0, 0, 7, 8], [5, 6, 7, 9]], np.int32)
  prompt_mask = prompts != 0
  params = model.init(jax.random.key(0), jnp.asarray(np.concatenate([prompts, prompts], 1)),
                      jnp.ones((2, 2 * P), bool))["params"]
  # A reference that differs from the policy, so its log-probs are its own.
  ref_params = jax.tree.map(lambda x: x * 1.1, params["policy"])
  temperature = 0.8
  sampling = models.SamplingConfig(max_new_tokens=N, temperature=temperature, eos_id=2, pad_id=0, num_samples=2)
  layout = objectives.RolloutLayout(P, N, temperature)
  rollout = jax.jit(make_rollout_fn(objectives.get("ppo"), model, sampling, layout))(
      params, ref_params, prompts, prompt_mask, np.arange(2, dtype=np.int32), jax.random.key(3))
  out = jax.device_get(rollout)
  tokens, attention, mask = out["tokens"], out["attention_mask"], out["completion_mask"]
  assert tokens.shape == (4, P + N) and mask.shape == (4, N)
  np.testing.assert_array_equal(tokens[:, :P], np.repeat(prompts, 2, axis=0))  # prompt-major rows
  np.testing.assert_array_equal(out["lengths"], mask.sum(1))

  policy = models.Transformer(config)
  for name, policy_params in (("logprobs", params["policy"]), ("ref_logprobs", ref_params)):
    logits = policy.apply({"params": policy_params}, tokens, attention)
    expected = np.where(mask, _numpy_completion_logps(logits, tokens, temperature), 0.0)
    np.testing.assert_allclose(out[name], expected, rtol=1e-4, atol=1e-4, err_msg=name)
  values = models.ValueModel(config).apply({"params": params["value"]}, tokens, attention)
  np.testing.assert_allclose(out["values"], np.where(mask, np.asarray(values)[:, P - 1:P - 1 + N], 0.0),
                             rtol=1e-4, atol=1e-5)
  assert not np.allclose(out["logprobs"][mask], out["ref_logprobs"][mask])
