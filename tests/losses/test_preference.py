"""Tests for SimPO, ORPO and KTO against float64 NumPy formulas written out here."""

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

from rlhf_jax.losses.preference import _log1mexp, kto, kto_reference_kl, orpo, simpo

SETTINGS = hypothesis.settings(max_examples=40, deadline=None, derandomize=True)

# Ties (rows 0 and 4), extreme log-probs (rows 2 and 3), near-zero log-probs (row 5).
CHOSEN = np.array([-0.5, -1.2, -1e4, -0.3, -2.0, -1e-3])
REJECTED = np.array([-0.5, -0.4, -0.1, -1e4, -2.0, -5.0])
NLL = np.array([0.7, 1.5, 1e4, 0.3, 2.0, 0.0])

# KTO: ties (rows 0, 1), rewards of +-1e4 (rows 2, 3), both labels.
POLICY = np.array([-10.0, -7.0, -1.0, -1e4, -3.0, -20.0])
REF = np.array([-10.0, -7.0, -1e4, -1.0, -4.5, -18.0])
DESIRABLE = np.array([True, False, True, False, False, True])


# ---------------------------------------------------------------- NumPy references


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_sigmoid(x):
  return np.exp(np_log_sigmoid(x))


def np_simpo(chosen, rejected, beta, gamma, eps):
  z = beta * (chosen - rejected) - gamma
  return -(1 - eps) * np_log_sigmoid(z) - eps * np_log_sigmoid(-z)


def np_log_odds(avg_logp):
  # Plain formula in float64: log odds = log p - log(1 - p), with log p = avg_logp.
  return avg_logp - np.log(1.0 - np.exp(avg_logp))


def np_orpo(chosen, rejected, nll, lam):
  ratio = np_log_odds(chosen) - np_log_odds(rejected)
  return nll - lam * np_log_sigmoid(ratio), ratio


def np_kto(policy, ref, desirable, kl, beta, w_d, w_u):
  r = policy - ref
  z0 = np.maximum(kl, 0.0)
  loss_d = w_d * (1.0 - np_sigmoid(beta * (r - z0)))
  loss_u = w_u * (1.0 - np_sigmoid(beta * (z0 - r)))
  return np.where(desirable, loss_d, loss_u), beta * r


def f32(x):
  return jnp.asarray(x, jnp.float32)


# ---------------------------------------------------------------- SimPO


