"""Tests for rlhf_jax.losses.policy against NumPy float64 references written here."""

from __future__ import annotations

import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.losses.policy import (
    AGGREGATIONS,
    AdaptiveKLState,
    adaptive_kl_init,
    adaptive_kl_update,
    aggregate,
    gae,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    masked_sum,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    sequence_logprobs,
    whiten,
)

SETTINGS = hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
FINITE = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)

# Right padding of varying lengths, including an empty row and a full row.
LENGTHS = (5, 3, 0, 1)
T = 5


def check_rev_grads(f, args):
  """Reverse-mode gradients against finite differences; jit so the many evaluations reuse one compile."""
  check_grads(jax.jit(f), args, order=1, modes=["rev"])


def right_padding_mask(lengths=LENGTHS, t=T):
  return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def rng(seed=0):
  return np.random.default_rng(seed)


# --------------------------------------------------------------------------- numpy references


def np_log_softmax_gather(logits, targets):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return np.take_along_axis(log_softmax, np.asarray(targets)[..., None], -1)[..., 0]


def np_gae_loop(rewards, values, mask, gamma, lam):
  """Textbook GAE, one row at a time, over the valid positions only."""
  rewards, values, mask = np.asarray(rewards, np.float64), np.asarray(values, np.float64), np.asarray(mask)
  advantages = np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    next_value, next_advantage = 0.0, 0.0
    for t in reversed(range(rewards.shape[1])):
      if not mask[b, t]:
        continue
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      advantages[b, t] = delta + gamma * lam * next_advantage
      next_value, next_advantage = values[b, t], advantages[b, t]
  returns = np.where(mask, advantages + values, 0.0)
  return advantages, returns


def np_aggregate(per_token, mask, aggregation, constant_normalizer=None):
  per_token, mask = np.asarray(per_token, np.float64), np.asarray(mask, bool)
  masked = np.where(mask, per_token, 0.0)
  if aggregation == "token_mean":
    return masked.sum() / max(mask.sum(), 1)
  if aggregation == "sequence_mean":
    return np.mean([row.sum() / max(m.sum(), 1) for row, m in zip(masked, mask)])
  if aggregation == "sequence_sum":
    return masked.sum(-1).mean()
  return masked.sum() / constant_normalizer


def np_ppo_per_token(logprobs, old_logprobs, advantages, clip_eps, dual_clip=None):
  ratio = np.exp(np.asarray(logprobs, np.float64) - np.asarray(old_logprobs, np.float64))
  a = np.asarray(advantages, np.float64)
  loss = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - clip_eps, 1 + clip_eps))
  if dual_clip is not None:
    loss = np.where(a < 0, np.minimum(loss, -dual_clip * a), loss)
  return loss


# --------------------------------------------------------------------------- sequence_logprobs


def logits_fixture(seed=0, b=4, t=T, v=7):
  logits = rng(seed).normal(size=(b, t, v)) * 3
  logits[0, 0] = 0.0  # all tied
  logits[0, 1, :] = 1e4  # extreme, tied
  logits[0, 2, 3] = 1e4  # one extreme winner
  logits[0, 3, 3] = -1e4  # one extreme loser
  targets = rng(seed + 1).integers(0, v, size=(b, t))
  targets[0, 2] = 3
  targets[0, 3] = 3
  mask = right_padding_mask(LENGTHS[:b], t)
  targets = np.where(mask, targets, -100)  # padding ids out of range must not matter
  return logits.astype(np.float32), targets.astype(np.int32), mask


def test_sequence_logprobs_matches_numpy_log_softmax_then_gather():
  logits, targets, mask = logits_fixture()
  got = np.asarray(sequence_logprobs(logits, targets, mask))
  want = np.where(mask, np_log_softmax_gather(logits, np.where(mask, targets, 0)), 0.0)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.all(got[~mask] == 0.0)
  # Worked values: tied logits give -log V; the extreme loser gets about -2e4.
  np.testing.assert_allclose(got[0, 0], -math.log(7), rtol=1e-6)
  np.testing.assert_allclose(got[0, 1], -math.log(7), rtol=1e-6)
  np.testing.assert_allclose(got[0, 2], 0.0, atol=1e-6)


def test_sequence_logprobs_sum_is_sequence_logprob():
  logits, targets, mask = logits_fixture(seed=3)
  got = np.asarray(sequence_logprobs(logits, targets, mask)).sum(-1)
  per_token = np_log_softmax_gather(logits, np.where(mask, targets, 0))
  want = [per_token[b, : LENGTHS[b]].sum() for b in range(len(LENGTHS))]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sequence_logprobs_mask_equals_slicing():
  logits, targets, mask = logits_fixture(seed=4)
  full = np.ones((4, 3), bool)
  padded_logits = np.concatenate([logits[:, :3], 1e4 * np.ones((4, 2, 7), np.float32)], axis=1)
  padded_targets = np.concatenate([targets[:, :3] % 7, -np.ones((4, 2), np.int32)], axis=1)
  padded_mask = np.concatenate([full, np.zeros((4, 2), bool)], axis=1)
  sliced = sequence_logprobs(logits[:, :3], targets[:, :3] % 7, full)
  padded = sequence_logprobs(padded_logits, padded_targets, padded_mask)
  np.testing.assert_array_equal(np.asarray(padded)[:, :3], np.asarray(sliced))
  np.testing.assert_array_equal(np.asarray(padded)[:, 3:], 0.0)


def test_sequence_logprobs_jit_equals_eager_and_bf16():
  logits, targets, mask = logits_fixture(seed=5)
  eager = sequence_logprobs(logits, targets, mask)
  jitted = jax.jit(sequence_logprobs)(logits, targets, mask)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
  moderate = np.clip(logits, -10, 10)
  bf16 = sequence_logprobs(jnp.asarray(moderate, jnp.bfloat16), targets, mask)
  assert bf16.dtype == jnp.float32
  # Only the input rounding differs (bf16 has 8 mantissa bits): |error| <= ~2 * 2^-8 * 10.
  f32 = sequence_logprobs(np.asarray(jnp.asarray(moderate, jnp.bfloat16), np.float32), targets, mask)
  np.testing.assert_allclose(bf16, f32, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bf16, sequence_logprobs(moderate, targets, mask), atol=0.1)


