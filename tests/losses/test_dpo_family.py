"""Tests for the DPO family (`rlhf_jax/losses/dpo_family.py`): every variant function and
`dpo(variant=...)`, checked against float64 NumPy formulas written here."""

from __future__ import annotations

import functools
import inspect

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest
from scipy import special

from rlhf_jax.losses import dpo_family
from rlhf_jax.losses.dpo_family import DPO_VARIANT_LOSSES, DPO_VARIANTS, dpo

ALL_VARIANTS = (
    "sigmoid", "cdpo", "robust", "ipo", "hinge", "exo_pair", "nca_pair", "bco_pair",
    "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm",
)


# ----------------------------------------------------------------------------------------
# Reference formulas (NumPy, float64), from the papers / TRL's DPOTrainer.dpo_loss.


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def reference_losses(variant, pc, pr, rc, rr, *, beta, eps=0.0, lc=None, lr=None,
                     tau=0.05, exo_eps=None, delta=0.0):
  pc, pr, rc, rr = (np.asarray(a, np.float64) for a in (pc, pr, rc, rr))
  c = pc - rc
  r = pr - rr
  d = c - r
  z = beta * d

  def smoothed(t):
    return -(1 - eps) * np_log_sigmoid(t) - eps * np_log_sigmoid(-t)

  def per_token(x, n):
    return x / np.maximum(np.asarray(n, np.float64), 1.0)

  if variant in ("sigmoid", "cdpo"):
    return smoothed(z)
  if variant == "robust":
    return (-(1 - eps) * np_log_sigmoid(z) + eps * np_log_sigmoid(-z)) / (1 - 2 * eps)
  if variant == "ipo":
    if lc is not None:
      d = per_token(c, lc) - per_token(r, lr)
    return (d - 1 / (2 * beta)) ** 2
  if variant == "hinge":
    return np.maximum(0.0, 1 - z)
  if variant == "exo_pair":
    e = exo_eps if exo_eps is not None else (eps if eps > 0 else 1e-3)
    qw, ql = special.expit(z), special.expit(-z)
    # KL((qw, ql) || (1 - e, e)); xlogy gives 0 log 0 = 0 for saturated sigmoids.
    return (special.xlogy(qw, qw) - qw * np.log(1 - e)
            + special.xlogy(ql, ql) - ql * np.log(e))
  if variant == "nca_pair":
    return (-np_log_sigmoid(beta * c) - 0.5 * np_log_sigmoid(-beta * c)
            - 0.5 * np_log_sigmoid(-beta * r))
  if variant == "bco_pair":
    return -np_log_sigmoid(beta * c - delta) - np_log_sigmoid(-(beta * r - delta))
  if variant == "sppo_hard":
    return (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2
  if variant == "aot":
    return smoothed(beta * (np.sort(pc - pr) - np.sort(rc - rr)))
  if variant == "aot_unpaired":
    return smoothed(beta * (np.sort(c) - np.sort(r)))
  if variant == "apo_zero":
    return 1 - special.expit(beta * c) + special.expit(beta * r)
  if variant == "apo_down":
    return special.expit(beta * c) + 1 - special.expit(z)
  if variant == "discopop":
    m = special.expit(z / tau)
    # exp(-z) * m evaluated in log space so that huge exp(-z) meets tiny m without nan.
    return -np_log_sigmoid(z) * (1 - m) + np.exp(-z + special.log_expit(z / tau))
  if variant == "sigmoid_norm":
    return -np_log_sigmoid(beta * (per_token(c, lc) - per_token(r, lr)))
  raise AssertionError(variant)


# ----------------------------------------------------------------------------------------
# Fixtures: each is (policy_chosen, policy_rejected, ref_chosen, ref_rejected,
# chosen_lengths, rejected_lengths, beta), inputs already rounded to float32.


def _f32(*arrays):
  return tuple(np.asarray(a, np.float32) for a in arrays)


def _random_fixture():
  rng = np.random.default_rng(0)
  pc = -rng.uniform(1.0, 60.0, 6)
  pr = -rng.uniform(1.0, 60.0, 6)
  rc = pc + rng.normal(0.0, 3.0, 6)
  rr = pr + rng.normal(0.0, 3.0, 6)
  lc = rng.integers(1, 40, 6)
  lr = rng.integers(1, 40, 6)
  return (*_f32(pc, pr, rc, rr), lc, lr, 0.1)


def _ties_fixture():
  # Policy equals reference in the first two pairs; equal non-zero log-ratios (d = 0,
  # c = r != 0) in the rest. Zero lengths check the clamp to one token.
  pc = np.array([-5.0, -7.0, -3.0, -10.0, -1.0])
  pr = np.array([-5.0, -2.0, -8.0, -4.0, -6.0])
  shift = np.array([0.0, 0.0, 2.0, -1.0, 0.5])
  rc, rr = pc - shift, pr - shift
  lc = np.array([4, 0, 3, 7, 1])
  lr = np.array([4, 5, 0, 7, 2])
  return (*_f32(pc, pr, rc, rr), lc, lr, 0.5)


def _extreme_fixture():
  pc = np.array([-1e4, 0.0, -1e4, -1.0, -1e4, -2.5])
  pr = np.array([0.0, -1e4, -1e4, -1e4, -1.0, -1e4])
  rc = np.array([0.0, -1e4, 0.0, -1.0, -1e4, -1e4])
  rr = np.array([-1e4, 0.0, 0.0, -1.0, -1e4, 0.0])
  lc = np.array([1, 2000, 1, 3, 0, 9])
  lr = np.array([1, 1, 4000, 3, 5, 9])
  return (*_f32(pc, pr, rc, rr), lc, lr, 1.0)


FIXTURES = {"random": _random_fixture, "ties": _ties_fixture, "extreme": _extreme_fixture}

# Only some variants use label smoothing; 0.1 exercises it where it matters.
LABEL_SMOOTHING = 0.1


def _call(variant, fixture, **kwargs):
  pc, pr, rc, rr, lc, lr, beta = fixture
  kwargs.setdefault("beta", beta)
  kwargs.setdefault("label_smoothing", LABEL_SMOOTHING)
  return dpo(pc, pr, rc, rr, variant=variant, chosen_lengths=lc, rejected_lengths=lr, **kwargs)


def _reference(variant, fixture, **kwargs):
  pc, pr, rc, rr, lc, lr, beta = fixture
  kwargs.setdefault("beta", beta)
  kwargs.setdefault("eps", LABEL_SMOOTHING)
  return reference_losses(variant, pc, pr, rc, rr, lc=lc, lr=lr, **kwargs)


# ----------------------------------------------------------------------------------------
# Values.


def test_variant_tuple_is_complete():
  assert tuple(DPO_VARIANTS) == ALL_VARIANTS


@pytest.mark.parametrize("fixture_name", sorted(FIXTURES))
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_matches_numpy_formula(variant, fixture_name):
  fixture = FIXTURES[fixture_name]()
  losses, chosen_rewards, rejected_rewards = _call(variant, fixture)
  assert losses.shape == chosen_rewards.shape == rejected_rewards.shape == (len(fixture[0]),)
  assert losses.dtype == jnp.float32
  expected = _reference(variant, fixture)
  assert np.all(np.isfinite(expected))
  np.testing.assert_allclose(np.asarray(losses), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "variant, kwargs, ref_kwargs",
    [
        ("discopop", {"discopop_tau": 0.3}, {"tau": 0.3}),
        ("discopop", {"discopop_tau": 1.0}, {"tau": 1.0}),
        ("exo_pair", {"exo_epsilon": 0.2}, {"exo_eps": 0.2}),
        ("exo_pair", {"label_smoothing": 0.0}, {"eps": 0.0}),  # TRL's 1e-3 fallback
        ("bco_pair", {"bco_delta": 0.7}, {"delta": 0.7}),
        ("bco_pair", {"bco_delta": -2.0}, {"delta": -2.0}),
        ("robust", {"label_smoothing": 0.4}, {"eps": 0.4}),
        ("aot", {"label_smoothing": 0.0}, {"eps": 0.0}),
    ],
)
@pytest.mark.parametrize("fixture_name", ["random", "extreme"])
def test_extra_hyper_parameters(variant, kwargs, ref_kwargs, fixture_name):
  fixture = FIXTURES[fixture_name]()
  losses, _, _ = _call(variant, fixture, **kwargs)
  np.testing.assert_allclose(
      np.asarray(losses), _reference(variant, fixture, **ref_kwargs), rtol=2e-5, atol=2e-5)


def test_exo_fallback_epsilon_differs_from_given_epsilon():
  fixture = _random_fixture()
  fallback, _, _ = _call("exo_pair", fixture, label_smoothing=0.0)
  explicit, _, _ = _call("exo_pair", fixture, label_smoothing=0.0, exo_epsilon=1e-3)
  other, _, _ = _call("exo_pair", fixture, label_smoothing=0.0, exo_epsilon=0.3)
  np.testing.assert_allclose(fallback, explicit, rtol=1e-6)
  assert not np.allclose(fallback, other)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
@pytest.mark.parametrize("fixture_name", sorted(FIXTURES))
def test_rewards_are_beta_times_logratio(variant, fixture_name):
  pc, pr, rc, rr, _, _, beta = fixture = FIXTURES[fixture_name]()
  _, chosen_rewards, rejected_rewards = _call(variant, fixture)
  pc, pr, rc, rr = (a.astype(np.float64) for a in (pc, pr, rc, rr))
  np.testing.assert_allclose(chosen_rewards, beta * (pc - rc), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(rejected_rewards, beta * (pr - rr), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 10.0])
def test_sigmoid_is_log2_when_policy_equals_reference(beta):
  logps = jnp.array([-3.0, -1e4, 0.0, -17.25])
  other = jnp.array([-8.0, -2.0, -1e4, -0.5])
  losses, chosen_rewards, rejected_rewards = dpo(logps, other, logps, other, beta=beta)
  np.testing.assert_allclose(losses, np.full(4, np.log(2.0)), rtol=1e-7)
  np.testing.assert_array_equal(chosen_rewards, 0.0)
  np.testing.assert_array_equal(rejected_rewards, 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.2, 0.45])
