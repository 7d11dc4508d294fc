"""Log-probs of the objectives (`objectives/logps.py`): summed completion log-probs of
right-padded rows and of pairs in each of their three layouts (two rows, one shared-prompt
row, padding-free rows), per-token log-probs and entropies of rollout rows, all against
a NumPy log-softmax of the model's full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import data
from rlhf_jax.data import packing
from rlhf_jax.train import objectives, shared_prompt
from rlhf_jax.train.objectives import logps as logps_lib

from objectives_testlib import fast_jit
from train_testlib import numpy_sequence_logps


def test_pair_log_probs_in_every_layout(policy):
  arrays = data.toy_preference_data(4, seed=7, vocab_size=32, max_length=16).arrays
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}
  expected = {}
  for part in ("chosen", "rejected"):
    logits = policy.outputs(arrays[f"{part}_tokens"], arrays[f"{part}_attention_mask"])
    expected[f"{part}_logps"] = numpy_sequence_logps(logits, arrays[f"{part}_tokens"], arrays[f"{part}_loss_mask"])
    expected[f"{part}_lengths"] = arrays[f"{part}_loss_mask"][:, 1:].sum(-1)
  layout = shared_prompt.layout_for({"train": arrays})
  packed = {k: jnp.asarray(v) for k, v in packing.pack_pairs(arrays, rows=2, share_prompt=False).items()}
  for name, got in (
      ("two rows", fast_jit(lambda p, b: objectives.pair_logps(policy.model, p, b))(policy.params, batch)),
      ("shared prompt", fast_jit(lambda p, b: objectives.pair_logps(policy.model, p, b, layout))(policy.params, batch)),
      ("padding-free", fast_jit(lambda p, b: objectives.pair_logps(policy.model, p, b))(policy.params, packed))):
    for key in ("chosen_logps", "rejected_logps"):
      np.testing.assert_allclose(np.asarray(got[key]), expected[key], rtol=1e-4, atol=1e-4, err_msg=f"{name} {key}")
    for key in ("chosen_lengths", "rejected_lengths"):
      np.testing.assert_array_equal(np.asarray(got[key]), expected[key], err_msg=f"{name} {key}")


def test_rollout_log_probs_and_entropy(policy):
  prompt, new = 5, 4
  rng = np.random.default_rng(2)
  tokens = rng.integers(5, 32, size=(3, prompt + new)).astype(np.int32)
  attention = np.ones(tokens.shape, bool)
  attention[2, prompt + 2:] = False  # the last row stopped after two completion tokens
  completion_mask = attention[:, prompt:]
  temperature = 0.7
  layout = objectives.RolloutLayout(prompt, new, temperature)

  def run(p):
    logits, _ = objectives.completion_forward(policy.model, p, jnp.asarray(tokens), jnp.asarray(attention), layout)
    return (objectives.completion_logps(logits, jnp.asarray(tokens), jnp.asarray(completion_mask), layout),
            logps_lib.token_entropy(logits, jnp.asarray(completion_mask)))

  logps, entropy = jax.device_get(fast_jit(run)(policy.params))
  full = policy.outputs(tokens, attention)[:, prompt - 1:prompt - 1 + new] / temperature
  log_softmax = full - full.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  expected = np.take_along_axis(log_softmax, tokens[:, prompt:, None], -1)[..., 0]
  np.testing.assert_allclose(logps, np.where(completion_mask, expected, 0.0), rtol=1e-4, atol=1e-4)
  expected_entropy = -(np.exp(log_softmax) * log_softmax).sum(-1)
  np.testing.assert_allclose(entropy, np.where(completion_mask, expected_entropy, 0.0), rtol=1e-4, atol=1e-4)
