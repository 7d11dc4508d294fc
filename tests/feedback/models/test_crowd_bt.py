"""Tests for rlhf_jax.feedback.models.crowd_bt (item-level Crowd-BT).

References computed here, independently of the code under test: the Crowd-BT likelihood
and log posterior written out in NumPy float64, their central finite differences,
`choix.opt_pairwise` for the Bradley-Terry MAP, a plain Bradley-Terry fit with
`scipy.optimize.minimize` as the "ignore the annotators" baseline, and
`scipy.stats.spearmanr`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from rlhf_jax import losses
from rlhf_jax.feedback.models import crowd_bt as pairwise

# ------------------------------------------------------------------ NumPy references


def np_sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def np_log_likelihood(scores, reliability, bias, left, right, annotators, left_wins):
  """sum_n log P(reported outcome), P(left) = eta sig(d) + (1 - eta) sig(-d)."""
  scores, reliability, bias = (np.asarray(x, np.float64) for x in (scores, reliability, bias))
  d = scores[left] - scores[right] + bias[annotators]
  eta = reliability[annotators]
  p_left = eta * np_sigmoid(d) + (1.0 - eta) * np_sigmoid(-d)
  p_right = eta * np_sigmoid(-d) + (1.0 - eta) * np_sigmoid(d)
  return float(np.sum(np.log(np.where(left_wins, p_left, p_right))))


def np_log_posterior(scores, logit, bias, data, *, score_var, bias_var, prior):
  """Log likelihood + log prior (density in eta, evaluated at eta = sigmoid(logit))."""
  a, b = prior
  eta = np_sigmoid(logit)
  return (
      np_log_likelihood(scores, eta, bias, *data)
      - 0.5 * np.sum(np.square(scores)) / score_var
      - 0.5 * np.sum(np.square(bias)) / bias_var
      + (a - 1.0) * np.sum(np.log(eta))
      + (b - 1.0) * np.sum(np.log(np_sigmoid(-np.asarray(logit, np.float64))))
  )


def finite_difference(fn, x, step=1e-5):
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for i in range(x.size):
    up, down = x.copy(), x.copy()
    up[i] += step
    down[i] -= step
    grad[i] = (fn(up) - fn(down)) / (2 * step)
  return grad


def scipy_bradley_terry(num_items, winners, losers, prior_var):
  """Plain Bradley-Terry MAP (every label trusted, no bias) with SciPy's L-BFGS-B."""

  def objective(scores):
    d = scores[winners] - scores[losers]
    value = np.sum(np.logaddexp(0.0, -d)) + 0.5 * np.sum(scores**2) / prior_var
    weight = np_sigmoid(-d)
    grad = scores / prior_var
    np.add.at(grad, winners, -weight)
    np.add.at(grad, losers, weight)
    return value, grad

  result = scipy.optimize.minimize(
      objective, np.zeros(num_items), jac=True, method="L-BFGS-B", options={"gtol": 1e-8}
  )
  return result.x


def small_problem(seed=0, num_items=7, num_annotators=4, num_comparisons=40):
  rng = np.random.default_rng(seed)
  left = rng.integers(0, num_items, num_comparisons)
  right = rng.integers(0, num_items, num_comparisons)  # a few self-comparisons too
  annotators = rng.integers(0, num_annotators, num_comparisons)
  left_wins = rng.random(num_comparisons) < 0.5
  scores = rng.normal(0, 1.5, num_items)
  reliability = rng.uniform(0.05, 0.95, num_annotators)
  bias = rng.normal(0, 0.7, num_annotators)
  return scores, reliability, bias, (left, right, annotators, left_wins)


# --------------------------------------------------------------- likelihood values


def test_log_likelihood_matches_numpy():
  scores, reliability, bias, data = small_problem()
  reliability[:3] = [0.0, 1.0, 0.5]  # the edges: perfect adversary, perfect, spammer
  expected = np_log_likelihood(scores, reliability, bias, *data)
  got = pairwise.crowd_bt_log_likelihood(
      jnp.float32(scores), jnp.float32(reliability), jnp.float32(bias), *data
  )
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_log_likelihood_is_symmetric_under_reversal():
  # (s, b, eta) -> (-s, -b, 1 - eta) explains the data equally well; see the module doc.
  scores, reliability, bias, data = small_problem(seed=1)
  a = np_log_likelihood(scores, reliability, bias, *data)
  b = pairwise.crowd_bt_log_likelihood(
      jnp.float32(-scores), jnp.float32(1.0 - reliability), jnp.float32(-bias), *data
  )
  np.testing.assert_allclose(float(b), a, rtol=1e-5)