def test_label_smoothed_sigmoid_at_tie_is_log2(eps):
  # Any soft label gives log 2 at sigmoid(0) = 1/2.
  x = jnp.array([-4.0, -9.0])
  losses, _, _ = dpo(x, x, x, x, variant="cdpo", label_smoothing=eps)
  np.testing.assert_allclose(losses, np.log(2.0), rtol=1e-7)


@pytest.mark.parametrize("variant", ["robust", "cdpo"])
def test_zero_label_smoothing_reduces_to_sigmoid(variant):
  fixture = _random_fixture()
  plain, _, _ = _call("sigmoid", fixture, label_smoothing=0.0)
  other, _, _ = _call(variant, fixture, label_smoothing=0.0)
  np.testing.assert_allclose(other, plain, rtol=1e-7)
  np.testing.assert_allclose(
      plain, _reference("sigmoid", fixture, eps=0.0), rtol=2e-6, atol=1e-7)


def test_cdpo_is_label_smoothed_sigmoid():
  fixture = _random_fixture()
  sigmoid, _, _ = _call("sigmoid", fixture, label_smoothing=0.3)
  cdpo, _, _ = _call("cdpo", fixture, label_smoothing=0.3)
  unsmoothed, _, _ = _call("sigmoid", fixture, label_smoothing=0.0)
  np.testing.assert_allclose(cdpo, sigmoid, rtol=1e-7)
  assert not np.allclose(cdpo, unsmoothed)