@pytest.mark.parametrize(
    "beta, gamma, eps", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (10.0, 0.3, 0.2), (0.5, -0.7, 0.49)]
)
def test_simpo_matches_numpy(beta, gamma, eps):
  losses, chosen_rewards, rejected_rewards = simpo(
      f32(CHOSEN), f32(REJECTED), beta=beta, gamma=gamma, label_smoothing=eps
  )
  assert losses.shape == (6,) and losses.dtype == jnp.float32
  np.testing.assert_allclose(losses, np_simpo(CHOSEN, REJECTED, beta, gamma, eps), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(chosen_rewards, beta * CHOSEN, rtol=1e-6)
  np.testing.assert_allclose(rejected_rewards, beta * REJECTED, rtol=1e-6)


def test_simpo_without_margin_or_smoothing_is_log_sigmoid():
  beta = 3.0
  losses, _, _ = simpo(f32(CHOSEN), f32(REJECTED), beta=beta, gamma=0.0, label_smoothing=0.0)
  np.testing.assert_allclose(losses, -np_log_sigmoid(beta * (CHOSEN - REJECTED)), rtol=1e-5, atol=1e-6)


def test_simpo_worked_values():
  # A tie costs softplus(gamma): log 2 without margin, log(1 + e) with gamma = 1.
  tie = f32([-1.0])
  np.testing.assert_allclose(simpo(tie, tie, gamma=0.0)[0], [math.log(2.0)], rtol=1e-6)
  np.testing.assert_allclose(simpo(tie, tie, gamma=1.0)[0], [math.log1p(math.e)], rtol=1e-6)
  # Reaching exactly the margin, beta * diff == gamma, also costs log 2.
  np.testing.assert_allclose(
      simpo(f32([-1.0]), f32([-1.25]), beta=2.0, gamma=0.5)[0], [math.log(2.0)], rtol=1e-6
  )


def test_simpo_gradients():
  with jax.enable_x64(True):
    c = jnp.asarray([-0.5, -1.2, -0.8, -2.0])
    r = jnp.asarray([-0.5, -0.4, -3.0, -1.0])
    f = lambda c, r: simpo(c, r, beta=2.0, gamma=0.5, label_smoothing=0.1)[0]
    check_grads(f, (c, r), order=1, modes=["rev"])
    # d loss / d chosen = -beta * ((1 - eps) * sigmoid(-z) - eps * sigmoid(z)).
    z = 2.0 * (np.asarray(c) - np.asarray(r)) - 0.5
    expected = -2.0 * (0.9 * np_sigmoid(-z) - 0.1 * np_sigmoid(z))
    np.testing.assert_allclose(jax.grad(lambda c: f(c, r).sum())(c), expected, rtol=1e-10)
    # The rewards are metrics: no gradient.
    assert not np.any(jax.grad(lambda c: simpo(c, r)[1].sum())(c))


# ---------------------------------------------------------------- ORPO


def test_log1mexp_matches_numpy_on_grid_with_finite_gradients():
  grid = -np.logspace(4, -6, 400)  # from -1e4 to -1e-6
  grid = np.concatenate([grid, [-math.log(2.0), -math.log(2.0) * (1 + 1e-6), -1.0]])
  expected = np.log(1.0 - np.exp(grid))
  expected_grad = -np.exp(grid) / (1.0 - np.exp(grid))
  with jax.enable_x64(True):
    x = jnp.asarray(grid)
    np.testing.assert_allclose(_log1mexp(x), expected, rtol=1e-8, atol=1e-15)
    grad = jax.vmap(jax.grad(_log1mexp))(x)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-8, atol=1e-15)
  x = f32(grid)
  np.testing.assert_allclose(_log1mexp(x), expected, rtol=2e-6, atol=1e-7)
  grad = jax.vmap(jax.grad(_log1mexp))(x)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, expected_grad, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("lam", [0.1, 1.0, 0.0])
def test_orpo_matches_numpy(lam):
  losses, log_odds_ratio = orpo(f32(CHOSEN), f32(REJECTED), f32(NLL), lam=lam)
  expected, expected_ratio = np_orpo(CHOSEN, REJECTED, NLL, lam)
  assert losses.shape == (6,) and losses.dtype == jnp.float32
  np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(log_odds_ratio, expected_ratio, rtol=1e-5, atol=1e-5)


def test_orpo_worked_example():
  # p_chosen = 1/2 (odds 1), p_rejected = 1/4 (odds 1/3): log odds ratio = log 3 and
  # the penalty is -log sigmoid(log 3) = log(4/3). A tie costs lam * log 2.
  c = f32([math.log(0.5), -2.0])
  r = f32([math.log(0.25), -2.0])
  losses, ratio = orpo(c, r, f32([1.0, 0.5]), lam=0.5)
  np.testing.assert_allclose(ratio, [math.log(3.0), 0.0], atol=1e-6)
  np.testing.assert_allclose(losses, [1.0 + 0.5 * math.log(4 / 3), 0.5 + 0.5 * math.log(2.0)], rtol=1e-6)