def test_sequence_logprobs_gradients():
  logits, targets, mask = logits_fixture(seed=6)
  with jax.enable_x64(True):
    f = lambda l: sequence_logprobs(l, targets, mask)
    check_rev_grads(f, (np.clip(logits, -5, 5).astype(np.float64),))
  grad = jax.grad(lambda l: sequence_logprobs(l, targets, mask).sum())(logits)
  assert np.all(np.isfinite(grad))
  # d/dlogits of log p(target) = onehot(target) - softmax, zero on padding.
  assert np.all(np.asarray(grad)[~mask] == 0.0)
  row = logits[1, 0].astype(np.float64)
  softmax = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
  np.testing.assert_allclose(grad[1, 0], np.eye(7)[targets[1, 0]] - softmax, atol=1e-6)


def test_sequence_logprobs_bf16_gradient_and_infinite_logits():
  logits, targets, mask = logits_fixture(seed=7)
  moderate = np.clip(logits, -10, 10)
  loss = lambda l: sequence_logprobs(l, targets, mask).sum()
  grad_bf16 = jax.grad(loss)(jnp.asarray(moderate, jnp.bfloat16))
  assert grad_bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(grad_bf16, np.float32), jax.grad(loss)(moderate), atol=0.02)
  # Vocabulary entries masked to -inf (top-k / forbidden tokens) and a padding row of -inf.
  with_inf = moderate.copy()
  with_inf[1, :, 0] = -np.inf
  with_inf[0, 4:, :] = -np.inf  # row (0, 4) is valid in LENGTHS: make it padding
  inf_mask = mask.copy()
  inf_mask[0, 4] = False
  safe_targets = np.where(targets == 0, 1, targets)
  out = np.asarray(sequence_logprobs(with_inf, safe_targets, inf_mask))
  want = np.where(inf_mask, np_log_softmax_gather(np.where(np.isinf(with_inf), -1e30, with_inf), np.where(
      inf_mask, safe_targets, 0)), 0.0)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  grad = np.asarray(jax.grad(lambda l: sequence_logprobs(l, safe_targets, inf_mask).sum())(with_inf))
  assert np.all(np.isfinite(grad))
  assert np.all(grad[1, :, 0] == 0.0) and np.all(grad[0, 4] == 0.0)


def test_sequence_logprobs_errors():
  logits, targets, mask = logits_fixture()
  with pytest.raises(ValueError, match="logits"):
    sequence_logprobs(logits[0], targets, mask)
  with pytest.raises(ValueError, match="targets"):
    sequence_logprobs(logits, targets.astype(np.float32), mask)
  with pytest.raises(ValueError, match="targets"):
    sequence_logprobs(logits, targets[:, :3], mask)
  with pytest.raises(ValueError, match="logits"):
    sequence_logprobs(logits.astype(np.int32), targets, mask)
  with pytest.raises(ValueError, match="mask"):
    sequence_logprobs(logits, targets, mask[:, :3])


@SETTINGS
@hypothesis.given(hnp.arrays(np.float32, (2, 3, 5), elements=FINITE), st.integers(0, 4))
def test_sequence_logprobs_property_nonpositive_and_finite(logits, target):
  targets = np.full((2, 3), target, np.int32)
  out = np.asarray(sequence_logprobs(logits, targets, np.ones((2, 3), bool)))
  assert np.all(np.isfinite(out))
  assert np.all(out <= 1e-6)


# --------------------------------------------------------------------------- masked_sum / masked_mean


def test_masked_sum_and_mean_match_numpy():
  x = rng(1).normal(size=(4, T)).astype(np.float32)
  mask = right_padding_mask()
  x_with_nan_padding = np.where(mask, x, np.nan)
  np.testing.assert_allclose(masked_sum(x_with_nan_padding, mask), np.where(mask, x, 0).sum(-1), rtol=1e-6)
  np.testing.assert_allclose(masked_sum(x, mask, axis=None), x[mask].sum(), rtol=1e-6)
  np.testing.assert_allclose(masked_mean(x_with_nan_padding, mask), x[mask].mean(), rtol=1e-6)
  row_means = masked_mean(x, mask, axis=-1)
  want = [x[b, : LENGTHS[b]].mean() if LENGTHS[b] else 0.0 for b in range(4)]
  np.testing.assert_allclose(row_means, want, rtol=1e-6)  # empty row gives 0, not NaN
  assert masked_mean(x, np.zeros_like(mask)) == 0.0
  with pytest.raises(ValueError, match="mask"):
    masked_mean(x, mask[:, :2])
  with pytest.raises(ValueError, match="`x`"):
    masked_sum(np.ones((2, 2), np.int32), np.ones((2, 2), bool))


# --------------------------------------------------------------------------- kl_penalty


def test_kl_penalty_matches_numpy():
  logprobs = np.array([-1.0, -2.0, -0.5, -3.0, -1e4, 0.0, -1e4], np.float32)
  ref = np.array([-1.0, -1.0, -2.0, -0.1, 0.0, -1e4, -1e4], np.float32)  # ties at 0 and 6
  lr = logprobs.astype(np.float64) - ref
  np.testing.assert_allclose(kl_penalty(logprobs, ref, kind="k1"), lr, rtol=1e-6)
  np.testing.assert_allclose(kl_penalty(logprobs, ref), lr, rtol=1e-6)  # k1 by default
  np.testing.assert_allclose(kl_penalty(logprobs, ref, kind="k2"), 0.5 * lr**2, rtol=1e-6)
  clamped = np.clip(lr, -20, 20)
  want_k3 = np.exp(-clamped) - 1 + clamped
  np.testing.assert_allclose(kl_penalty(logprobs, ref, kind="k3"), want_k3, rtol=1e-5)
  # The second form of the blog: r = ref/pol, k3 = (r - 1) - log r.
  r = np.exp(ref[:4].astype(np.float64) - logprobs[:4])
  np.testing.assert_allclose(kl_penalty(logprobs[:4], ref[:4], kind="k3"), r - 1 - np.log(r), rtol=1e-5)
  assert kl_penalty(logprobs, ref, kind="k3")[0] == 0.0