def test_robust_is_unbiased_for_flipped_labels():
  # Chowdhury et al.: E over a flip with prob eps of the robust loss = the clean loss.
  fixture = _random_fixture()
  pc, pr, rc, rr, _, _, beta = fixture
  eps = 0.3
  kept, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant="robust", label_smoothing=eps)
  flipped, _, _ = dpo(pr, pc, rr, rc, beta=beta, variant="robust", label_smoothing=eps)
  clean, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant="sigmoid")
  np.testing.assert_allclose((1 - eps) * kept + eps * flipped, clean, rtol=1e-5, atol=1e-6)


def test_ipo_without_lengths_uses_summed_logratios():
  pc, pr, rc, rr, _, _, beta = _random_fixture()
  losses, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant="ipo")
  np.testing.assert_allclose(
      losses, reference_losses("ipo", pc, pr, rc, rr, beta=beta), rtol=2e-5)


def test_ipo_with_lengths_uses_per_token_averages():
  pc, pr, rc, rr, lc, lr, beta = _random_fixture()
  summed, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant="ipo")
  averaged, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant="ipo",
                       chosen_lengths=lc, rejected_lengths=lr)
  d_avg = (pc.astype(np.float64) - rc) / lc - (pr.astype(np.float64) - rr) / lr
  np.testing.assert_allclose(averaged, (d_avg - 1 / (2 * beta)) ** 2, rtol=2e-5)
  assert not np.allclose(averaged, summed)
  # Repeating every completion k times multiplies sums and lengths by k: averages stay.
  k = 3.0
  repeated, _, _ = dpo(k * pc, k * pr, k * rc, k * rr, beta=beta, variant="ipo",
                       chosen_lengths=k * lc, rejected_lengths=k * lr)
  np.testing.assert_allclose(repeated, averaged, rtol=1e-4)


def test_sigmoid_norm_is_invariant_to_repeating_completions():
  pc, pr, rc, rr, lc, lr, beta = _random_fixture()
  base, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant="sigmoid_norm",
                   chosen_lengths=lc, rejected_lengths=lr)
  repeated, _, _ = dpo(2 * pc, 2 * pr, 2 * rc, 2 * rr, beta=beta, variant="sigmoid_norm",
                       chosen_lengths=2 * lc, rejected_lengths=2 * lr)
  np.testing.assert_allclose(repeated, base, rtol=1e-5)
  # With unit lengths it is plain sigmoid DPO.
  ones = np.ones_like(lc)
  unit, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant="sigmoid_norm",
                   chosen_lengths=ones, rejected_lengths=ones)
  plain, _, _ = dpo(pc, pr, rc, rr, beta=beta)
  np.testing.assert_allclose(unit, plain, rtol=1e-6)


def test_lengths_accept_float_and_int():
  pc, pr, rc, rr, lc, lr, beta = _random_fixture()
  from_int, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant="sigmoid_norm",
                       chosen_lengths=lc, rejected_lengths=lr)
  from_float, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant="sigmoid_norm",
                         chosen_lengths=lc.astype(np.float32),
                         rejected_lengths=lr.astype(np.float32))
  np.testing.assert_array_equal(from_int, from_float)


def test_aot_is_permutation_invariant_in_the_batch():
  fixture = _random_fixture()
  pc, pr, rc, rr, _, _, beta = fixture
  perm = np.array([3, 0, 5, 1, 4, 2])
  for variant in ("aot", "aot_unpaired"):
    base, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant=variant)
    shuffled, _, _ = dpo(pc[perm], pr[perm], rc[perm], rr[perm], beta=beta, variant=variant)
    np.testing.assert_allclose(shuffled, base, rtol=1e-6)


