"""The optimizer against NumPy: warmup-cosine schedule, AdamW with clipping and masked decay,
and the NaN/Inf guard."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.train import optim


def _config(**overrides):
  settings = optim.OptimizerSettings(
      learning_rate=0.01, warmup_steps=5, end_learning_rate_factor=0.1, b1=0.9, b2=0.98, eps=1e-8,
      weight_decay=0.1, clip_norm=1.0, max_consecutive_skips=3)
  return dataclasses.replace(settings, **overrides)


def _numpy_schedule(t, peak, warmup, total, factor):
  if t < warmup:
    return peak * t / warmup
  progress = min(t - warmup, total - warmup) / (total - warmup)
  return peak * (factor + (1 - factor) * 0.5 * (1 + np.cos(np.pi * progress)))


@pytest.mark.parametrize("warmup, total, factor", [(5, 40, 0.1), (0, 17, 0.0), (10, 11, 0.5)])
def test_schedule_is_warmup_then_cosine(warmup, total, factor):
  schedule = optim.learning_rate_schedule(
      _config(warmup_steps=warmup, end_learning_rate_factor=factor), total)
  for t in range(total + 5):
    expected = _numpy_schedule(t, 0.01, warmup, total, factor)
    np.testing.assert_allclose(float(schedule(t)), expected, rtol=2e-6, atol=1e-9, err_msg=f"step {t}")


def test_schedule_rejects_bad_settings():
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.learning_rate_schedule(_config(warmup_steps=50), 40)
  with pytest.raises(ValueError, match="end_learning_rate_factor"):
    optim.learning_rate_schedule(_config(end_learning_rate_factor=2.0), 40)


def _numpy_adamw(params, grads_seq, config, total):
  """Reference AdamW (Loshchilov & Hutter 2019) with global-norm clipping, decay on matrices."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  nu = {k: np.zeros_like(v) for k, v in params.items()}
  for t, grads in enumerate(grads_seq):
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))
    scale = min(1.0, config.clip_norm / norm)
    lr = _numpy_schedule(t, config.learning_rate, config.warmup_steps, total, config.end_learning_rate_factor)
    for k in params:
      g = grads[k] * scale
      mu[k] = config.b1 * mu[k] + (1 - config.b1) * g
      nu[k] = config.b2 * nu[k] + (1 - config.b2) * g * g
      mu_hat = mu[k] / (1 - config.b1 ** (t + 1))
      nu_hat = nu[k] / (1 - config.b2 ** (t + 1))
      update = mu_hat / (np.sqrt(nu_hat) + config.eps)
      if params[k].ndim >= 2:
        update = update + config.weight_decay * params[k]
      params[k] = params[k] - lr * update
  return params


def test_adamw_matches_numpy_reference():
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) * 3 for k, v in params.items()} for _ in range(7)]
  config = _config()
  tx = optim.make_optimizer(config, total_steps=20)
  state = tx.init(params)
  current = {k: jnp.asarray(v) for k, v in params.items()}
  update = jax.jit(tx.update)
  for grads in grads_seq:
    updates, state = update({k: jnp.asarray(v) for k, v in grads.items()}, state, current)
    current = jax.tree.map(lambda p, u: p + u, current, updates)
  expected = _numpy_adamw(params, grads_seq, config, total=20)
  for k in params:
    np.testing.assert_allclose(np.asarray(current[k]), expected[k], rtol=1e-5, atol=1e-6)


def test_nan_guard_skips_exactly_the_poisoned_update():
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
  clean = [{k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()} for _ in range(3)]
  poisoned = {"w": clean[0]["w"].at[0, 1].set(jnp.nan), "b": clean[0]["b"].at[2].set(jnp.inf)}
  tx = optim.make_optimizer(_config(), total_steps=10)
  update = jax.jit(tx.update)

  def run(grads_seq):
    state, current, history = tx.init(params), params, []
    for grads in grads_seq:
      updates, state = update(grads, state, current)
      current = jax.tree.map(lambda p, u: p + u, current, updates)
      history.append((current, state))
    return history

  guarded = run([clean[0], poisoned, clean[1], clean[2]])
  reference = run([clean[0], clean[1], clean[2]])
  # The poisoned step leaves the parameters bit-for-bit unchanged and counts one skip.
  for k in params:
    np.testing.assert_array_equal(np.asarray(guarded[1][0][k]), np.asarray(guarded[0][0][k]))
  assert [int(optim.skipped_updates(s)) for _, s in guarded] == [0, 1, 1, 1]
  assert [int(optim.consecutive_skips(s)) for _, s in guarded] == [0, 1, 0, 0]
  # Afterwards the run continues as if the poisoned gradient never happened (moments and
  # schedule count untouched).
  for k in params:
    np.testing.assert_array_equal(np.asarray(guarded[3][0][k]), np.asarray(reference[2][0][k]))
