"""The KTO objective (`objectives/kto.py`): desirable and undesirable completions against
the reference point z0 = max(mean KL of the mismatched pairs, 0), written out in NumPy
from the model's raw outputs (Ethayarajh et al. 2024, arXiv 2402.01306)."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.train import inputs

from objectives_testlib import run_objective
from train_testlib import log_sigmoid, numpy_sequence_logps, tiny_config


def _sigmoid(x):
  return np.exp(log_sigmoid(x))


@pytest.mark.parametrize("reference_point, ref_shift", [("mismatched", -3.0), ("mismatched", 4.0), ("zero", 0.0)])
def test_kto_loss_matches_numpy(policy, reference_point, ref_shift):
  config = tiny_config("kto", loss__reference_point=reference_point, loss__desirable_weight=1.5,
                       loss__undesirable_weight=0.5)
  arrays = dict(data.toy_unpaired_data(6, seed=4, vocab_size=32, max_length=16).arrays)
  arrays.update(inputs.mismatched_pairs(arrays, pad_id=0))
  logps = {prefix: numpy_sequence_logps(policy.outputs(arrays[f"{prefix}tokens"], arrays[f"{prefix}attention_mask"]),
                                        arrays[f"{prefix}tokens"], arrays[f"{prefix}loss_mask"])
           for prefix in ("", "kl_")}
  rng = np.random.default_rng(1)
  ref = logps[""] + rng.normal(0, 1, 6)
  # ref_shift moves the mismatched pairs' reference, so z0 is positive (or clamped at 0).
  ref_kl = logps["kl_"] + ref_shift + rng.normal(0, 0.1, 6)
  batch = {k: jnp.asarray(v) for k, v in arrays.items() if k != "example_index"}
  batch.update(ref_logps=jnp.asarray(ref, jnp.float32), ref_kl_logps=jnp.asarray(ref_kl, jnp.float32),
               loss_denominator=jnp.float32(6))
  loss, outputs = run_objective("kto", policy.model, config, policy.params, batch)

  beta = config.loss.beta
  z0 = max(np.mean(logps["kl_"] - ref_kl), 0.0) if reference_point == "mismatched" else 0.0
  reward = beta * (logps[""] - ref)
  desirable = arrays["is_desirable"]
  per_example = np.where(desirable, 1.5 * (1 - _sigmoid(reward - beta * z0)),
                         0.5 * (1 - _sigmoid(beta * z0 - reward)))
  np.testing.assert_allclose(float(loss), per_example.mean(), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(outputs["kl_reference"]), np.full(6, z0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(outputs["reward"]), reward, rtol=1e-4, atol=1e-5)
  if ref_shift > 0:
    assert z0 == 0.0  # the estimate is negative: clamped