def test_aot_single_pair_is_sigmoid():
  x = jnp.array([-3.0]), jnp.array([-5.0]), jnp.array([-4.0]), jnp.array([-4.5])
  aot, _, _ = dpo(*x, variant="aot", label_smoothing=0.2)
  sigmoid, _, _ = dpo(*x, variant="sigmoid", label_smoothing=0.2)
  unpaired, _, _ = dpo(*x, variant="aot_unpaired", label_smoothing=0.2)
  np.testing.assert_allclose(aot, sigmoid, rtol=1e-6)
  np.testing.assert_allclose(unpaired, sigmoid, rtol=1e-6)


def test_worked_example_sigmoid_and_hinge():
  # d = (-1 - -3) - (-4 - -2) = 4; beta = 0.5 -> z = 2.
  args = jnp.array([-1.0]), jnp.array([-4.0]), jnp.array([-3.0]), jnp.array([-2.0])
  sigmoid, chosen, rejected = dpo(*args, beta=0.5)
  np.testing.assert_allclose(sigmoid, [np.log1p(np.exp(-2.0))], rtol=1e-6)
  np.testing.assert_allclose(chosen, [1.0])
  np.testing.assert_allclose(rejected, [-1.0])
  hinge, _, _ = dpo(*args, beta=0.25, variant="hinge")
  np.testing.assert_allclose(hinge, [0.0])
  ipo, _, _ = dpo(*args, beta=0.5, variant="ipo")
  np.testing.assert_allclose(ipo, [9.0])


# ----------------------------------------------------------------------------------------
# Gradients, jit, dtypes.


@pytest.mark.parametrize(
    "variant", ["sigmoid", "robust", "ipo", "exo_pair", "nca_pair", "aot_unpaired",
                "apo_down", "discopop", "sigmoid_norm"])
def test_check_grads_float64(variant):
  pc, pr, rc, rr, lc, lr, beta = _random_fixture()
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a, jnp.float64) for a in (pc, pr, rc, rr))

    def total(*xs):
      losses, _, _ = dpo(*xs, beta=beta, variant=variant, label_smoothing=0.1,
                         chosen_lengths=lc, rejected_lengths=lr)
      assert losses.dtype == jnp.float64
      return losses.sum()

    check_grads(total, args, order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_finite_values_and_gradients_at_extremes(variant, beta):
  pc, pr, rc, rr, lc, lr, _ = _extreme_fixture()

  def total(*xs):
    losses, _, _ = dpo(*xs, beta=beta, variant=variant, label_smoothing=0.1,
                       chosen_lengths=lc, rejected_lengths=lr)
    return losses.sum()

  value, grads = jax.value_and_grad(total, argnums=(0, 1, 2, 3))(pc, pr, rc, rr)
  assert np.isfinite(value)
  for g in grads:
    assert np.all(np.isfinite(g)), (variant, g)


def test_sigmoid_gradient_saturates_correctly():
  # Far on the right side the gradient vanishes; far on the wrong side it is -beta.
  pc = jnp.array([0.0, -1e4])
  pr = jnp.array([-1e4, 0.0])
  zero = jnp.zeros(2)
  grad = jax.grad(lambda x: dpo(x, pr, zero, zero, beta=0.1)[0].sum())(pc)
  np.testing.assert_allclose(grad, [0.0, -0.1], atol=1e-7)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_jit_equals_eager(variant):
  pc, pr, rc, rr, lc, lr, beta = _random_fixture()
  kwargs = dict(beta=beta, variant=variant, label_smoothing=0.1,
                chosen_lengths=lc, rejected_lengths=lr)
  eager = dpo(pc, pr, rc, rr, **kwargs)
  jitted = jax.jit(functools.partial(dpo, **kwargs))(pc, pr, rc, rr)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["sigmoid", "robust", "exo_pair", "aot", "ipo"])
def test_jit_with_traced_hyper_parameters(variant):
  fixture = _random_fixture()
  pc, pr, rc, rr, lc, lr, _ = fixture

  @jax.jit
  def run(beta, label_smoothing, lc, lr):
    return dpo(pc, pr, rc, rr, beta=beta, variant=variant, label_smoothing=label_smoothing,
               chosen_lengths=lc, rejected_lengths=lr)[0]

  for beta, eps in [(0.1, 0.0), (0.3, 0.2)]:
    np.testing.assert_allclose(
        run(beta, eps, lc, lr), _reference(variant, fixture, beta=beta, eps=eps),
        rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_bfloat16_inputs_give_float32_outputs(variant):
  # Small integers and halves are exact in bfloat16, so bf16 and f32 inputs must agree.
  pc = np.array([-3.0, -12.5, -40.0, -7.0], np.float32)
  pr = np.array([-5.0, -2.0, -41.0, -7.0], np.float32)
  rc = np.array([-4.0, -10.0, -38.5, -6.0], np.float32)
  rr = np.array([-4.5, -3.0, -39.0, -6.0], np.float32)
  lc = np.array([3, 8, 20, 5])
  lr = np.array([4, 2, 21, 5])
  kwargs = dict(beta=0.2, variant=variant, label_smoothing=0.1,
                chosen_lengths=lc, rejected_lengths=lr)
  from_bf16 = dpo(*(jnp.asarray(a, jnp.bfloat16) for a in (pc, pr, rc, rr)), **kwargs)
  from_f32 = dpo(pc, pr, rc, rr, **kwargs)
  for a, b in zip(from_bf16, from_f32):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
      from_bf16[0],
      reference_losses(variant, pc, pr, rc, rr, beta=0.2, eps=0.1, lc=lc, lr=lr),
      rtol=2e-5, atol=2e-6)


