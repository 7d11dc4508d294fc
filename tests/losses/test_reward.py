"""Tests for rlhf_jax.losses.reward against NumPy float64 references written here."""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

from rlhf_jax.losses import reward

# Ties (zero difference) at 0, 1 and 6; extremes at 3, 4 and 5.
CHOSEN = np.array([0.0, 1.0, -2.5, 1e4, -1e4, 3.0, 0.3, 0.7])
REJECTED = np.array([0.0, 1.0, 0.5, -1e4, 1e4, -1e4, 0.3, -1.2])
MARGIN = np.array([0.0, 0.5, 1.0, 2.0, 0.0, 3.0, -1.0, 0.25])
RELIABILITY = np.array([1.0, 0.0, 0.5, 0.9, 0.2, 1.0, 0.75, 0.0])
IS_TIE = np.array([True, False, True, False, True, False, True, False])

SETTINGS = hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
finite_rewards = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_sigmoid(x):
  return np.exp(np_log_sigmoid(x))


def np_bradley_terry(rc, rr, margin=0.0, eps=0.0):
  d = np.float64(rc) - rr - margin
  return -(1 - eps) * np_log_sigmoid(d) - eps * np_log_sigmoid(-d)


def np_davidson_log_probs(d, nu):
  """log (P(win), P(loss), P(tie)) of Davidson (1970) with strengths exp(r)."""
  d = np.asarray(d, np.float64)
  with np.errstate(divide="ignore"):
    log_nu = np.log(nu)
  log_z = np.logaddexp(np.logaddexp(d / 2, -d / 2), log_nu)
  return d / 2 - log_z, -d / 2 - log_z, log_nu - log_z


def np_davidson_probs(d, nu):
  return tuple(np.exp(x) for x in np_davidson_log_probs(d, nu))


def np_plackett_luce(scores, ranking, mask):
  scores = np.asarray(scores, np.float64)
  out = np.zeros(scores.shape[0])
  for b in range(scores.shape[0]):
    valid = [int(ranking[b, k]) for k in range(scores.shape[1]) if mask[b, k]]
    for k, idx in enumerate(valid):
      rest = scores[b, valid[k:]]
      out[b] -= scores[b, idx] - np.logaddexp.reduce(rest)
  return out


def f32(x):
  return jnp.asarray(x, jnp.float32)


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- bradley_terry


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
@pytest.mark.parametrize("margin", [0.0, 1.5, MARGIN], ids=["none", "scalar", "per_example"])
def test_bradley_terry_matches_numpy(eps, margin):
  got = reward.bradley_terry(
      f32(CHOSEN), f32(REJECTED), margin=margin if np.isscalar(margin) else f32(margin),
      label_smoothing=eps,
  )
  assert got.shape == CHOSEN.shape and got.dtype == jnp.float32
  assert_close(got, np_bradley_terry(CHOSEN, REJECTED, MARGIN if not np.isscalar(margin) else margin, eps))


def test_bradley_terry_known_values_and_margin_shift():
  # Equal rewards: log 2, with or without label smoothing.
  assert_close(reward.bradley_terry(f32([2.0]), f32([2.0]), label_smoothing=0.3), [math.log(2)])
  # A margin is a shift of the chosen reward.
  shifted = reward.bradley_terry(f32(CHOSEN - MARGIN), f32(REJECTED))
  assert_close(reward.bradley_terry(f32(CHOSEN), f32(REJECTED), margin=f32(MARGIN)), shifted)
  # Meeting the margin exactly costs log 2; a Python int margin is accepted.
  assert_close(reward.bradley_terry(f32([3.0]), f32([1.0]), margin=2), [math.log(2)])
  # Larger margins never lower the loss.
  losses = [float(reward.bradley_terry(f32([1.0]), f32([0.0]), margin=m)[0]) for m in (0, 1, 2)]
  assert losses[0] < losses[1] < losses[2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(label_smoothing=0.5), "label_smoothing"),
        (dict(label_smoothing=-0.1), "label_smoothing"),
        (dict(margin=jnp.ones(3)), "margin"),
        (dict(margin=jnp.ones(8, jnp.int32)), "margin"),
    ],
)
def test_bradley_terry_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    reward.bradley_terry(f32(CHOSEN), f32(REJECTED), **kwargs)