def test_log_likelihood_accepts_integer_outcomes_and_jit():
  scores, reliability, bias, (left, right, annotators, left_wins) = small_problem(seed=2)
  expected = np_log_likelihood(scores, reliability, bias, left, right, annotators, left_wins)
  got = jax.jit(pairwise.crowd_bt_log_likelihood)(
      jnp.float32(scores), jnp.float32(reliability), jnp.float32(bias),
      left, right, annotators, left_wins.astype(np.int32),
  )
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_fused_objective_matches_numpy_and_losses_crowd_bt():
  # The fit uses a fused value-and-gradient kernel instead of autodiff through
  # `losses.crowd_bt`; both must agree with the NumPy likelihood.
  scores, reliability, bias, (left, right, annotators, left_wins) = small_problem(seed=3)
  logit = np.log(reliability / (1 - reliability))
  logit[0] = 30.0  # eta == 1 in float32
  sign = jnp.where(left_wins, 1.0, -1.0)
  fused = pairwise._pairwise_objective(
      jnp.int32(left), jnp.int32(right), jnp.int32(annotators), sign,
      scores.size, reliability.size, pairwise._crowd_bt_rows_terms,
  )
  eta = np_sigmoid(logit)
  expected = -np_log_likelihood(scores, eta, bias, left, right, annotators, left_wins)
  value, grads = jax.value_and_grad(fused, argnums=(0, 1, 2))(
      jnp.float32(scores), jnp.float32(bias), jnp.float32(logit)
  )
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)
  chosen = np.where(left_wins, scores[left] + bias[annotators], scores[right])
  rejected = np.where(left_wins, scores[right], scores[left] + bias[annotators])
  via_losses = losses.crowd_bt(
      jnp.float32(chosen), jnp.float32(rejected), jnp.float32(eta[annotators])
  )
  np.testing.assert_allclose(float(jnp.sum(via_losses)), expected, rtol=1e-5)

  data = (left, right, annotators, left_wins)
  fd_scores = finite_difference(lambda s: -np_log_likelihood(s, eta, bias, *data), scores)
  fd_bias = finite_difference(lambda b: -np_log_likelihood(scores, eta, b, *data), bias)
  fd_logit = finite_difference(
      lambda u: -np_log_likelihood(scores, np_sigmoid(u), bias, *data), logit
  )
  np.testing.assert_allclose(grads[0], fd_scores, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grads[1], fd_bias, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grads[2], fd_logit, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------ gradients


def test_log_likelihood_gradients_match_finite_differences():
  scores, reliability, bias, data = small_problem(seed=4)
  grads = jax.grad(pairwise.crowd_bt_log_likelihood, argnums=(0, 1, 2))(
      jnp.float32(scores), jnp.float32(reliability), jnp.float32(bias), *data
  )
  fd = [
      finite_difference(lambda s: np_log_likelihood(s, reliability, bias, *data), scores),
      finite_difference(lambda r: np_log_likelihood(scores, r, bias, *data), reliability),
      finite_difference(lambda b: np_log_likelihood(scores, reliability, b, *data), bias),
  ]
  for got, expected in zip(grads, fd):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_log_prior_matches_numpy():
  scores, reliability, bias, _ = small_problem(seed=5)
  got = pairwise.crowd_bt_log_prior(
      jnp.float32(scores), jnp.float32(reliability), jnp.float32(bias),
      score_prior_var=2.0, position_bias_prior_var=0.5, reliability_prior=(3.0, 1.5),
  )
  expected = (
      -np.sum(scores**2) / 4.0 - np.sum(bias**2) / 1.0
      + 2.0 * np.sum(np.log(reliability)) + 0.5 * np.sum(np.log(1 - reliability))
  )
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


# ----------------------------------------------------- Bradley-Terry against choix


# One data size for every fit in this file: the sizes are compile-time constants, and
# the fixed-reliability and full fits of one size share a compiled program.
NUM_ITEMS, NUM_ANNOTATORS, NUM_COMPARISONS = 200, 12, 24_000
PRIORS = dict(score_prior_var=1.0, position_bias_prior_var=1.0, reliability_prior=(4.0, 2.0))


@pytest.fixture(scope="module")
def bt_data():
  sim = pairwise.simulate_comparisons(
      jax.random.key(7), num_items=NUM_ITEMS, num_annotators=NUM_ANNOTATORS,
      num_comparisons=NUM_COMPARISONS, spammer_fraction=0.0, adversary_fraction=0.0,
      honest_reliability=(1.0, 1.0), position_bias_scale=0.0, score_scale=1.5,
  )
  return tuple(np.asarray(x) for x in (sim.left, sim.right, sim.annotators, sim.left_wins))


@pytest.fixture(scope="module")
def choix_reference(bt_data):
  choix = pytest.importorskip("choix", reason="choix (the Bradley-Terry reference) is missing")
  left, right, _, left_wins = bt_data
  comparisons = np.stack([np.where(left_wins, left, right), np.where(left_wins, right, left)], 1)
  # I-LSR (Maystre & Grossglauser 2015) without regularisation: the BT maximum likelihood.
  scores = choix.ilsr_pairwise(NUM_ITEMS, comparisons, alpha=0.0, tol=1e-12, max_iter=500)
  return scores - scores.mean()


@pytest.mark.parametrize("method", ["optax", "em"])
def test_fixed_reliability_is_bradley_terry_mle_of_choix(bt_data, choix_reference, method):
  left, right, annotators, left_wins = bt_data
  result = pairwise.crowd_bt(
      left, right, annotators, left_wins, num_items=NUM_ITEMS, position_bias=False,
      fit_reliability=False, score_prior_var=1e4, num_iters=2000, tol=1e-5, method=method,
  )
  reference = choix_reference
  assert np.ptp(reference) > 5.0  # a wide spread, so a shrunken fit would fail
  np.testing.assert_allclose(result.scores, reference, atol=2e-3)
  np.testing.assert_array_equal(result.reliability, np.ones(NUM_ANNOTATORS))
  np.testing.assert_array_equal(result.position_bias, np.zeros(NUM_ANNOTATORS))
  winners = np.where(left_wins, left, right)
  losers = np.where(left_wins, right, left)
  expected_ll = -np.sum(np.logaddexp(0.0, -(reference[winners] - reference[losers])))
  np.testing.assert_allclose(float(result.log_likelihood), expected_ll, rtol=1e-5)


# ---------------------------------------------------- recovery on simulated truth


@pytest.fixture(scope="module")
def simulated():
  sim = pairwise.simulate_comparisons(
      jax.random.key(1), num_items=NUM_ITEMS, num_annotators=NUM_ANNOTATORS,
      num_comparisons=NUM_COMPARISONS, spammer_fraction=2 / 12, adversary_fraction=2 / 12,
      position_bias_scale=0.4,
  )
  return jax.tree.map(np.asarray, sim)


@pytest.fixture(scope="module")
def fitted(simulated):
  data = (simulated.left, simulated.right, simulated.annotators, simulated.left_wins)
  return pairwise.crowd_bt(*data, num_items=NUM_ITEMS, tol=1e-4, num_iters=1000, **PRIORS)


def test_simulator_matches_the_model(simulated):
  s = simulated
  assert np.all(s.left != s.right)
  assert np.sum(s.reliability == 0.5) == 2 and np.sum(s.reliability < 0.5) == 2
  # Per annotator, the share of left wins is the mean model probability (binomial error).
  d = s.scores[s.left] - s.scores[s.right] + s.position_bias[s.annotators]
  eta = s.reliability[s.annotators]
  p_left = eta * np_sigmoid(d) + (1 - eta) * np_sigmoid(-d)
  for j in range(NUM_ANNOTATORS):
    mine = s.annotators == j
    sd = np.sqrt(np.sum(p_left[mine] * (1 - p_left[mine]))) / mine.sum()
    assert abs(s.left_wins[mine].mean() - p_left[mine].mean()) < 4 * sd
  # And the share of reports agreeing with the better-perceived item follows eta.
  agree = s.left_wins == (d > 0)
  for j in range(NUM_ANNOTATORS):
    mine = s.annotators == j
    expected = np.mean(eta[mine] * np_sigmoid(np.abs(d[mine]))
                       + (1 - eta[mine]) * np_sigmoid(-np.abs(d[mine])))
    assert abs(agree[mine].mean() - expected) < 0.04


def test_simulator_is_reproducible():
  sizes = dict(num_items=NUM_ITEMS, num_annotators=NUM_ANNOTATORS,
               num_comparisons=NUM_COMPARISONS)
  a = pairwise.simulate_comparisons(jax.random.key(3), **sizes)
  b = pairwise.simulate_comparisons(jax.random.key(3), **sizes)
  c = pairwise.simulate_comparisons(jax.random.key(4), **sizes)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.left, c.left)