# ----------------------------------------------------------------------------------------
# Bad inputs.


def _good():
  return tuple(jnp.array([-1.0, -2.0, -3.0]) for _ in range(4))


@pytest.mark.parametrize("position, name", [
    (0, "policy_chosen_logps"), (1, "policy_rejected_logps"),
    (2, "ref_chosen_logps"), (3, "ref_rejected_logps")])
def test_int_dtype_raises(position, name):
  args = list(_good())
  args[position] = jnp.array([1, 2, 3])
  with pytest.raises(ValueError, match=f"`{name}` must have a floating dtype"):
    dpo(*args)


def test_wrong_rank_raises():
  args = list(_good())
  args[2] = jnp.ones((3, 2))
  with pytest.raises(ValueError, match="`ref_chosen_logps` must have rank 1"):
    dpo(*args)


def test_mismatched_shapes_raise():
  args = list(_good())
  args[1] = jnp.array([-1.0, -2.0])
  with pytest.raises(ValueError, match=r"`policy_rejected_logps` \(2,\)"):
    dpo(*args)


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_nonpositive_beta_raises(beta):
  with pytest.raises(ValueError, match=r"`beta` must lie in \(0"):
    dpo(*_good(), beta=beta)


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7])
def test_label_smoothing_out_of_range_raises(eps):
  with pytest.raises(ValueError, match=r"`label_smoothing` must lie in \[0.0, 0.5\)"):
    dpo(*_good(), label_smoothing=eps)


def test_unknown_variant_lists_valid_ones():
  with pytest.raises(ValueError, match=r"`variant`: unknown DPO variant 'not_a_loss'\. Valid DPO variant names: "
                                       r"aot, .*sigmoid_norm, sppo_hard\."):
    dpo(*_good(), variant="not_a_loss")


def test_misspelt_variant_lists_the_close_matches():
  with pytest.raises(ValueError, match=r"unknown DPO variant 'ipoo'; did you mean 'ipo'\?"):
    dpo(*_good(), variant="ipoo")
  with pytest.raises(ValueError, match=r"unknown DPO variant 'sigmod'; did you mean 'sigmoid'"):
    dpo(*_good(), variant="sigmod")


def test_sigmoid_norm_without_lengths_raises():
  with pytest.raises(ValueError, match="`chosen_lengths`.*`rejected_lengths`"):
    dpo(*_good(), variant="sigmoid_norm")
  with pytest.raises(ValueError, match="missing `rejected_lengths`"):
    dpo(*_good(), variant="sigmoid_norm", chosen_lengths=jnp.array([1, 2, 3]))


def test_ipo_with_one_length_raises():
  with pytest.raises(ValueError, match="missing `chosen_lengths`"):
    dpo(*_good(), variant="ipo", rejected_lengths=jnp.array([1, 2, 3]))


def test_bad_lengths_raise():
  with pytest.raises(ValueError, match=r"`chosen_lengths` \(2,\)"):
    dpo(*_good(), variant="sigmoid_norm", chosen_lengths=jnp.array([1, 2]),
        rejected_lengths=jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match="`rejected_lengths` must have a numeric dtype"):
    dpo(*_good(), variant="sigmoid_norm", chosen_lengths=jnp.array([1, 2, 3]),
        rejected_lengths=jnp.array([True, False, True]))
  with pytest.raises(ValueError, match="`chosen_lengths` must have rank 1"):
    dpo(*_good(), variant="sigmoid_norm", chosen_lengths=jnp.ones((3, 1)),
        rejected_lengths=jnp.array([1, 2, 3]))


@pytest.mark.parametrize("kwargs, name", [
    ({"discopop_tau": 0.0}, "discopop_tau"), ({"discopop_tau": 1.5}, "discopop_tau"),
    ({"exo_epsilon": 0.0}, "exo_epsilon"), ({"exo_epsilon": 1.0}, "exo_epsilon"),
    ({"bco_delta": "big"}, "bco_delta")])
def test_bad_extra_hyper_parameters_raise(kwargs, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    dpo(*_good(), **kwargs)


# ----------------------------------------------------------------------------------------
# Properties.


@functools.lru_cache(maxsize=None)
def _jitted_value_and_grad(variant):
  def total(pc, pr, rc, rr, lc, lr, beta, eps):
    losses, _, _ = dpo(pc, pr, rc, rr, beta=beta, variant=variant, label_smoothing=eps,
                       chosen_lengths=lc, rejected_lengths=lr)
    return losses.sum(), losses

  return jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2, 3), has_aux=True))


_logp = st.floats(-1e4, 1e4, allow_nan=False, width=32)
_batch = st.lists(_logp, min_size=4, max_size=4)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    pc=_batch, pr=_batch, rc=_batch, rr=_batch,
    lc=st.lists(st.integers(0, 4096), min_size=4, max_size=4),
    lr=st.lists(st.integers(0, 4096), min_size=4, max_size=4),
    beta=st.floats(0.01, 10.0), eps=st.floats(0.0, 0.49),
    variant=st.sampled_from(ALL_VARIANTS))