def test_kl_penalty_k3_small_ratio_precision_and_extremes():
  lr = np.array([1e-4, -1e-4], np.float32)
  got = np.asarray(kl_penalty(lr, np.zeros(2, np.float32), kind="k3"))
  # exp(-x) - 1 + x would lose everything here in float32 (error ~6e-8 on a 5e-9 value).
  np.testing.assert_allclose(got, 0.5 * lr.astype(np.float64) ** 2, rtol=1e-2)
  for kind in ("k1", "k2", "k3"):
    f = lambda lp: kl_penalty(lp, jnp.array([0.0, -1e4, 1e4]), kind=kind).sum()
    x = jnp.array([-1e4, 0.0, 0.0])
    assert np.isfinite(f(x)) and np.all(np.isfinite(jax.grad(f)(x)))


def test_kl_penalty_gradients_jit_bf16_and_errors():
  logprobs = rng(2).normal(size=(3, 4)) - 2
  ref = rng(3).normal(size=(3, 4)) - 2
  with jax.enable_x64(True):
    for kind in ("k1", "k2", "k3"):
      check_rev_grads(lambda a, b: kl_penalty(a, b, kind=kind), (logprobs, ref))
  lp32, ref32 = logprobs.astype(np.float32), ref.astype(np.float32)
  for kind in ("k1", "k2", "k3"):
    eager = kl_penalty(lp32, ref32, kind=kind)
    np.testing.assert_allclose(jax.jit(lambda a, b: kl_penalty(a, b, kind=kind))(lp32, ref32), eager, rtol=1e-6)
    bf16 = kl_penalty(jnp.asarray(lp32, jnp.bfloat16), jnp.asarray(ref32, jnp.bfloat16), kind=kind)
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, eager, rtol=0.03, atol=0.02)  # bf16 rounds inputs to ~0.4%
  with pytest.raises(ValueError, match="kind"):
    kl_penalty(lp32, ref32, kind="k4")
  with pytest.raises(ValueError, match="shapes"):
    kl_penalty(lp32, ref32[:, :2])
  with pytest.raises(ValueError, match="ref_logprobs"):
    kl_penalty(lp32, np.zeros((3, 4), np.int32))


@SETTINGS
@hypothesis.given(hnp.arrays(np.float32, 6, elements=FINITE), hnp.arrays(np.float32, 6, elements=FINITE))
def test_kl_penalty_property_k2_k3_nonnegative_finite(logprobs, ref):
  for kind in ("k2", "k3"):
    out = np.asarray(kl_penalty(logprobs, ref, kind=kind))
    assert np.all(np.isfinite(out)) and np.all(out >= 0)


# --------------------------------------------------------------------------- gae


def test_gae_matches_python_loop_with_right_padding():
  rewards = rng(4).normal(size=(4, T)).astype(np.float32)
  values = rng(5).normal(size=(4, T)).astype(np.float32)
  mask = right_padding_mask()
  for gamma, lam in [(0.9, 0.8), (1.0, 0.95), (0.5, 0.0), (1.0, 1.0)]:
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    want_adv, want_ret = np_gae_loop(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(adv)[~mask] == 0) and np.all(np.asarray(ret)[~mask] == 0)


def test_gae_worked_example():
  # One sequence of 3 tokens, reward 1 at the end, values 0.5: gamma = 1, lam = 0.5.
  adv, ret = gae(np.array([[0.0, 0.0, 1.0]]), np.full((1, 3), 0.5), np.ones((1, 3)), gamma=1.0, lam=0.5)
  # deltas: 0 + 0.5 - 0.5 = 0, 0, 1 - 0.5 = 0.5; A = [0.125, 0.25, 0.5].
  np.testing.assert_allclose(adv, [[0.125, 0.25, 0.5]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[0.625, 0.75, 1.0]], rtol=1e-6)


def test_gae_interior_holes_are_skipped():
  rewards = rng(6).normal(size=(3, 7)).astype(np.float32)
  values = rng(7).normal(size=(3, 7)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0, 1, 1, 0], [0, 1, 1, 0, 1, 0, 0], [1, 0, 1, 0, 1, 0, 1]], bool)
  rewards_garbage = np.where(mask, rewards, np.nan)  # masked rewards and values are never read
  values_garbage = np.where(mask, values, 1e30)
  adv, ret = gae(rewards_garbage, values_garbage, mask, gamma=0.9, lam=0.8)
  want_adv, want_ret = np_gae_loop(rewards, values, mask, 0.9, 0.8)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-6)
  # Equals the compacted sequence (holes removed).
  for b in range(3):
    idx = np.flatnonzero(mask[b])
    a_b, _ = gae(rewards[b : b + 1, idx], values[b : b + 1, idx], np.ones((1, idx.size)), gamma=0.9, lam=0.8)
    np.testing.assert_allclose(np.asarray(adv)[b, idx], np.asarray(a_b)[0], rtol=1e-5, atol=1e-6)