def test_recovers_scores_reliability_and_bias(simulated, fitted):
  s = simulated
  rho = scipy.stats.spearmanr(fitted.scores, s.scores).statistic
  assert rho >= 0.9
  np.testing.assert_allclose(fitted.reliability, s.reliability, atol=0.12)
  spammers, adversaries = s.reliability == 0.5, s.reliability < 0.5
  np.testing.assert_allclose(fitted.reliability[spammers], 0.5, atol=0.06)
  assert np.all(fitted.reliability[adversaries] < 0.3)
  # The bias is identified only through 2 eta - 1 (it vanishes for spammers).
  informative = ~spammers
  np.testing.assert_allclose(fitted.position_bias[informative], s.position_bias[informative],
                             atol=0.25)
  assert abs(float(np.mean(fitted.scores))) < 1e-5
  # Plain Bradley-Terry that trusts every label (and ignores position) ranks worse.
  winners = np.where(s.left_wins, s.left, s.right)
  losers = np.where(s.left_wins, s.right, s.left)
  plain = scipy_bradley_terry(NUM_ITEMS, winners, losers, prior_var=1.0)
  rho_plain = scipy.stats.spearmanr(plain, s.scores).statistic
  assert rho > rho_plain + 0.02, (rho, rho_plain)


def test_fit_is_a_stationary_point_of_the_numpy_log_posterior(simulated, fitted):
  s = simulated
  data = (s.left, s.right, s.annotators, s.left_wins)
  scores = np.asarray(fitted.scores, np.float64)
  bias = np.asarray(fitted.position_bias, np.float64)
  logit = np.log(fitted.reliability / (1.0 - fitted.reliability)).astype(np.float64)
  prior = dict(score_var=1.0, bias_var=1.0, prior=(4.0, 2.0))

  def grads(scores, bias, logit):
    fn = lambda s_, b_, u_: np_log_posterior(s_, u_, b_, data, **prior)
    return (
        finite_difference(lambda x: fn(x, bias, logit), scores, step=1e-4),
        finite_difference(lambda x: fn(scores, x, logit), bias, step=1e-4),
        finite_difference(lambda x: fn(scores, bias, x), logit, step=1e-4),
    )

  at_fit = grads(scores, bias, logit)
  # Scale: the same gradients a little away from the fit are large.
  away = grads(scores + 0.05, bias + 0.05, logit + 0.05)
  for g, g_away in zip(at_fit, away):
    assert np.max(np.abs(g)) < 0.02 * np.max(np.abs(g_away)), (g, g_away)
  # The reported log-likelihood is the NumPy one at the fit.
  np.testing.assert_allclose(
      float(fitted.log_likelihood),
      np_log_likelihood(scores, fitted.reliability, bias, *data),
      rtol=1e-5,
  )


