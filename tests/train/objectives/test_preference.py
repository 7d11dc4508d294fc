"""The DPO objective (`objectives/preference.py`) against NumPy on the model's raw outputs."""

import jax.numpy as jnp
import numpy as np

from objectives_testlib import run_objective, toy_pairs
from train_testlib import log_sigmoid, numpy_sequence_logps, tiny_config


def test_dpo_objective_matches_numpy_with_weights(policy):
  config = tiny_config("dpo")
  arrays = toy_pairs()
  batch = {k: jnp.asarray(v) for k, v in arrays.items() if k != "example_index"}
  rng = np.random.default_rng(0)
  ref_chosen, ref_rejected = rng.normal(-20, 2, 4), rng.normal(-20, 2, 4)
  weight = np.array([1.0, 2.0, 0.5, 0.0], np.float32)
  batch.update(ref_chosen_logps=jnp.asarray(ref_chosen, jnp.float32),
               ref_rejected_logps=jnp.asarray(ref_rejected, jnp.float32),
               weight=jnp.asarray(weight), loss_denominator=jnp.asarray(weight.sum()))
  loss, outputs = run_objective("dpo", policy.model, config, policy.params, batch)

  def logps(part):
    logits = policy.outputs(arrays[f"{part}_tokens"], arrays[f"{part}_attention_mask"])
    return numpy_sequence_logps(logits, arrays[f"{part}_tokens"], arrays[f"{part}_loss_mask"])

  chosen, rejected = logps("chosen"), logps("rejected")
  z = 0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected))
  expected = np.sum(weight * -log_sigmoid(z)) / weight.sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(outputs["chosen_reward"]), 0.1 * (chosen - ref_chosen),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(outputs["accuracy"]), (z > 0).astype(float))