def test_gae_mask_equals_slicing_jit_bf16_extremes():
  rewards = rng(8).normal(size=(4, T)).astype(np.float32)
  values = rng(9).normal(size=(4, T)).astype(np.float32)
  mask = right_padding_mask()
  adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
  for b, n in enumerate(LENGTHS):
    if n:
      a_b, r_b = gae(rewards[b : b + 1, :n], values[b : b + 1, :n], np.ones((1, n), bool), gamma=0.9, lam=0.8)
      np.testing.assert_allclose(np.asarray(adv)[b, :n], np.asarray(a_b)[0], rtol=1e-6)
      np.testing.assert_allclose(np.asarray(ret)[b, :n], np.asarray(r_b)[0], rtol=1e-6)
  jitted = jax.jit(lambda r, v, m: gae(r, v, m, gamma=0.9, lam=0.8))(rewards, values, mask)
  np.testing.assert_allclose(jitted[0], adv, rtol=1e-6)
  bf16 = gae(jnp.asarray(rewards, jnp.bfloat16), jnp.asarray(values, jnp.bfloat16), mask, gamma=0.9, lam=0.8)
  assert bf16[0].dtype == jnp.float32
  np.testing.assert_allclose(bf16[0], adv, atol=0.05)
  extreme = np.where(rng(10).random((4, T)) < 0.5, 1e4, -1e4).astype(np.float32)
  f = lambda r, v: sum(x.sum() for x in gae(r, v, mask, gamma=0.99, lam=0.95))
  assert np.isfinite(f(extreme, -extreme))
  grads = jax.grad(f, argnums=(0, 1))(extreme, -extreme)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_gae_gradients_and_errors():
  rewards, values, mask = rng(11).normal(size=(3, 4)), rng(12).normal(size=(3, 4)), right_padding_mask((4, 2, 1), 4)
  with jax.enable_x64(True):
    check_rev_grads(lambda r, v: gae(r, v, mask, gamma=0.9, lam=0.7), (rewards, values))
  with pytest.raises(ValueError, match="gamma"):
    gae(rewards, values, mask, gamma=1.5)
  with pytest.raises(ValueError, match="lam"):
    gae(rewards, values, mask, lam=-0.1)
  with pytest.raises(ValueError, match="rewards"):
    gae(rewards[0], values[0], mask[0])
  with pytest.raises(ValueError, match="shapes"):
    gae(rewards, values[:, :2], mask)
  with pytest.raises(ValueError, match="values"):
    gae(rewards, values.astype(np.int32), mask)


# gamma is a traced argument so that every example reuses one compilation.
_gae_lam_one = jax.jit(lambda r, v, gamma: gae(r, v, np.ones((2, 4), bool), gamma=gamma, lam=1.0))


@SETTINGS
@hypothesis.given(
    hnp.arrays(np.float32, (2, 4), elements=st.floats(-10, 10, width=32)),
    hnp.arrays(np.float32, (2, 4), elements=st.floats(-10, 10, width=32)),
    st.floats(0.0, 1.0),
)
def test_gae_property_lambda_one_gives_discounted_reward_to_go(rewards, values, gamma):
  # With lam = 1 the value terms telescope: returns are Monte-Carlo returns, whatever V is.
  _, ret = _gae_lam_one(rewards, values, gamma)
  want = np.zeros((2, 4))
  running = np.zeros(2)
  for t in reversed(range(4)):
    running = rewards[:, t] + gamma * running
    want[:, t] = running
  np.testing.assert_allclose(ret, want, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- whiten


def test_whiten_matches_numpy_on_valid_entries():
  x = (rng(13).normal(size=(4, T)) * 3 + 2).astype(np.float32)
  x[0, :2] = 1e4  # extreme
  mask = right_padding_mask()
  valid = x[mask].astype(np.float64)
  mean, var = valid.mean(), valid.var(ddof=1)  # unbiased, as TRL's masked_whiten
  got = np.asarray(whiten(np.where(mask, x, np.nan), mask))
  np.testing.assert_allclose(got[mask], (valid - mean) / np.sqrt(var + 1e-8), rtol=1e-4, atol=1e-5)
  assert np.all(got[~mask] == 0)
  got_keep = np.asarray(whiten(x, mask, shift_mean=False))
  np.testing.assert_allclose(got_keep[mask], (valid - mean) / np.sqrt(var + 1e-8) + mean, rtol=1e-4)


def test_whiten_degenerate_jit_bf16_gradients_errors():
  mask = right_padding_mask()
  x = rng(14).normal(size=(4, T)).astype(np.float32)
  ties = np.full((4, T), 3.0, np.float32)
  np.testing.assert_array_equal(whiten(ties, mask), 0.0)  # zero variance: 0, not NaN
  single = np.zeros((4, T), bool)
  single[1, 2] = True
  np.testing.assert_array_equal(whiten(x, single), 0.0)
  np.testing.assert_array_equal(whiten(x, np.zeros((4, T), bool)), 0.0)
  np.testing.assert_allclose(jax.jit(whiten)(x, mask), whiten(x, mask), rtol=1e-6)
  bf16 = whiten(jnp.asarray(x, jnp.bfloat16), mask)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, whiten(x, mask), atol=0.05)
  with jax.enable_x64(True):
    check_rev_grads(lambda v: whiten(v, mask), (x.astype(np.float64),))
  assert np.all(np.isfinite(jax.grad(lambda v: whiten(v, mask).sum())(ties)))
  with pytest.raises(ValueError, match="mask"):
    whiten(x, mask[:2])
  with pytest.raises(ValueError, match="values"):
    whiten(x.astype(np.int32), mask)


@SETTINGS
@hypothesis.given(hnp.arrays(np.float32, (3, 4), elements=st.floats(-100, 100, width=32)))
def test_whiten_property_zero_mean_unit_variance(x):
  mask = np.ones((3, 4), bool)
  hypothesis.assume(np.var(x.astype(np.float64), ddof=1) > 1e-2)
  out = np.asarray(whiten(x, mask), np.float64)
  assert abs(out.mean()) < 1e-4
  np.testing.assert_allclose(out.var(ddof=1), 1.0, rtol=1e-3)