def test_em_reaches_the_same_map(simulated, fitted):
  s = simulated
  data = (s.left, s.right, s.annotators, s.left_wins)
  em = pairwise.crowd_bt(*data, num_items=NUM_ITEMS, method="em", num_iters=200, **PRIORS)
  np.testing.assert_allclose(em.scores, fitted.scores, atol=0.02)
  np.testing.assert_allclose(em.reliability, fitted.reliability, atol=0.02)
  # EM crawls along directions the data barely pin down (a spammer's bias: its reports
  # do not depend on it); elsewhere it agrees.
  informative = np.abs(2 * np.asarray(fitted.reliability) - 1) > 0.2
  np.testing.assert_allclose(em.position_bias[informative],
                             fitted.position_bias[informative], atol=0.02)


def test_prior_breaks_the_reliability_symmetry():
  # Two thirds of the comparisons come from adversaries: the data alone cannot tell
  # which orientation is right, and the default fit (prior a > b, start eta = 0.75)
  # picks "annotators are mostly truthful", i.e. the reversed ranking. Documented.
  sim = pairwise.simulate_comparisons(
      jax.random.key(5), num_items=NUM_ITEMS, num_annotators=NUM_ANNOTATORS,
      num_comparisons=NUM_COMPARISONS, spammer_fraction=0.0, adversary_fraction=8 / 12,
      adversary_reliability=(0.1, 0.1), honest_reliability=(0.9, 0.9),
  )
  fit = pairwise.crowd_bt(sim.left, sim.right, sim.annotators, sim.left_wins,
                          num_items=NUM_ITEMS, **PRIORS)
  rho = scipy.stats.spearmanr(fit.scores, sim.scores).statistic
  assert rho < -0.9
  np.testing.assert_allclose(fit.reliability, 1.0 - np.asarray(sim.reliability), atol=0.08)