def test_orpo_clamps_log_probs_at_zero():
  # At avg log-prob 0 the odds are infinite; the clamp at -1e-6 keeps everything finite.
  c = f32([0.0, -1e-9, 3.0, -1e-6])
  r = f32([-1.0, -1.0, -1.0, -1.0])
  nll = f32([0.0, 0.0, 0.0, 0.0])
  losses, ratio = orpo(c, r, nll)
  clamped = np_log_odds(-1e-6) - np_log_odds(-1.0)
  np.testing.assert_allclose(ratio, [clamped] * 4, rtol=1e-5)
  grads = jax.grad(lambda c, r: orpo(c, r, nll)[0].sum(), argnums=(0, 1))(c, r)
  assert all(np.all(np.isfinite(g)) for g in grads)
  # Above the clamp the odds-ratio term is flat.
  np.testing.assert_array_equal(grads[0][:3], 0.0)


def test_orpo_gradients():
  with jax.enable_x64(True):
    c = jnp.asarray([-0.5, -1.2, -0.05, -3.0])
    r = jnp.asarray([-0.5, -0.4, -2.0, -0.01])
    nll = jnp.asarray([0.5, 1.2, 0.05, 3.0])
    check_grads(lambda c, r, n: orpo(c, r, n, lam=0.3)[0], (c, r, nll), order=1, modes=["rev"])
    # d loss / d nll is 1; d loss / d chosen = -lam * sigmoid(-ratio) / (1 - p_chosen).
    g_nll = jax.grad(lambda n: orpo(c, r, n, lam=0.3)[0].sum())(nll)
    np.testing.assert_allclose(g_nll, np.ones(4))
    ratio = np_log_odds(np.asarray(c)) - np_log_odds(np.asarray(r))
    expected = -0.3 * np_sigmoid(-ratio) / (1.0 - np.exp(np.asarray(c)))
    g_c = jax.grad(lambda c: orpo(c, r, nll, lam=0.3)[0].sum())(c)
    np.testing.assert_allclose(g_c, expected, rtol=1e-9)


# ---------------------------------------------------------------- KTO


@pytest.mark.parametrize(
    "kl, beta, w_d, w_u",
    [(0.0, 0.1, 1.0, 1.0), (2.5, 0.5, 1.0, 1.33), (np.array([0.0, 1.0, -2.0, 3.0, 0.5, 7.0]), 0.1, 0.7, 1.5)],
)
def test_kto_matches_numpy(kl, beta, w_d, w_u):
  losses, rewards = kto(
      f32(POLICY), f32(REF), DESIRABLE, f32(kl), beta=beta, desirable_weight=w_d, undesirable_weight=w_u
  )
  expected, expected_rewards = np_kto(POLICY, REF, DESIRABLE, kl, beta, w_d, w_u)
  assert losses.shape == (6,) and losses.dtype == jnp.float32
  np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(rewards, expected_rewards, rtol=1e-6)


def test_kto_at_reference_costs_half_the_weight():
  logps = f32([-3.0, -3.0, -50.0, -50.0])
  labels = jnp.asarray([1, 0, 1, 0])  # integer 0/1 labels are accepted
  losses, rewards = kto(logps, logps, labels, 0.0, desirable_weight=2.0, undesirable_weight=0.6)
  np.testing.assert_allclose(losses, [1.0, 0.3, 1.0, 0.3], rtol=1e-6)
  np.testing.assert_array_equal(rewards, 0.0)


def test_kto_negative_reference_acts_as_zero():
  args = (f32(POLICY), f32(REF), DESIRABLE)
  at_zero, _ = kto(*args, 0.0)
  for negative in (-0.5, -1e4, f32(-3.0 * np.ones(6))):
    np.testing.assert_array_equal(kto(*args, negative)[0], at_zero)
  # A positive reference point does change the loss.
  assert not np.allclose(kto(*args, 3.0)[0], at_zero)


def test_kto_no_gradient_into_reference_point():
  policy, ref = f32([-2.0, -3.0, -1.0]), f32([-2.5, -2.0, -1.0])
  labels = jnp.asarray([True, False, True])
  for kl in (f32(0.7), f32([0.2, 1.0, 3.0])):
    g = jax.grad(lambda k: kto(policy, ref, labels, k, beta=1.0)[0].sum())(kl)
    np.testing.assert_array_equal(g, 0.0)
  g_policy = jax.grad(lambda p: kto(p, ref, labels, f32(0.7), beta=1.0)[0].sum())(policy)
  assert np.all(g_policy != 0.0)