# --------------------------------------------------------------------------- aggregate


def test_aggregate_matches_numpy_for_every_mode():
  per_token = rng(15).normal(size=(4, T)).astype(np.float32)
  mask = right_padding_mask()
  garbage = np.where(mask, per_token, np.inf)
  for aggregation in AGGREGATIONS:
    got = aggregate(garbage, mask, aggregation=aggregation, constant_normalizer=4 * T)
    np.testing.assert_allclose(got, np_aggregate(per_token, mask, aggregation, 4 * T), rtol=1e-6)
  # Hand example: rows [1, 2, 3] (len 3) and [5] (len 1).
  x = np.array([[1.0, 2.0, 3.0], [5.0, 9.0, 9.0]], np.float32)
  m = np.array([[1, 1, 1], [1, 0, 0]], bool)
  assert aggregate(x, m, aggregation="token_mean") == pytest.approx(11 / 4)
  assert aggregate(x, m, aggregation="sequence_mean") == pytest.approx((2 + 5) / 2)
  assert aggregate(x, m, aggregation="sequence_sum") == pytest.approx((6 + 5) / 2)
  assert aggregate(x, m, aggregation="constant_normalizer", constant_normalizer=6) == pytest.approx(11 / 6)


def test_aggregate_empty_mask_jit_and_errors():
  x = np.ones((2, 3), np.float32)
  empty = np.zeros((2, 3), bool)
  for aggregation in AGGREGATIONS:
    assert aggregate(x, empty, aggregation=aggregation, constant_normalizer=6.0) == 0.0
  f = jax.jit(lambda a, m: aggregate(a, m, aggregation="sequence_mean"))
  np.testing.assert_allclose(f(x, right_padding_mask((3, 1), 3)), 1.0)
  with pytest.raises(ValueError, match="constant_normalizer"):
    aggregate(x, empty, aggregation="constant_normalizer")
  with pytest.raises(ValueError, match="constant_normalizer"):
    aggregate(x, empty, aggregation="constant_normalizer", constant_normalizer=0.0)
  with pytest.raises(ValueError, match="aggregation"):
    aggregate(x, empty, aggregation="mean")
  with pytest.raises(ValueError, match="per_token"):
    aggregate(x[0], empty[0], aggregation="token_mean")


# --------------------------------------------------------------------------- ppo_policy_loss


def ppo_fixture(seed=16, b=4):
  r = rng(seed)
  old = r.normal(size=(b, T)).astype(np.float32) - 2
  logprobs = (old + r.normal(size=(b, T)) * 0.3).astype(np.float32)
  advantages = r.normal(size=(b, T)).astype(np.float32)
  advantages[0, 0] = 0.0  # tie: zero advantage
  logprobs[0, 1] = old[0, 1]  # tie: ratio 1
  return logprobs, old, advantages, right_padding_mask(LENGTHS[:b])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("dual_clip", [None, 1.5])
def test_ppo_policy_loss_matches_numpy(aggregation, dual_clip):
  logprobs, old, advantages, mask = ppo_fixture()
  loss, metrics = ppo_policy_loss(
      logprobs, old, advantages, mask, clip_eps=0.2, dual_clip=dual_clip, aggregation=aggregation,
      constant_normalizer=4.0 * T,
  )
  per_token = np_ppo_per_token(logprobs, old, advantages, 0.2, dual_clip)
  np.testing.assert_allclose(loss, np_aggregate(per_token, mask, aggregation, 4.0 * T), rtol=1e-5)
  ratio = np.exp(logprobs.astype(np.float64) - old)
  unclipped, clipped = -advantages * ratio, -advantages * np.clip(ratio, 0.8, 1.2)
  np.testing.assert_allclose(metrics["clip_fraction"], (clipped > unclipped)[mask].mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["approx_kl"], ((ratio - 1) - np.log(ratio))[mask].mean(), rtol=1e-4)


def test_ppo_policy_loss_hand_example_clip_fraction_and_dual_clip():
  ratios = np.array([[1.5, 0.5, 1.1, 0.7, 5.0, 5.0]])
  advantages = np.array([[1.0, 1.0, -1.0, -1.0, -1.0, 1.0]], np.float32)
  logprobs = np.log(ratios).astype(np.float32)
  old = np.zeros_like(logprobs)
  mask = np.array([[1, 1, 1, 1, 0, 0]], bool)
  loss, metrics = ppo_policy_loss(logprobs, old, advantages, mask, clip_eps=0.2)
  # Per token: -1.2 (clipped), -0.5, 1.1, 0.8 (clipped) -> mean 0.05, clip fraction 2/4.
  assert loss == pytest.approx(0.05, abs=1e-6)
  assert metrics["clip_fraction"] == pytest.approx(0.5)
  assert set(metrics) == {"clip_fraction", "approx_kl"}
  # Dual clip: ratio 5 with A = -1 costs 5 without, 3 with dual_clip = 3; A = +1 is unaffected.
  full = np.ones_like(mask)
  plain, _ = ppo_policy_loss(logprobs[:, 4:], old[:, 4:], advantages[:, 4:], full[:, 4:], aggregation="sequence_sum")
  capped, dual_metrics = ppo_policy_loss(
      logprobs[:, 4:], old[:, 4:], advantages[:, 4:], full[:, 4:], dual_clip=3.0, aggregation="sequence_sum"
  )
  assert plain == pytest.approx(5.0 - 1.2, rel=1e-5)
  assert capped == pytest.approx(3.0 - 1.2, rel=1e-5)
  assert dual_metrics["dual_clip_fraction"] == pytest.approx(0.5)
  # The cap removes the gradient of the capped token.
  grad = jax.grad(
      lambda lp: ppo_policy_loss(lp, old[:, 4:], advantages[:, 4:], full[:, 4:], dual_clip=3.0)[0]
  )(logprobs[:, 4:])
  np.testing.assert_array_equal(grad, 0.0)