@SETTINGS
@hypothesis.given(st.lists(finite_rewards, min_size=3, max_size=3), st.floats(-5.0, 5.0))
def test_bradley_terry_decreasing_in_reward_gap(values, margin):
  # (Label smoothing makes the loss U-shaped in the gap, so this is for eps = 0.)
  rejected = values[0]
  low, high = sorted(values[1:])
  loss = reward.bradley_terry(f32([low, high]), f32([rejected, rejected]), margin=margin)
  assert float(loss[0]) >= float(loss[1]) - 1e-6 * (1 + abs(float(loss[1])))


# --------------------------------------------------------------------- bradley_terry_soft


def test_bradley_terry_soft_matches_numpy():
  p = np.linspace(0.0, 1.0, CHOSEN.size)
  d = CHOSEN - REJECTED
  expected = -p * np_log_sigmoid(d) - (1 - p) * np_log_sigmoid(-d)
  assert_close(reward.bradley_terry_soft(f32(CHOSEN), f32(REJECTED), f32(p)), expected)


def test_bradley_terry_soft_hard_limits():
  hard = reward.bradley_terry(f32(CHOSEN), f32(REJECTED))
  swapped = reward.bradley_terry(f32(REJECTED), f32(CHOSEN))
  ones, zeros = jnp.ones(CHOSEN.size), jnp.zeros(CHOSEN.size)
  assert_close(reward.bradley_terry_soft(f32(CHOSEN), f32(REJECTED), ones), hard, rtol=0, atol=0)
  assert_close(reward.bradley_terry_soft(f32(CHOSEN), f32(REJECTED), 1.0), hard, rtol=0, atol=0)
  assert_close(reward.bradley_terry_soft(f32(CHOSEN), f32(REJECTED), zeros), swapped)
  assert_close(reward.bradley_terry_soft(f32(CHOSEN), f32(REJECTED), 0), swapped)


def test_bradley_terry_soft_minimum_is_binary_entropy():
  p = 0.8
  entropy = -p * math.log(p) - (1 - p) * math.log(1 - p)
  at_optimum = reward.bradley_terry_soft(f32([math.log(4.0)]), f32([0.0]), p)
  assert_close(at_optimum, [entropy])
  grad = jax.grad(lambda c: reward.bradley_terry_soft(c, f32([0.0]), p).sum())(f32([math.log(4.0)]))
  assert_close(grad, [0.0], atol=1e-6)


@pytest.mark.parametrize(
    "target, match",
    [(1.5, "target_prob"), (-0.1, "target_prob"), (jnp.ones(8, jnp.int32), "target_prob"),
     (jnp.ones(3), "target_prob")],
)
def test_bradley_terry_soft_bad_target(target, match):
  with pytest.raises(ValueError, match=match):
    reward.bradley_terry_soft(f32(CHOSEN), f32(REJECTED), target)


# --------------------------------------------------------------------- bradley_terry_ties


@pytest.mark.parametrize("nu", [0.1, 1.0, 3.0])
def test_davidson_probabilities_sum_to_one_and_match(nu):
  d = CHOSEN - REJECTED
  win, loss, tie = np_davidson_probs(d, nu)
  np.testing.assert_allclose(win + loss + tie, 1.0, rtol=1e-12)
  # Direct formula in strengths pi = exp(r) on moderate rewards.
  rc, rr = 0.4, -0.9
  pc, pr = math.exp(rc), math.exp(rr)
  denom = pc + pr + nu * math.sqrt(pc * pr)
  np.testing.assert_allclose(np_davidson_probs(rc - rr, nu), [pc / denom, pr / denom, nu * math.sqrt(pc * pr) / denom])

  got_win = reward.bradley_terry_ties(f32(CHOSEN), f32(REJECTED), np.zeros(d.size, bool), tie_param=nu)
  got_tie = reward.bradley_terry_ties(f32(CHOSEN), f32(REJECTED), np.ones(d.size, bool), tie_param=nu)
  log_win, _, log_tie = np_davidson_log_probs(d, nu)
  assert_close(got_win, -log_win)
  assert_close(got_tie, -log_tie)
  mixed = reward.bradley_terry_ties(f32(CHOSEN), f32(REJECTED), IS_TIE, tie_param=nu)
  assert_close(mixed, np.where(IS_TIE, -log_tie, -log_win))