def test_kto_gradients():
  with jax.enable_x64(True):
    policy = jnp.asarray([-10.0, -7.0, -3.0, -20.0])
    ref = jnp.asarray([-11.0, -7.5, -4.5, -18.0])
    labels = jnp.asarray([True, False, False, True])
    f = lambda p, r: kto(p, r, labels, 0.4, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)[0]
    check_grads(f, (policy, ref), order=1, modes=["rev"])
    # Desirable: d/dp = -w_d * beta * s (1 - s), s = sigmoid(beta (r - z0)); undesirable
    # mirrors it with w_u and opposite sign.
    r = np.asarray(policy - ref)
    s = np_sigmoid(0.5 * (r - 0.4))
    expected = np.where(np.asarray(labels), -1.0, 2.0) * 0.5 * s * (1 - s)
    np.testing.assert_allclose(jax.grad(lambda p: f(p, ref).sum())(policy), expected, rtol=1e-10)


def test_kto_reference_kl():
  policy = f32([-3.0, -5.0, -1.0, -2.0])
  ref = f32([-4.0, -4.0, -4.0, -2.0])
  np.testing.assert_allclose(kto_reference_kl(policy, ref), np.mean([1.0, -1.0, 3.0, 0.0]), rtol=1e-6)
  # A negative batch estimate is clamped at 0.
  assert float(kto_reference_kl(ref, policy)) == 0.0
  assert kto_reference_kl(policy, ref).shape == ()
  g = jax.grad(lambda p, r: kto_reference_kl(p, r), argnums=(0, 1))(policy, ref)
  np.testing.assert_array_equal(g[0], 0.0)
  np.testing.assert_array_equal(g[1], 0.0)
  # Plugged into kto, it is the NumPy reference point.
  z0 = kto_reference_kl(policy, ref)
  losses, _ = kto(f32(POLICY[:4]), f32(REF[:4]), DESIRABLE[:4], z0)
  np.testing.assert_allclose(losses, np_kto(POLICY[:4], REF[:4], DESIRABLE[:4], 0.75, 0.1, 1.0, 1.0)[0], rtol=1e-5)


# ---------------------------------------------------------------- shared behaviour