def test_ppo_policy_loss_mask_equals_slicing_sequence_mean():
  logprobs, old, advantages, mask = ppo_fixture(seed=17)
  loss, _ = ppo_policy_loss(logprobs, old, advantages, mask, aggregation="sequence_mean")
  per_row = []
  for b, n in enumerate(LENGTHS):
    if n == 0:
      per_row.append(0.0)
      continue
    row, _ = ppo_policy_loss(
        logprobs[b : b + 1, :n], old[b : b + 1, :n], advantages[b : b + 1, :n], np.ones((1, n), bool),
        aggregation="sequence_mean",
    )
    per_row.append(float(row))
  np.testing.assert_allclose(loss, np.mean(per_row), rtol=1e-6)
  # Appending masked garbage columns changes nothing.
  pad = lambda x, v: np.concatenate([x, np.full((x.shape[0], 3), v, x.dtype)], axis=1)
  padded, _ = ppo_policy_loss(
      pad(logprobs, 1e4), pad(old, -1e4), pad(advantages, np.nan), pad(mask, False), aggregation="sequence_mean"
  )
  assert padded == loss


def test_ppo_policy_loss_gradients_jit_bf16_extremes_errors():
  logprobs, old, advantages, mask = ppo_fixture(seed=18)
  # Move ratios away from the clip boundaries, where the loss has kinks.
  log_ratio = logprobs - old
  near = np.abs(np.abs(np.exp(log_ratio) - 1) - 0.2) < 0.02
  logprobs = np.where(near, old, logprobs).astype(np.float32)
  with jax.enable_x64(True):
    for aggregation in AGGREGATIONS:
      f = lambda lp: ppo_policy_loss(
          lp, old.astype(np.float64), advantages.astype(np.float64), mask, aggregation=aggregation,
          constant_normalizer=20.0,
      )[0]
      check_rev_grads(f, (logprobs.astype(np.float64),))
  eager = ppo_policy_loss(logprobs, old, advantages, mask, dual_clip=3.0)
  jitted = jax.jit(lambda *a: ppo_policy_loss(*a, dual_clip=3.0))(logprobs, old, advantages, mask)
  np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-6)
  for key in eager[1]:
    np.testing.assert_allclose(jitted[1][key], eager[1][key], rtol=1e-6)
  bf16 = ppo_policy_loss(*(jnp.asarray(x, jnp.bfloat16) for x in (logprobs, old, advantages)), mask)
  assert bf16[0].dtype == jnp.float32
  np.testing.assert_allclose(bf16[0], eager[0], atol=0.05)
  extreme_lp = np.array([[0.0, -1e4, 0.0, -1e4]], np.float32)
  extreme_old = np.array([[-1e4, 0.0, -1e4, 0.0]], np.float32)
  extreme_adv = np.array([[-1e4, 1e4, 1e4, -1e4]], np.float32)
  m = np.ones((1, 4), bool)
  for dual_clip in (None, 3.0):
    f = lambda lp: ppo_policy_loss(lp, extreme_old, extreme_adv, m, dual_clip=dual_clip)
    loss, metrics = f(extreme_lp)
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert np.all(np.isfinite(jax.grad(lambda lp: f(lp)[0])(extreme_lp)))
  with pytest.raises(ValueError, match="clip_eps"):
    ppo_policy_loss(logprobs, old, advantages, mask, clip_eps=0.0)
  with pytest.raises(ValueError, match="dual_clip"):
    ppo_policy_loss(logprobs, old, advantages, mask, dual_clip=1.0)
  with pytest.raises(ValueError, match="constant_normalizer"):
    ppo_policy_loss(logprobs, old, advantages, mask, aggregation="constant_normalizer")
  with pytest.raises(ValueError, match="aggregation"):
    ppo_policy_loss(logprobs, old, advantages, mask, aggregation="batch_mean")
  with pytest.raises(ValueError, match="shapes"):
    ppo_policy_loss(logprobs, old[:, :2], advantages, mask)
  with pytest.raises(ValueError, match="advantages"):
    ppo_policy_loss(logprobs, old, advantages[0], mask)
  with pytest.raises(ValueError, match="old_logprobs"):
    ppo_policy_loss(logprobs, old.astype(np.int32), advantages, mask)


@SETTINGS
@hypothesis.given(
    hnp.arrays(np.float32, (2, 3), elements=FINITE),
    hnp.arrays(np.float32, (2, 3), elements=FINITE),
    hnp.arrays(np.float32, (2, 3), elements=st.floats(-100, 100, width=32)),
)
def test_ppo_policy_loss_property(logprobs, old, advantages):
  mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
  loss, metrics = ppo_policy_loss(logprobs, old, advantages, mask, dual_clip=3.0)
  assert np.isfinite(loss)
  assert 0.0 <= metrics["clip_fraction"] <= 1.0 and metrics["approx_kl"] >= 0.0
  # On-policy (first PPO epoch): ratio 1, nothing clipped, loss = -token mean of A.
  loss0, metrics0 = ppo_policy_loss(old, old, advantages, mask)
  np.testing.assert_allclose(loss0, -advantages[mask].astype(np.float64).mean(), rtol=1e-5, atol=1e-5)
  assert metrics0["clip_fraction"] == 0.0 and metrics0["approx_kl"] == 0.0


# --------------------------------------------------------------------------- ppo_value_loss


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_ppo_value_loss_matches_numpy(aggregation):
  r = rng(19)
  old = r.normal(size=(4, T)).astype(np.float32)
  values = (old + r.normal(size=(4, T)) * 0.5).astype(np.float32)
  returns = r.normal(size=(4, T)).astype(np.float32)
  values[0, 0] = returns[0, 0]  # tie
  mask = right_padding_mask()
  loss = ppo_value_loss(values, old, returns, mask, clip_eps=0.2, aggregation=aggregation, constant_normalizer=7.0)
  v, o, ret = (x.astype(np.float64) for x in (values, old, returns))
  per_token = 0.5 * np.maximum((v - ret) ** 2, (np.clip(v, o - 0.2, o + 0.2) - ret) ** 2)
  np.testing.assert_allclose(loss, np_aggregate(per_token, mask, aggregation, 7.0), rtol=1e-5)