def test_every_variant_finite_for_finite_inputs(pc, pr, rc, rr, lc, lr, beta, eps, variant):
  args = [np.asarray(a, np.float32) for a in (pc, pr, rc, rr)]
  lengths = [np.asarray(a, np.int32) for a in (lc, lr)]
  (_, losses), grads = _jitted_value_and_grad(variant)(
      *args, *lengths, np.float32(beta), np.float32(eps))
  assert np.all(np.isfinite(losses)), (variant, losses)
  for g in grads:
    assert np.all(np.isfinite(g)), (variant, g)


@functools.lru_cache(maxsize=None)
def _jitted_sigmoid():
  return jax.jit(lambda d, beta: dpo(d, jnp.zeros_like(d), jnp.zeros_like(d),
                                     jnp.zeros_like(d), beta=beta)[0])


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(
    ds=st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=8, max_size=8),
    beta=st.floats(0.01, 10.0))
def test_sigmoid_loss_decreases_in_logratio_difference(ds, beta):
  d = np.sort(np.asarray(ds, np.float32))
  losses = np.asarray(_jitted_sigmoid()(d, np.float32(beta)))
  assert np.all(np.diff(losses) <= 0.0), (d, losses)
  assert np.all(losses >= 0.0)
  # Strictly decreasing where sigmoid has not saturated in float32.
  z = beta * d.astype(np.float64)
  live = (np.diff(z) > 1e-3) & (z[1:] < 15.0)
  assert np.all(np.diff(losses)[live] < 0.0)


# ----------------------------------------------------------------------------------------
# The variant functions by themselves, and `dpo` as their dispatcher.

# The function of each variant, spelt out here so that a renamed or re-wired function
# fails this test rather than following the registry along.
VARIANT_FUNCTIONS = {
    "sigmoid": dpo_family.dpo_sigmoid_loss,
    "cdpo": dpo_family.cdpo_loss,
    "robust": dpo_family.dpo_robust_loss,
    "ipo": dpo_family.ipo_loss,
    "hinge": dpo_family.hinge_loss,
    "exo_pair": dpo_family.exo_pair_loss,
    "nca_pair": dpo_family.nca_pair_loss,
    "bco_pair": dpo_family.bco_pair_loss,
    "sppo_hard": dpo_family.sppo_hard_loss,
    "aot": dpo_family.aot_loss,
    "aot_unpaired": dpo_family.aot_unpaired_loss,
    "apo_zero": dpo_family.apo_zero_loss,
    "apo_down": dpo_family.apo_down_loss,
    "discopop": dpo_family.discopop_loss,
    "sigmoid_norm": dpo_family.dpo_sigmoid_norm_loss,
}

# Non-default hyper-parameters for each variant function, and the same for the NumPy
# reference. Only what a function's signature names is passed to it.
DIRECT_KWARGS = {
    "sigmoid": ({"beta": 0.3, "label_smoothing": 0.1}, {"beta": 0.3, "eps": 0.1}),
    "cdpo": ({"beta": 0.3, "label_smoothing": 0.2}, {"beta": 0.3, "eps": 0.2}),
    "robust": ({"beta": 0.3, "label_smoothing": 0.2}, {"beta": 0.3, "eps": 0.2}),
    "ipo": ({"beta": 0.3}, {"beta": 0.3}),
    "hinge": ({"beta": 0.3}, {"beta": 0.3}),
    "exo_pair": ({"beta": 0.3, "epsilon": 0.05}, {"beta": 0.3, "exo_eps": 0.05}),
    "nca_pair": ({"beta": 0.3}, {"beta": 0.3}),
    "bco_pair": ({"beta": 0.3, "delta": 0.4}, {"beta": 0.3, "delta": 0.4}),
    "sppo_hard": ({"beta": 0.3}, {"beta": 0.3}),
    "aot": ({"beta": 0.3, "label_smoothing": 0.1}, {"beta": 0.3, "eps": 0.1}),
    "aot_unpaired": ({"beta": 0.3, "label_smoothing": 0.1}, {"beta": 0.3, "eps": 0.1}),
    "apo_zero": ({"beta": 0.3}, {"beta": 0.3}),
    "apo_down": ({"beta": 0.3}, {"beta": 0.3}),
    "discopop": ({"beta": 0.3, "tau": 0.3}, {"beta": 0.3, "tau": 0.3}),
    "sigmoid_norm": ({"beta": 0.3}, {"beta": 0.3}),
}

# What the NumPy reference assumes when a function is called with no keyword at all.
REFERENCE_DEFAULTS = {"beta": 0.1, "eps": 0.0, "tau": 0.05, "exo_eps": 1e-3, "delta": 0.0}


def _logratios(fixture):
  """The fixture's log-ratios in float32 (as `dpo` forms them) and its lengths."""
  pc, pr, rc, rr, lc, lr, _ = fixture
  return pc - rc, pr - rr, lc, lr