CASES = {
    "simpo": (lambda c, r, n: simpo(c, r, beta=2.0, gamma=0.5, label_smoothing=0.1)[0]),
    "orpo": (lambda c, r, n: orpo(c, r, n, lam=0.2)[0]),
    "kto": (lambda c, r, n: kto(c, r, DESIRABLE[: c.shape[0]], n[0] * 0.01, beta=0.1)[0]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_equals_eager(name):
  f = CASES[name]
  args = (f32(CHOSEN), f32(REJECTED), f32(NLL))
  np.testing.assert_allclose(jax.jit(f)(*args), f(*args), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_finite_values_and_gradients_at_extremes(name):
  f = CASES[name]
  c = f32([-1e4, -1e-6, -1e4, 0.0, -1e4])
  r = f32([-1e-6, -1e4, -1e4, -1e4, 0.0])
  n = f32([1e4, 1e-6, 1e4, 0.0, 1e4])
  assert np.all(np.isfinite(f(c, r, n)))
  grads = jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2))(c, r, n)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_kto_finite_at_extremes():
  p = f32([-1e4, 0.0, -1e4, 0.0])
  r = f32([0.0, -1e4, 0.0, -1e4])
  labels = jnp.asarray([True, True, False, False])
  losses = kto(p, r, labels, 1e4)[0]
  assert np.all(np.isfinite(losses))
  grad = jax.grad(lambda p: kto(p, r, labels, 1e4)[0].sum())(p)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_inputs_give_float32(name):
  f = CASES[name]
  c, r, n = f32([-0.5, -1.25, -3.0]), f32([-0.75, -0.5, -3.0]), f32([0.5, 1.25, 3.0])
  out_bf16 = f(c.astype(jnp.bfloat16), r.astype(jnp.bfloat16), n.astype(jnp.bfloat16))
  assert out_bf16.dtype == jnp.float32
  # The values above are exact in bfloat16, so only float32 arithmetic differs.
  np.testing.assert_allclose(out_bf16, f(c, r, n), rtol=1e-6)
  # Values that bfloat16 rounds stay close.
  c2, r2, n2 = f32([-0.51, -1.3, -2.9]), f32([-0.77, -0.49, -3.1]), f32([0.51, 1.3, 2.9])
  out = f(c2.astype(jnp.bfloat16), r2.astype(jnp.bfloat16), n2.astype(jnp.bfloat16))
  np.testing.assert_allclose(out, f(c2, r2, n2), rtol=2e-2, atol=2e-3)


def test_kto_bfloat16_reference_point():
  out = kto(f32(POLICY), f32(REF), DESIRABLE, jnp.asarray(0.5, jnp.bfloat16))[0]
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, kto(f32(POLICY), f32(REF), DESIRABLE, 0.5)[0], rtol=1e-6)
  assert kto_reference_kl(f32(POLICY).astype(jnp.bfloat16), f32(REF).astype(jnp.bfloat16)).dtype == jnp.float32


# ---------------------------------------------------------------- bad input

V3, V2 = f32([-1.0, -2.0, -3.0]), f32([-1.0, -2.0])
M3 = f32(np.ones((3, 1)))
I3 = jnp.asarray([-1, -2, -3])
B3 = jnp.asarray([True, False, True])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: simpo(M3, V3), "chosen_avg_logps"),
        (lambda: simpo(V3, V2), "rejected_avg_logps"),
        (lambda: simpo(I3, V3), "chosen_avg_logps"),
        (lambda: simpo(V3, V3, beta=0.0), "beta"),
        (lambda: simpo(V3, V3, label_smoothing=0.5), "label_smoothing"),
        (lambda: simpo(V3, V3, label_smoothing=-0.1), "label_smoothing"),
        (lambda: simpo(V3, V3, gamma="big"), "gamma"),
        (lambda: orpo(V3, V3, M3), "chosen_nll"),
        (lambda: orpo(V3, V3, V2), "chosen_nll"),
        (lambda: orpo(V3, I3, V3), "rejected_avg_logps"),
        (lambda: orpo(V3, V3, V3, lam=-0.1), "lam"),
        (lambda: kto(V3, V2, B3, 0.0), "ref_logps"),
        (lambda: kto(V3, V3, jnp.asarray([True, False]), 0.0), "is_desirable"),
        (lambda: kto(I3, V3, B3, 0.0), "policy_logps"),
        (lambda: kto(V3, V3, B3, V2), "kl_reference"),
        (lambda: kto(V3, V3, B3, jnp.asarray(1)), "kl_reference"),
        (lambda: kto(V3, M3, B3, 0.0), "ref_logps"),
        (lambda: kto(V3, V3, B3, 0.0, beta=-1.0), "beta"),
        (lambda: kto(V3, V3, B3, 0.0, desirable_weight=-1.0), "desirable_weight"),
        (lambda: kto(V3, V3, B3, 0.0, undesirable_weight=-1.0), "undesirable_weight"),
        (lambda: kto_reference_kl(V3, V2), "ref_kl_logps"),
        (lambda: kto_reference_kl(M3, V3), "policy_kl_logps"),
        (lambda: kto_reference_kl(I3, I3), "policy_kl_logps"),
        (lambda: kto_reference_kl(f32([]), f32([])), "policy_kl_logps"),
    ],
)
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ---------------------------------------------------------------- properties