def test_ppo_value_loss_hand_example_gradients_errors():
  # v = 2, old = 0, R = 0: clipped v = 0.2 -> max(4, 0.04) / 2 = 2.
  # v = 0.1, old = 0, R = 1: clipped = 0.1 -> 0.81 / 2 = 0.405.  v = 2, old = 0, R = 3: max(1, 7.84) / 2 = 3.92.
  values = np.array([[2.0, 0.1, 2.0]], np.float32)
  old = np.zeros((1, 3), np.float32)
  returns = np.array([[0.0, 1.0, 3.0]], np.float32)
  per_token = ppo_value_loss(values, old, returns, np.ones((1, 3)), aggregation="sequence_sum")
  assert per_token == pytest.approx(2.0 + 0.405 + 3.92, rel=1e-6)
  assert np.shape(per_token) == ()
  r = rng(20)
  v, o, ret = r.normal(size=(3, 4)), r.normal(size=(3, 4)), r.normal(size=(3, 4))
  v = np.where(np.abs(np.abs(v - o) - 0.2) < 0.02, o, v)  # away from the clip kinks
  mask = right_padding_mask((4, 2, 0), 4)
  with jax.enable_x64(True):
    check_rev_grads(lambda x: ppo_value_loss(x, o, ret, mask), (v,))
  big = np.full((1, 3), 1e4, np.float32)
  assert np.all(np.isfinite(jax.grad(lambda x: ppo_value_loss(x, -big, -big, np.ones((1, 3))))(big)))
  v32, o32, r32 = (x.astype(np.float32) for x in (v, o, ret))
  np.testing.assert_allclose(
      jax.jit(ppo_value_loss)(v32, o32, r32, mask), ppo_value_loss(v32, o32, r32, mask), rtol=1e-6
  )
  bf16 = ppo_value_loss(*(jnp.asarray(x, jnp.bfloat16) for x in (v32, o32, r32)), mask)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, ppo_value_loss(v32, o32, r32, mask), atol=0.05)
  with pytest.raises(ValueError, match="clip_eps"):
    ppo_value_loss(v32, o32, r32, mask, clip_eps=-1.0)
  with pytest.raises(ValueError, match="constant_normalizer"):
    ppo_value_loss(v32, o32, r32, mask, aggregation="constant_normalizer")
  with pytest.raises(ValueError, match="returns"):
    ppo_value_loss(v32, o32, r32[0], mask)
  with pytest.raises(ValueError, match="mask"):
    ppo_value_loss(v32, o32, r32, mask[:, :1])


# --------------------------------------------------------------------------- grpo / rloo


def np_grpo(rewards, group_size, scale, eps):
  r = np.asarray(rewards, np.float64).reshape(-1, group_size)
  centered = r - r.mean(1, keepdims=True)
  if scale == "group":
    centered = centered / (r.std(1, ddof=1, keepdims=True) + eps)
  elif scale == "batch":
    centered = centered / (np.asarray(rewards, np.float64).std(ddof=1) + eps)
  return centered.reshape(-1)


REWARDS = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 1e4, -1e4, 3.0, 2.0], np.float32)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_numpy(scale):
  got = grpo_advantages(REWARDS, group_size=4, scale=scale)
  np.testing.assert_allclose(got, np_grpo(REWARDS, 4, scale, 1e-4), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got)[4:8], 0.0)  # tied group
  # Worked example: [1, 0, 0, 1] has mean 0.5 and unbiased std sqrt(1/3).
  if scale == "group":
    np.testing.assert_allclose(got[:4], np.array([0.5, -0.5, -0.5, 0.5]) / (math.sqrt(1 / 3) + 1e-4), rtol=1e-6)


def test_grpo_advantages_degenerate_jit_bf16_gradients_errors():
  np.testing.assert_array_equal(grpo_advantages(REWARDS, group_size=1), 0.0)
  np.testing.assert_array_equal(grpo_advantages(REWARDS[:1], group_size=1, scale="batch"), 0.0)
  f = jax.jit(lambda r: grpo_advantages(r, group_size=4, scale="group", eps=1e-3))
  np.testing.assert_allclose(f(REWARDS), grpo_advantages(REWARDS, group_size=4, eps=1e-3), rtol=1e-6)
  moderate = REWARDS[:8]
  bf16 = grpo_advantages(jnp.asarray(moderate, jnp.bfloat16), group_size=4)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, grpo_advantages(moderate, group_size=4), atol=0.02)
  for scale in ("group", "batch", "none"):
    grad = jax.grad(lambda r: jnp.sum(grpo_advantages(r, group_size=4, scale=scale) * jnp.arange(12.0)))(REWARDS)
    assert np.all(np.isfinite(grad))  # including the tied group, where std = 0
    with jax.enable_x64(True):
      r64 = rng(21).normal(size=8)
      check_rev_grads(lambda r: grpo_advantages(r, group_size=4, scale=scale), (r64,))
  np.testing.assert_allclose(grpo_advantages(REWARDS, group_size=np.int64(4)), grpo_advantages(REWARDS, group_size=4))
  with pytest.raises(ValueError, match="group_size"):
    grpo_advantages(REWARDS, group_size=2.0)
  with pytest.raises(ValueError, match="group_size"):
    grpo_advantages(REWARDS, group_size=5)
  with pytest.raises(ValueError, match="group_size"):
    grpo_advantages(REWARDS, group_size=0)
  with pytest.raises(ValueError, match="scale"):
    grpo_advantages(REWARDS, group_size=4, scale="global")
  with pytest.raises(ValueError, match="eps"):
    grpo_advantages(REWARDS, group_size=4, eps=-1.0)
  with pytest.raises(ValueError, match="rewards"):
    grpo_advantages(REWARDS.reshape(3, 4), group_size=4)
  with pytest.raises(ValueError, match="rewards"):
    grpo_advantages(np.arange(4), group_size=2)