def _call_direct(variant, fixture, kwargs):
  fn = VARIANT_FUNCTIONS[variant]
  pc, pr, rc, rr, lc, lr, _ = fixture
  c, r, _, _ = _logratios(fixture)
  if variant == "aot":
    return fn(pc, pr, rc, rr, **kwargs)
  if variant == "sigmoid_norm":
    return fn(c, r, lc, lr, **kwargs)
  return fn(c, r, **kwargs)


def test_variant_registry_holds_the_variant_functions_in_order():
  assert set(DPO_VARIANT_LOSSES.names()) == set(ALL_VARIANTS)
  assert DPO_VARIANTS == ALL_VARIANTS  # the README's order, not the registry's sorted one
  for variant, fn in VARIANT_FUNCTIONS.items():
    assert DPO_VARIANT_LOSSES.get(variant) is fn


def test_misspelt_variant_in_variant_registry_gives_close_matches():
  with pytest.raises(ValueError, match=r"unknown DPO variant 'ipoo'; did you mean 'ipo'\?"):
    DPO_VARIANT_LOSSES.get("ipoo")


@pytest.mark.parametrize("fixture_name", ["random", "extreme"])
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_variant_function_matches_numpy_formula(variant, fixture_name):
  fixture = FIXTURES[fixture_name]()
  kwargs, ref_kwargs = DIRECT_KWARGS[variant]
  losses = _call_direct(variant, fixture, kwargs)
  assert losses.shape == (len(fixture[0]),) and losses.dtype == jnp.float32
  pc, pr, rc, rr, lc, lr, _ = fixture
  # IPO normalises by length only when given lengths; here it is called without.
  lengths = {"lc": lc, "lr": lr} if variant == "sigmoid_norm" else {}
  expected = reference_losses(variant, pc, pr, rc, rr, **ref_kwargs, **lengths)
  np.testing.assert_allclose(np.asarray(losses), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_variant_function_defaults_match_numpy_formula(variant):
  # Called with no keyword: beta 0.1, no smoothing, tau 0.05, EXO epsilon 1e-3, delta 0.
  fixture = _random_fixture()
  losses = _call_direct(variant, fixture, {})
  pc, pr, rc, rr, lc, lr, _ = fixture
  lengths = {"lc": lc, "lr": lr} if variant == "sigmoid_norm" else {}
  expected = reference_losses(variant, pc, pr, rc, rr, **REFERENCE_DEFAULTS, **lengths)
  np.testing.assert_allclose(np.asarray(losses), expected, rtol=2e-5, atol=2e-5)


def test_ipo_loss_with_lengths_matches_numpy_formula():
  fixture = _random_fixture()
  c, r, lc, lr = _logratios(fixture)
  losses = dpo_family.ipo_loss(c, r, beta=0.3, chosen_lengths=lc, rejected_lengths=lr)
  d = (c.astype(np.float64) / lc) - (r.astype(np.float64) / lr)
  np.testing.assert_allclose(losses, (d - 1 / (2 * 0.3)) ** 2, rtol=2e-5)


def test_variant_functions_take_log_ratios_not_log_probs():
  # Shifting policy and reference by the same amount leaves every log-ratio, hence
  # every loss, unchanged; the direct functions see only the ratios.
  c = np.array([0.5, -2.0, 3.0], np.float32)
  r = np.array([-1.0, 0.25, 4.0], np.float32)
  np.testing.assert_allclose(
      dpo_family.dpo_sigmoid_loss(c, r, beta=1.0), -np_log_sigmoid(c.astype(np.float64) - r),
      rtol=1e-6)
  np.testing.assert_allclose(
      dpo_family.hinge_loss(c, r, beta=1.0), np.maximum(0.0, 1.0 - (c - r)), rtol=1e-6)


_DPO_KWARG_SETS = [
    {"beta": 0.3, "label_smoothing": 0.1},
    {"beta": 0.1, "label_smoothing": 0.0},  # EXO falls back to its default epsilon
    {"beta": 0.5, "label_smoothing": 0.2, "discopop_tau": 0.4, "exo_epsilon": 0.3,
     "bco_delta": -0.7},
]


def _direct_kwargs_for(variant, dpo_kwargs):
  """The variant function's keywords for a `dpo` call, by hand (as the docstring says)."""
  fn = VARIANT_FUNCTIONS[variant]
  names = inspect.signature(fn).parameters
  epsilon = dpo_kwargs.get("exo_epsilon") or dpo_kwargs["label_smoothing"] or 1e-3
  candidates = {
      "beta": dpo_kwargs["beta"],
      "label_smoothing": dpo_kwargs["label_smoothing"],
      "tau": dpo_kwargs.get("discopop_tau", 0.05),
      "epsilon": epsilon,
      "delta": dpo_kwargs.get("bco_delta", 0.0),
  }
  return {name: value for name, value in candidates.items() if name in names}


@pytest.mark.parametrize("kwarg_set", range(len(_DPO_KWARG_SETS)))
@pytest.mark.parametrize("fixture_name", sorted(FIXTURES))
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_dpo_equals_its_variant_function(variant, fixture_name, kwarg_set):
  fixture = FIXTURES[fixture_name]()
  pc, pr, rc, rr, lc, lr, _ = fixture
  dpo_kwargs = _DPO_KWARG_SETS[kwarg_set]
  # IPO with lengths and without: both go through `ipo_loss`.
  with_lengths = variant != "ipo" or kwarg_set != 1
  lengths = {"chosen_lengths": lc, "rejected_lengths": lr} if with_lengths else {}
  losses, chosen_rewards, rejected_rewards = dpo(
      pc, pr, rc, rr, variant=variant, **dpo_kwargs, **lengths)
  kwargs = _direct_kwargs_for(variant, dpo_kwargs)
  if variant == "ipo":
    kwargs.update(lengths)
  expected = _call_direct(variant, fixture, kwargs)
  np.testing.assert_array_equal(np.asarray(losses), np.asarray(expected))
  c, r, _, _ = _logratios(fixture)
  np.testing.assert_array_equal(chosen_rewards, np.float32(dpo_kwargs["beta"]) * c)
  np.testing.assert_array_equal(rejected_rewards, np.float32(dpo_kwargs["beta"]) * r)


def test_dpo_defaults_are_the_variant_functions_defaults():
  dpo_defaults = {
      name: p.default for name, p in inspect.signature(dpo).parameters.items()
      if p.default is not inspect.Parameter.empty}
  shared = ("beta", "label_smoothing")
  seen = {name: 0 for name in shared}
  for variant, fn in VARIANT_FUNCTIONS.items():
    for name, p in inspect.signature(fn).parameters.items():
      if name in shared:
        assert p.default == dpo_defaults[name], (variant, name, p.default, dpo_defaults[name])
        seen[name] += 1
  assert seen == {"beta": 15, "label_smoothing": 5}
  params = lambda fn: inspect.signature(fn).parameters  # noqa: E731
  assert dpo_defaults["discopop_tau"] == params(dpo_family.discopop_loss)["tau"].default
  assert dpo_defaults["bco_delta"] == params(dpo_family.bco_pair_loss)["delta"].default
  # The EXO epsilon defaults to "label smoothing, else exo_pair_loss's own default".
  assert dpo_defaults["exo_epsilon"] is None
  assert dpo_defaults["variant"] == "sigmoid"
  # And the values themselves, so that a changed default is a visible decision.
  assert (dpo_defaults["beta"], dpo_defaults["label_smoothing"], dpo_defaults["discopop_tau"],
          dpo_defaults["bco_delta"]) == (0.1, 0.0, 0.05, 0.0)
  assert params(dpo_family.exo_pair_loss)["epsilon"].default == 1e-3


def test_dpo_exo_fallback_is_exo_pair_loss_default():
  fixture = _random_fixture()
  pc, pr, rc, rr, *_ = fixture
  c, r, _, _ = _logratios(fixture)
  via_dpo, _, _ = dpo(pc, pr, rc, rr, variant="exo_pair")
  np.testing.assert_array_equal(via_dpo, dpo_family.exo_pair_loss(c, r))


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_variant_function_jit_equals_eager(variant):
  fixture = _random_fixture()
  kwargs, _ = DIRECT_KWARGS[variant]
  eager = _call_direct(variant, fixture, kwargs)
  jitted = jax.jit(lambda f: _call_direct(variant, f, kwargs))(fixture)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)


