"""The reward-model objective (`objectives/reward_model.py`): Crowd-BT with several heads,
Bradley-Terry with margin, label smoothing and centering, against NumPy."""

import jax.numpy as jnp
import numpy as np

from objectives_testlib import pair_rewards, run_objective, toy_pairs
from train_testlib import log_sigmoid, tiny_config


def test_reward_model_crowd_bt_with_heads_matches_numpy(reward_model):
  config = tiny_config("reward_model", model__reward_heads=2, loss__name="crowd_bt",
                       loss__reliabilities="file.json", loss__unknown_reliability=0.9)
  arrays = toy_pairs()
  reliability = np.array([0.8, 0.6, 1.0, 0.3], np.float32)
  annotator = np.array([0, 1, -1, 2], np.int32)  # pair 2: unknown annotator
  batch = {k: jnp.asarray(v) for k, v in arrays.items() if k != "example_index"}
  batch.update(reliability=jnp.asarray(reliability), annotator=jnp.asarray(annotator),
               loss_denominator=jnp.asarray(4.0, jnp.float32))
  loss, outputs = run_objective("reward_model", reward_model.model, config, reward_model.params, batch)
  chosen, rejected = pair_rewards(reward_model, arrays)
  d = chosen - rejected
  eta = np.where(annotator >= 0, reliability, 0.9)[:, None]
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  per_example = np.mean(-np.log(eta * sigmoid(d) + (1 - eta) * sigmoid(-d)), axis=1)
  np.testing.assert_allclose(float(loss), per_example.mean(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(outputs["margin"]), d.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_reward_model_bradley_terry_margin_smoothing_and_centering(reward_model):
  config = tiny_config("reward_model", model__reward_heads=2, loss__margin=0.5, loss__label_smoothing=0.1,
                       loss__centering=0.01)
  arrays = toy_pairs(seed=1)
  batch = {k: jnp.asarray(v) for k, v in arrays.items() if k != "example_index"}
  batch["loss_denominator"] = jnp.asarray(4.0, jnp.float32)
  loss, _ = run_objective("reward_model", reward_model.model, config, reward_model.params, batch)
  rc, rr = pair_rewards(reward_model, arrays)
  x = rc - rr - 0.5
  per_head = -0.9 * log_sigmoid(x) - 0.1 * log_sigmoid(-x) + 0.01 * (rc + rr) ** 2
  np.testing.assert_allclose(float(loss), per_head.mean(), rtol=1e-5)
