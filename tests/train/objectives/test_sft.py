"""The SFT objective (`objectives/sft.py`): the completion tokens' NLL, averaged over the
batch's tokens or per sequence, against NumPy on the model's raw outputs."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.train import objectives

from objectives_testlib import run_objective
from train_testlib import numpy_sequence_logps, tiny_config


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_sft_loss_matches_numpy(policy, aggregation):
  config = tiny_config("sft", loss__aggregation=aggregation)
  arrays = data.toy_sft_data(5, seed=2, vocab_size=32, max_length=16).arrays
  batch = {k: jnp.asarray(v) for k, v in arrays.items() if k != "example_index"}
  settings = objectives.settings_from(objectives.get("sft"), config.loss)
  batch["loss_denominator"] = objectives.get("sft").denominator(batch, settings)
  loss, outputs = run_objective("sft", policy.model, config, policy.params, batch)

  logits = policy.outputs(arrays["tokens"], arrays["attention_mask"])
  nll = -numpy_sequence_logps(logits, arrays["tokens"], arrays["loss_mask"])
  tokens = arrays["loss_mask"][:, 1:].sum(-1)
  expected = nll.sum() / tokens.sum() if aggregation == "token_mean" else np.mean(nll / tokens)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(outputs["nll_sum"]), nll, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(outputs["num_tokens"]), tokens)
  np.testing.assert_allclose(np.asarray(outputs["loss"]), nll / tokens, rtol=1e-4)


def test_sft_settings_name_the_field():
  with pytest.raises(ValueError, match="config loss.aggregation must be one of 'token_mean', 'sequence_mean'"):
    objectives.get("sft").settings(aggregation="sum")