def test_variant_function_bad_inputs_raise():
  c = jnp.array([0.5, -1.0, 2.0])
  r = jnp.array([0.1, 0.2, 0.3])
  lengths = jnp.array([3, 4, 5])
  with pytest.raises(ValueError, match="`chosen_logratios` must have a floating dtype"):
    dpo_family.ipo_loss(jnp.array([1, 2, 3]), r)
  with pytest.raises(ValueError, match=r"`rejected_logratios` \(2,\)"):
    dpo_family.hinge_loss(c, r[:2])
  with pytest.raises(ValueError, match="`rejected_logratios` must have rank 1"):
    dpo_family.nca_pair_loss(c, r[None])
  with pytest.raises(ValueError, match=r"`beta` must lie in \(0"):
    dpo_family.sppo_hard_loss(c, r, beta=0.0)
  with pytest.raises(ValueError, match=r"`label_smoothing` must lie in \[0.0, 0.5\)"):
    dpo_family.dpo_robust_loss(c, r, label_smoothing=0.5)
  with pytest.raises(ValueError, match="`tau` must lie in"):
    dpo_family.discopop_loss(c, r, tau=1.5)
  with pytest.raises(ValueError, match="`epsilon` must lie in"):
    dpo_family.exo_pair_loss(c, r, epsilon=0.0)
  with pytest.raises(ValueError, match="`delta` must be a real number"):
    dpo_family.bco_pair_loss(c, r, delta="big")
  with pytest.raises(ValueError, match="missing `rejected_lengths`"):
    dpo_family.ipo_loss(c, r, chosen_lengths=lengths)
  with pytest.raises(ValueError, match="requires `chosen_lengths` and `rejected_lengths`; missing `chosen_lengths`"):
    dpo_family.dpo_sigmoid_norm_loss(c, r, None, lengths)
  with pytest.raises(ValueError, match=r"`rejected_lengths` \(2,\)"):
    dpo_family.dpo_sigmoid_norm_loss(c, r, lengths, lengths[:2])
  with pytest.raises(ValueError, match="`ref_rejected_logps` must have rank 1"):
    dpo_family.aot_loss(c, r, c, jnp.ones((3, 1)))