def test_davidson_our_probabilities_sum_to_one():
  with jax.enable_x64(True):
    rc = jnp.asarray(CHOSEN[[0, 1, 2, 6, 7]], jnp.float64)
    rr = jnp.asarray(REJECTED[[0, 1, 2, 6, 7]], jnp.float64)
    no, yes = jnp.zeros(5, bool), jnp.ones(5, bool)
    total = (
        jnp.exp(-reward.bradley_terry_ties(rc, rr, no, tie_param=0.6))
        + jnp.exp(-reward.bradley_terry_ties(rr, rc, no, tie_param=0.6))
        + jnp.exp(-reward.bradley_terry_ties(rc, rr, yes, tie_param=0.6))
    )
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)
  # Worked example: equal rewards and nu = 1 make win, loss and tie equally likely.
  assert_close(reward.bradley_terry_ties(f32([1.0, 1.0]), f32([1.0, 1.0]), [True, False], tie_param=1.0),
               [math.log(3), math.log(3)])


def test_davidson_zero_tie_param_is_bradley_terry():
  no_ties = np.zeros(CHOSEN.size, bool)
  got = reward.bradley_terry_ties(f32(CHOSEN), f32(REJECTED), no_ties, tie_param=0.0)
  np.testing.assert_array_equal(got, reward.bradley_terry(f32(CHOSEN), f32(REJECTED)))
  with_ties = reward.bradley_terry_ties(f32(CHOSEN), f32(REJECTED), IS_TIE, tie_param=0.0)
  assert np.all(np.isinf(with_ties[IS_TIE])) and np.all(np.isfinite(with_ties[~IS_TIE]))

  def total(chosen, nu):
    return reward.bradley_terry_ties(chosen, f32(REJECTED), IS_TIE, tie_param=nu)[~IS_TIE].sum()

  grad_chosen, grad_nu = jax.grad(total, argnums=(0, 1))(f32(CHOSEN), 0.0)
  bt_grad = jax.grad(lambda c: reward.bradley_terry(c, f32(REJECTED)).sum())(f32(CHOSEN))
  np.testing.assert_allclose(grad_chosen, np.where(IS_TIE, 0.0, bt_grad), atol=1e-7)
  # d/dnu of -log P(win) at nu = 0 is 1 / (exp(d/2) + exp(-d/2)).
  d = (CHOSEN - REJECTED)[~IS_TIE]
  assert_close(grad_nu, np.sum(np.exp(-np.logaddexp(d / 2, -d / 2))))
  # Even with infinite tie rows in the sum, the gradient has no NaN.
  grads = jax.grad(lambda c: reward.bradley_terry_ties(c, f32(REJECTED), IS_TIE, tie_param=0.0).sum())(
      f32(CHOSEN))
  assert np.all(np.isfinite(grads))


def test_davidson_tie_loss_is_symmetric_and_minimised_at_zero_gap():
  gaps = np.array([-3.0, -1.0, 0.0, 1.0, 3.0])
  tie = reward.bradley_terry_ties(f32(gaps), f32(np.zeros(5)), np.ones(5, bool), tie_param=0.5)
  np.testing.assert_allclose(tie, tie[::-1], rtol=1e-6)
  assert int(np.argmin(tie)) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(tie_param=-0.1), "tie_param"), (dict(tie_param=jnp.ones(8)), "tie_param"),
     (dict(tie_param=1.0, is_tie=np.zeros(3, bool)), "is_tie")],
)
def test_davidson_bad_arguments(kwargs, match):
  kwargs.setdefault("is_tie", IS_TIE)
  with pytest.raises(ValueError, match=match):
    reward.bradley_terry_ties(f32(CHOSEN), f32(REJECTED), **kwargs)