finite_logps = st.floats(-1e4, 0.0, allow_nan=False, width=32)
any_finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@SETTINGS
@hypothesis.given(
    hnp.arrays(np.float32, 5, elements=finite_logps),
    hnp.arrays(np.float32, 5, elements=finite_logps),
    st.floats(0.01, 10.0),
    st.floats(-2.0, 2.0),
    st.floats(0.0, 0.49),
)
def test_simpo_finite_property(c, r, beta, gamma, eps):
  losses = simpo(c, r, beta=beta, gamma=gamma, label_smoothing=eps)[0]
  grads = jax.grad(lambda c, r: simpo(c, r, beta=beta, gamma=gamma, label_smoothing=eps)[0].sum(), argnums=(0, 1))(
      jnp.asarray(c), jnp.asarray(r)
  )
  assert np.all(np.isfinite(losses)) and np.all(losses >= 0)
  assert all(np.all(np.isfinite(g)) for g in grads)


@SETTINGS
@hypothesis.given(
    hnp.arrays(np.float64, 8, elements=st.floats(-50.0, 50.0), unique=True),
    st.floats(0.01, 10.0),
    st.floats(-2.0, 2.0),
)
def test_simpo_decreasing_in_margin_property(diffs, beta, gamma):
  chosen = np.sort(diffs) - 1.0
  with jax.enable_x64(True):
    losses = np.asarray(simpo(jnp.asarray(chosen), jnp.full(8, -1.0), beta=beta, gamma=gamma)[0])
  assert np.all(np.diff(losses) <= 1e-12)
  # Strictly decreasing while the loss is not saturated and the differences are distinct.
  strict = (losses[:-1] > 1e-9) & (np.diff(chosen) > 1e-6)
  assert np.all(np.diff(losses)[strict] < 0)


@SETTINGS
@hypothesis.given(
    hnp.arrays(np.float32, 5, elements=any_finite),
    hnp.arrays(np.float32, 5, elements=any_finite),
    hnp.arrays(np.float32, 5, elements=st.floats(0.0, 1e4, width=32)),
    st.floats(0.0, 10.0),
)
def test_orpo_finite_property(c, r, nll, lam):
  losses, ratio = orpo(c, r, nll, lam=lam)
  grads = jax.grad(lambda c, r: orpo(c, r, jnp.asarray(nll), lam=lam)[0].sum(), argnums=(0, 1))(
      jnp.asarray(c), jnp.asarray(r)
  )
  assert np.all(np.isfinite(losses)) and np.all(np.isfinite(ratio))
  assert np.all(np.asarray(losses) >= nll - 1e-3 * np.abs(nll))  # the odds-ratio term is >= 0
  assert all(np.all(np.isfinite(g)) for g in grads)


@SETTINGS
@hypothesis.given(
    hnp.arrays(np.float32, 6, elements=any_finite),
    hnp.arrays(np.float32, 6, elements=any_finite),
    hnp.arrays(np.bool_, 6),
    any_finite,
    st.floats(0.01, 5.0),
    st.floats(0.0, 3.0),
    st.floats(0.0, 3.0),
)
def test_kto_bounded_property(p, r, labels, kl, beta, w_d, w_u):
  losses, rewards = kto(p, r, labels, kl, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
  weight = np.where(labels, w_d, w_u)
  assert np.all(np.isfinite(losses)) and np.all(np.isfinite(rewards))
  assert np.all(np.asarray(losses) >= 0) and np.all(np.asarray(losses) <= weight * (1 + 1e-6))
  grad = jax.grad(lambda p: kto(p, r, labels, kl, beta=beta)[0].sum())(jnp.asarray(p))
  assert np.all(np.isfinite(grad))
  # Raising the policy log-prob never hurts a desirable example nor helps an undesirable one.
  assert np.all(np.asarray(grad)[labels] <= 0) and np.all(np.asarray(grad)[~labels] >= 0)
