"""The shared label-smoothed logistic loss against NumPy in float64, and at extreme logits."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses.logistic import smoothed_logistic_loss


def _numpy_loss(logits, eps):
  """-(1 - eps) log(1 / (1 + e^-x)) - eps log(1 / (1 + e^x)), written with logaddexp."""
  logits = np.asarray(logits, np.float64)
  return (1.0 - eps) * np.logaddexp(0.0, -logits) + eps * np.logaddexp(0.0, logits)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_matches_the_cross_entropy_against_the_smoothed_label(eps):
  logits = np.random.default_rng(0).normal(scale=4.0, size=64).astype(np.float32)
  np.testing.assert_allclose(smoothed_logistic_loss(jnp.asarray(logits), eps), _numpy_loss(logits, eps),
                             rtol=1e-5, atol=1e-6)


def test_worked_values():
  # x = 0: log 2 whatever eps; eps = 0: the plain logistic loss log(1 + e^-x).
  np.testing.assert_allclose(smoothed_logistic_loss(jnp.zeros(3), 0.25), np.full(3, np.log(2.0)), rtol=1e-6)
  np.testing.assert_allclose(smoothed_logistic_loss(jnp.array([2.0]), 0.0), [np.log1p(np.exp(-2.0))], rtol=1e-6)


def test_per_example_label_smoothing_and_extreme_logits_stay_finite():
  logits = jnp.array([-1e4, -50.0, 50.0, 1e4])
  eps = jnp.array([0.0, 0.1, 0.2, 0.4])
  losses = smoothed_logistic_loss(logits, eps)
  assert np.all(np.isfinite(np.asarray(losses)))
  np.testing.assert_allclose(losses, _numpy_loss(logits, np.asarray(eps, np.float64)), rtol=1e-5)