# ------------------------------------------------------------------------------- crowd_bt


def np_crowd_bt(rc, rr, eta):
  d = np.float64(rc) - rr
  eta = np.asarray(eta, np.float64)
  with np.errstate(divide="ignore"):
    return -np.logaddexp(np.log(eta) + np_log_sigmoid(d), np.log1p(-eta) + np_log_sigmoid(-d))


@pytest.mark.parametrize("eta", [RELIABILITY, 0.0, 0.3, 0.5, 0.95, 1.0], ids=str)
def test_crowd_bt_matches_numpy(eta):
  got = reward.crowd_bt(f32(CHOSEN), f32(REJECTED), eta if np.isscalar(eta) else f32(eta))
  assert got.shape == CHOSEN.shape
  assert_close(got, np_crowd_bt(CHOSEN, REJECTED, eta))


def test_crowd_bt_limits():
  rc, rr = f32(CHOSEN), f32(REJECTED)
  assert_close(reward.crowd_bt(rc, rr, 1.0), reward.bradley_terry(rc, rr))
  assert_close(reward.crowd_bt(rc, rr, jnp.zeros(CHOSEN.size)), reward.bradley_terry(rr, rc))
  assert_close(reward.crowd_bt(rc, rr, 0.5), np.full(CHOSEN.size, math.log(2)), rtol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.3, 0.5, 1.0])
def test_crowd_bt_gradients_match_closed_form(eta):
  # Moderate rewards: at the boundaries the eta-derivative is still exact and finite.
  rc, rr = CHOSEN[[0, 2, 5, 7]].clip(-4, 4), REJECTED[[0, 2, 5, 7]].clip(-4, 4)
  d = rc - rr
  prob = eta * np_sigmoid(d) + (1 - eta) * np_sigmoid(-d)
  d_chosen = -(2 * eta - 1) * np_sigmoid(d) * np_sigmoid(-d) / prob
  d_eta = -(np_sigmoid(d) - np_sigmoid(-d)) / prob

  def total(chosen, eta):
    return reward.crowd_bt(chosen, f32(rr), eta).sum()

  g_chosen, g_eta = jax.grad(total, argnums=(0, 1))(f32(rc), jnp.float32(eta))
  assert_close(g_chosen, d_chosen, rtol=1e-4)
  assert_close(g_eta, d_eta.sum(), rtol=1e-4)
  # Per-example reliabilities get per-example gradients.
  g_eta_vec = jax.grad(lambda e: reward.crowd_bt(f32(rc), f32(rr), e).sum())(jnp.full(4, eta, jnp.float32))
  assert_close(g_eta_vec, d_eta, rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_crowd_bt_boundary_reliability_with_extreme_rewards(eta):
  rc, rr = np.array([1e4, -1e4, 50.0, -50.0]), np.array([-1e4, 1e4, -50.0, 50.0])
  d = rc - rr
  log_prob = -np_crowd_bt(rc, rr, eta)
  # dL/dd = -(2 eta - 1) sigmoid(d) sigmoid(-d) / P, in log space.
  d_chosen = -(2 * eta - 1) * np.exp(np_log_sigmoid(d) + np_log_sigmoid(-d) - log_prob)
  reliability = jnp.full(4, eta, jnp.float32)
  value, g_chosen = jax.value_and_grad(lambda c: reward.crowd_bt(c, f32(rr), reliability).sum())(f32(rc))
  assert_close(value, -log_prob.sum(), rtol=1e-6)
  assert_close(g_chosen, d_chosen, rtol=1e-5, atol=1e-6)
  # The reliability gradient overflows mathematically for two rows; it must saturate, not NaN.
  g_eta = jax.grad(lambda e: reward.crowd_bt(f32(rc), f32(rr), e).sum())(reliability)
  assert np.all(np.isfinite(g_eta))


def test_crowd_bt_check_grads_interior():
  with jax.enable_x64(True):
    rc, rr = jnp.asarray([0.0, 1.3, -2.0]), jnp.asarray([0.0, -0.4, 1.0])
    eta = jnp.asarray([0.2, 0.7, 0.95])
    jtu.check_grads(reward.crowd_bt, (rc, rr, eta), order=1, modes=["rev"])


@pytest.mark.parametrize("eta, match", [(1.5, "reliability"), (-0.5, "reliability"),
                                        (jnp.ones(3), "reliability"), (jnp.ones(8, jnp.int32), "reliability")])
def test_crowd_bt_bad_reliability(eta, match):
  with pytest.raises(ValueError, match=match):
    reward.crowd_bt(f32(CHOSEN), f32(REJECTED), eta)


@SETTINGS
@hypothesis.given(finite_rewards, finite_rewards, st.floats(0.0, 1.0))
def test_crowd_bt_label_flip_symmetry(rc, rr, eta):
  # Swapping the responses and the annotator's reliability describes the same event.
  a = reward.crowd_bt(f32([rc]), f32([rr]), eta)
  b = reward.crowd_bt(f32([rr]), f32([rc]), 1.0 - eta)
  assert_close(a, np.asarray(b, np.float64), rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------------- plackett_luce


def test_plackett_luce_matches_numpy_with_padding():
  scores = np.array([
      [1.0, 2.0, 3.0, 0.5],
      [0.0, 5.0, 1e4, -7.0],
      [-1e4, 1e4, 0.0, 0.0],
      [1.0, 1.0, 1.0, 1.0],
  ])
  ranking = np.array([[2, 0, 1, 3], [1, 0, 99, -3], [1, 2, 3, 0], [0, 1, 2, 3]])
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 1]], bool)
  got = reward.plackett_luce(f32(scores), jnp.asarray(ranking), jnp.asarray(mask))
  assert got.shape == (4,) and got.dtype == jnp.float32
  assert_close(got, np_plackett_luce(scores, ranking, mask), rtol=1e-5, atol=1e-4)