def test_rloo_advantages_match_leave_one_out_loop():
  got = np.asarray(rloo_advantages(REWARDS, group_size=4))
  r = REWARDS.astype(np.float64).reshape(-1, 4)
  want = np.array([[row[i] - np.delete(row, i).mean() for i in range(4)] for row in r]).reshape(-1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[4:8], 0.0)
  # Worked example, group of 2: A = r_i - r_j.
  np.testing.assert_allclose(rloo_advantages(np.array([3.0, 1.0]), group_size=2), [2.0, -2.0])
  np.testing.assert_allclose(jax.jit(lambda x: rloo_advantages(x, group_size=4))(REWARDS), got, rtol=1e-6)
  assert rloo_advantages(jnp.asarray(REWARDS[:8], jnp.bfloat16), group_size=4).dtype == jnp.float32
  with jax.enable_x64(True):
    check_rev_grads(lambda x: rloo_advantages(x, group_size=3), (rng(22).normal(size=6),))
  with pytest.raises(ValueError, match="group_size"):
    rloo_advantages(REWARDS, group_size=1)
  with pytest.raises(ValueError, match="group_size"):
    rloo_advantages(REWARDS, group_size=5)


def test_equal_rewards_in_a_group_give_zero_advantages():
  # Falsifying example of the property below: a float32 group mean of equal rewards is
  # off by an ulp, and the group-std scaling (std + eps, eps = 1e-4) magnified it.
  rewards = np.full(12, 6554.17, np.float32)
  for group_size in (2, 3, 4, 6):
    np.testing.assert_array_equal(grpo_advantages(rewards, group_size=group_size), 0.0)


@SETTINGS
@hypothesis.given(hnp.arrays(np.float32, 12, elements=FINITE), st.sampled_from([2, 3, 4, 6]))
def test_group_advantages_property_zero_sum_per_group(rewards, group_size):
  for adv in (
      rloo_advantages(rewards, group_size=group_size),
      grpo_advantages(rewards, group_size=group_size, scale="none"),
      grpo_advantages(rewards, group_size=group_size),
  ):
    adv = np.asarray(adv, np.float64).reshape(-1, group_size)
    assert np.all(np.isfinite(adv))
    scale = np.abs(rewards).max() + 1.0
    np.testing.assert_allclose(adv.sum(1) / scale, 0.0, atol=1e-4)


# --------------------------------------------------------------------------- adaptive KL


def test_adaptive_kl_matches_hand_computation():
  state = adaptive_kl_init(0.2)
  assert isinstance(state, AdaptiveKLState) and state.coef.dtype == jnp.float32
  update = lambda s, kl, n: adaptive_kl_update(s, kl, n, target=6.0, horizon=10000.0)
  # KL 6.6: error 0.1 -> coef * (1 + 0.1 * 256 / 10000).
  s1 = update(state, 6.6, 256)
  assert s1.coef == pytest.approx(0.2 * (1 + 0.1 * 256 / 10000), rel=1e-6)
  # KL 60: error 9 clipped to 0.2.
  s2 = update(s1, 60.0, 1000)
  assert s2.coef == pytest.approx(float(s1.coef) * (1 + 0.2 * 0.1), rel=1e-6)
  # KL 0: error -1 clipped to -0.2.
  s3 = update(s2, 0.0, 5000)
  assert s3.coef == pytest.approx(float(s2.coef) * (1 - 0.2 * 0.5), rel=1e-6)
  # On target: unchanged.
  assert update(s3, 6.0, 5000).coef == pytest.approx(float(s3.coef), rel=1e-6)


def test_adaptive_kl_jit_and_errors():
  jitted = jax.jit(lambda s, kl, n: adaptive_kl_update(s, kl, n, target=6.0, horizon=10000.0))
  state = adaptive_kl_init(0.05)
  out = jitted(state, jnp.float32(7.0), jnp.int32(512))
  assert out.coef == pytest.approx(0.05 * (1 + (7 / 6 - 1) * 512 / 10000), rel=1e-6)
  scanned, _ = jax.lax.scan(lambda s, kl: (jitted(s, kl, 100), None), state, jnp.array([12.0, 0.0, 6.0]))
  assert np.isfinite(scanned.coef)
  with pytest.raises(ValueError, match="init_coef"):
    adaptive_kl_init(-0.1)
  with pytest.raises(ValueError, match="target"):
    adaptive_kl_update(state, 1.0, 1, target=0.0, horizon=10.0)
  with pytest.raises(ValueError, match="horizon"):
    adaptive_kl_update(state, 1.0, 1, target=1.0, horizon=-1.0)
  with pytest.raises(ValueError, match="current_kl"):
    adaptive_kl_update(state, np.ones(3), 1, target=1.0, horizon=10.0)
  with pytest.raises(ValueError, match="current_kl"):
    adaptive_kl_update(state, 1, 1, target=1.0, horizon=10.0)


@SETTINGS
@hypothesis.given(st.floats(0.0, 1e4), st.floats(1e-3, 100.0), st.integers(1, 10000))
def test_adaptive_kl_property_moves_towards_target(current_kl, target, n_steps):
  state = adaptive_kl_init(1.0)
  new = float(adaptive_kl_update(state, current_kl, n_steps, target=target, horizon=10000.0).coef)
  assert 1 - 0.2 * n_steps / 10000 - 1e-6 <= new <= 1 + 0.2 * n_steps / 10000 + 1e-6
  if current_kl > target * 1.001:
    assert new >= 1.0
  if current_kl < target * 0.999:
    assert new <= 1.0