# -------------------------------------------------------------------------- errors


def _good():
  return (np.array([0, 1, 2]), np.array([1, 2, 0]), np.array([0, 0, 1]),
          np.array([True, False, True]))


@pytest.mark.parametrize(
    "change, kwargs, message",
    [
        (lambda d: (d[0][:2], *d[1:]), {}, "lengths must match"),
        (lambda d: (d[0], np.array([1, 2, 3]), *d[2:]), {}, r"`right\[2\]` = 3"),
        (lambda d: (np.array([0, 5, 2]), *d[1:]), {}, r"`left`.*num_items=3"),
        (lambda d: (*d[:2], np.array([0, -1, 1]), d[3]), {}, r"`annotators\[1\]` = -1"),
        (lambda d: (*d[:2], np.array([0, 0, 2]), d[3]), {"num_annotators": 2},
         r"`annotators`.*num_annotators=2"),
        (lambda d: (d[0].astype(float), *d[1:]), {}, "`left` must hold integer"),
        (lambda d: (*d[:3], np.array([1, 0, 2])), {}, r"`left_wins\[2\]` = 2"),
        (lambda d: (*d[:3], np.array([0.5, 1.0, 0.0])), {}, "`left_wins` must be boolean"),
        (lambda d: (d[0][None], *d[1:]), {}, "`left` must be 1-D"),
        (lambda d: tuple(x[:0] for x in d), {}, "no comparisons"),
        (lambda d: d, {"method": "gibbs"}, "`method`"),
        (lambda d: d, {"reliability_prior": (0.5, 1.0)}, "`reliability_prior`"),
        (lambda d: d, {"score_prior_var": 0.0}, "`score_prior_var`"),
        (lambda d: d, {"num_items": 0}, "`num_items`"),
    ],
)
def test_bad_input_names_the_argument(change, kwargs, message):
  kwargs = {"num_items": 3, **kwargs}
  with pytest.raises(ValueError, match=message):
    pairwise.crowd_bt(*change(_good()), **kwargs)


def test_log_likelihood_bad_input():
  scores, bias = np.zeros(3, np.float32), np.zeros(2, np.float32)
  reliability = np.ones(2, np.float32)
  left, right, annotators, left_wins = _good()
  with pytest.raises(ValueError, match=r"`right\[0\]` = 3"):
    pairwise.crowd_bt_log_likelihood(scores, reliability, bias, left, right + 2, annotators,
                                     left_wins)
  with pytest.raises(ValueError, match="`position_bias`"):
    pairwise.crowd_bt_log_likelihood(scores, reliability, np.zeros(3, np.float32), left, right,
                                     annotators, left_wins)
  with pytest.raises(ValueError, match="`scores` must be a 1-D floating"):
    pairwise.crowd_bt_log_likelihood(np.zeros(3, np.int32), reliability, bias, left, right,
                                     annotators, left_wins)


def test_simulator_bad_input():
  with pytest.raises(ValueError, match="`num_items`"):
    pairwise.simulate_comparisons(jax.random.key(0), num_items=1, num_annotators=2,
                                  num_comparisons=5)
  with pytest.raises(ValueError, match="sum to at most 1"):
    pairwise.simulate_comparisons(jax.random.key(0), num_items=5, num_annotators=2,
                                  num_comparisons=5, spammer_fraction=0.7,
                                  adversary_fraction=0.5)