def test_plackett_luce_known_values():
  # Equal scores: every ordering has probability 1 / K!.
  got = reward.plackett_luce(jnp.zeros((1, 5)), jnp.arange(5)[None], jnp.ones((1, 5), bool))
  assert_close(got, [math.log(math.factorial(5))])
  # K = 2 is the Bradley-Terry loss, whichever index the chosen response has.
  scores = np.stack([CHOSEN, REJECTED], axis=1)
  got = reward.plackett_luce(f32(scores), jnp.tile(jnp.array([0, 1]), (CHOSEN.size, 1)),
                             jnp.ones((CHOSEN.size, 2), bool))
  assert_close(got, np_bradley_terry(CHOSEN, REJECTED))
  got = reward.plackett_luce(f32(scores[:, ::-1].copy()), jnp.tile(jnp.array([1, 0]), (CHOSEN.size, 1)),
                             jnp.ones((CHOSEN.size, 2), bool))
  assert_close(got, np_bradley_terry(CHOSEN, REJECTED))
  # A fully padded row costs nothing.
  assert_close(reward.plackett_luce(f32([[3.0, 1.0]]), jnp.array([[0, 1]]), jnp.zeros((1, 2), bool)), [0.0])


def test_plackett_luce_mask_equals_slicing():
  rng = np.random.default_rng(0)
  batch, k, padded = 3, 4, 7
  scores = rng.normal(size=(batch, k)) * 3
  ranking = np.stack([rng.permutation(k) for _ in range(batch)])
  pad_scores = np.concatenate([scores, np.full((batch, padded - k), 1e4)], axis=1)
  pad_scores[1, -1] = -1e4
  pad_ranking = np.concatenate([ranking, np.full((batch, padded - k), 99)], axis=1)
  pad_ranking[0, -1] = 5  # In range but padded: must still be ignored.
  pad_mask = np.arange(padded)[None] < k
  pad_mask = np.broadcast_to(pad_mask, (batch, padded))

  @jax.jit
  def loss_and_grad(s, r, m):
    return jax.value_and_grad(lambda s: reward.plackett_luce(s, r, m).sum())(s), reward.plackett_luce(s, r, m)

  (_, g_sliced), sliced = loss_and_grad(f32(scores), ranking, np.ones((batch, k), bool))
  (_, g_masked), masked = loss_and_grad(f32(pad_scores), pad_ranking, pad_mask)
  assert_close(masked, np.asarray(sliced, np.float64), rtol=1e-6, atol=1e-6)
  assert_close(g_masked[:, :k], np.asarray(g_sliced, np.float64), atol=1e-6)
  np.testing.assert_array_equal(g_masked[:, k:], 0.0)


@pytest.mark.parametrize(
    "args, match",
    [
        ((jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones((2, 3), bool)), "ranking"),
        ((jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3), bool)), "scores"),
        ((jnp.zeros(3), jnp.zeros(3, jnp.int32), jnp.ones(3, bool)), "scores"),
        ((jnp.zeros((2, 3)), jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 3), bool)), "ranking"),
        ((jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 2), bool)), "mask"),
    ],
)
def test_plackett_luce_bad_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    reward.plackett_luce(*args)


@SETTINGS
@hypothesis.given(
    st.lists(finite_rewards, min_size=4, max_size=4),
    st.permutations(range(4)),
    st.integers(0, 4),
    st.floats(-100.0, 100.0),
)
def test_plackett_luce_properties(values, perm, n_valid, shift):
  scores = f32([values])
  ranking = jnp.asarray([perm])
  mask = jnp.asarray([[k < n_valid for k in range(4)]])
  loss, grads, shifted = _plackett_luce_probe(scores, ranking, mask, jnp.float32(shift))
  assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grads))
  assert float(loss[0]) >= -1e-3  # A negative log-probability.
  # Only score differences matter.
  assert_close(shifted, np.asarray(loss, np.float64), rtol=1e-3, atol=2e-2)


@jax.jit
def _plackett_luce_probe(scores, ranking, mask, shift):
  loss = reward.plackett_luce(scores, ranking, mask)
  grads = jax.grad(lambda s: reward.plackett_luce(s, ranking, mask).sum())(scores)
  return loss, grads, reward.plackett_luce(scores + shift, ranking, mask)


# ----------------------------------------------------------------------- reward_centering


def test_reward_centering_matches_numpy():
  assert_close(reward.reward_centering(f32(CHOSEN), f32(REJECTED)), (CHOSEN + REJECTED) ** 2)
  assert_close(reward.reward_centering(f32([1.0]), f32([2.0])), [9.0])
  grad = jax.grad(lambda c: reward.reward_centering(c, f32(REJECTED)).sum())(f32(CHOSEN))
  assert_close(grad, 2 * (CHOSEN + REJECTED))


# ---------------------------------------------------------------- shared behaviour, all six


def _cases(dtype):
  """(name, function of the float arguments, float arguments) for every loss."""
  rc, rr = jnp.asarray(CHOSEN, dtype), jnp.asarray(REJECTED, dtype)
  scores = jnp.stack([rc, rr, 0.5 * rc], axis=1)
  ranking = jnp.tile(jnp.array([2, 0, 1]), (CHOSEN.size, 1))
  mask = jnp.asarray(np.arange(3)[None] < np.array([3, 2, 3, 1, 3, 2, 3, 3])[:, None])
  return [
      ("bradley_terry",
       lambda c, r, m: reward.bradley_terry(c, r, margin=m, label_smoothing=0.1),
       (rc, rr, jnp.asarray(MARGIN, dtype))),
      ("bradley_terry_soft", reward.bradley_terry_soft,
       (rc, rr, jnp.asarray(np.linspace(0, 1, CHOSEN.size), dtype))),
      ("bradley_terry_ties",
       lambda c, r, nu: reward.bradley_terry_ties(c, r, IS_TIE, tie_param=nu),
       (rc, rr, jnp.asarray(0.7, dtype))),
      ("crowd_bt", reward.crowd_bt, (rc, rr, jnp.asarray(RELIABILITY, dtype))),
      ("plackett_luce", lambda s: reward.plackett_luce(s, ranking, mask), (scores,)),
      ("reward_centering", reward.reward_centering, (rc, rr)),
  ]


NAMES = [name for name, _, _ in _cases(jnp.float32)]


def _case(name, dtype=jnp.float32):
  return next(case for case in _cases(dtype) if case[0] == name)


def test_all_exported():
  assert sorted(reward.__all__) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager(name):
  _, fn, args = _case(name)
  np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_finite_values_and_gradients_for_extreme_inputs(name):
  _, fn, args = _case(name)
  value = fn(*args)
  grads = jax.grad(lambda *a: fn(*a).sum(), argnums=tuple(range(len(args))))(*args)
  assert np.all(np.isfinite(value)), value
  for g in grads:
    assert np.all(np.isfinite(g)), g


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_inputs_give_float32(name):
  _, fn, args = _case(name, jnp.bfloat16)
  out = fn(*args)
  assert out.dtype == jnp.float32
  upcast = fn(*[a.astype(jnp.float32) for a in args])
  np.testing.assert_allclose(out, upcast, rtol=1e-6, atol=1e-6)
  _, _, args32 = _case(name)
  # Against unrounded float32 inputs, the difference is bfloat16 rounding of the inputs.
  np.testing.assert_allclose(out, fn(*args32), rtol=2e-2, atol=0.5)


@pytest.mark.parametrize("name", NAMES)
def test_check_grads_float64(name):
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    _, fn, args = _case(name, jnp.float64)
    # Moderate values keep finite differences meaningful; the structure (masks, ties) is kept.
    args = tuple(
        jnp.clip(a, -3, 3) + 0.01 * jnp.asarray(rng.normal(size=a.shape)) if a.ndim and name != "crowd_bt"
        else a for a in args
    )
    if name == "bradley_terry_soft":
      args = (args[0], args[1], jnp.clip(args[2], 0.05, 0.95))
    if name == "crowd_bt":
      args = (jnp.clip(args[0], -3, 3), jnp.clip(args[1], -3, 3), jnp.clip(args[2], 0.05, 0.95))
    jtu.check_grads(fn, args, order=1, modes=["rev"])


@pytest.mark.parametrize("name", ["bradley_terry", "bradley_terry_soft", "bradley_terry_ties",
                                  "crowd_bt", "reward_centering"])
def test_pairwise_bad_rewards(name):
  _, fn, args = _case(name)
  with pytest.raises(ValueError, match="rejected_rewards"):
    fn(args[0], args[1][:3], *args[2:])
  with pytest.raises(ValueError, match="chosen_rewards"):
    fn(args[0].astype(jnp.int32), args[1], *args[2:])


@SETTINGS
@hypothesis.given(
    st.lists(finite_rewards, min_size=2, max_size=2),
    st.floats(0.0, 1.0),
    st.floats(0.01, 10.0),
    st.floats(-5.0, 5.0),
)
def test_finite_for_any_finite_input(values, prob, nu, margin):
  outputs = _pairwise_probe(f32(values[:1]), f32(values[1:]), *map(jnp.float32, (prob, nu, margin)))
  for value, grads in outputs:
    assert np.all(np.isfinite(value)) and all(np.all(np.isfinite(g)) for g in grads), outputs


@jax.jit
def _pairwise_probe(rc, rr, prob, nu, margin):
  fns = [
      lambda c, r: reward.bradley_terry(c, r, margin=margin, label_smoothing=0.2),
      lambda c, r: reward.bradley_terry_soft(c, r, prob),
      lambda c, r: reward.bradley_terry_ties(c, r, [True], tie_param=nu),
      lambda c, r: reward.bradley_terry_ties(c, r, [False], tie_param=nu),
      lambda c, r: reward.crowd_bt(c, r, prob),
      lambda c, r: reward.reward_centering(c, r),
  ]
  return [
      (fn(rc, rr), jax.grad(lambda c, r: fn(c, r).sum(), argnums=(0, 1))(rc, rr)) for fn in fns
  ]
