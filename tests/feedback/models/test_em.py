"""Tests for rlhf_jax.feedback.models.em: the shared E-step, start and counts against NumPy
written here, and the driver's schedule (iterations, stopping rule, trace)."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.feedback.models import em

ITEMS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
ANNOTATORS = np.array([0, 1, 2, 0, 2, 0, 1, 2, 1])
LABELS = np.array([0, 0, 1, 1, 1, 2, 2, 0, 2])


def test_e_step_core_against_numpy():
  rng = np.random.default_rng(0)
  log_confusion = np.log(rng.dirichlet(np.ones(3), size=(3, 3)))  # [A, K, K]
  log_prior = np.log(rng.dirichlet(np.ones(3), size=4))  # item 3 has no annotation
  posteriors, log_marginal = em.e_step_core(jnp.asarray(ITEMS), jnp.asarray(ANNOTATORS), jnp.asarray(LABELS),
                                            jnp.asarray(log_confusion, jnp.float32), jnp.asarray(log_prior, jnp.float32))
  joint = log_prior.copy()
  for i, a, l in zip(ITEMS, ANNOTATORS, LABELS):
    joint[i] += log_confusion[a, :, l]
  marginal = np.log(np.exp(joint).sum(1))
  np.testing.assert_allclose(log_marginal, marginal, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(posteriors, np.exp(joint - marginal[:, None]), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(posteriors[3], np.exp(log_prior[3]), rtol=1e-5)  # no answers: the prior


def test_vote_share_start_counts_and_means():
  start = np.asarray(em.vote_share_init(jnp.asarray(ITEMS), jnp.asarray(LABELS), 4, 3))
  np.testing.assert_allclose(start, [[2 / 3, 1 / 3, 0], [0, 1, 0], [1 / 4, 0, 3 / 4], [1 / 3] * 3], rtol=1e-6)
  np.testing.assert_array_equal(em.item_counts(jnp.asarray(ITEMS), 4), [3, 2, 4, 0])
  # Expected class counts leave the unannotated item out.
  np.testing.assert_allclose(em.class_counts(jnp.asarray(ITEMS), jnp.asarray(start)), start[:3].sum(0), rtol=1e-6)
  means = em.per_annotator_mean(jnp.arange(9.0), jnp.asarray(ANNOTATORS), 4, fallback=-1.0)
  np.testing.assert_allclose(means, [(0 + 3 + 5) / 3, (1 + 6 + 8) / 3, (2 + 4 + 7) / 3, -1.0])


def _fixed_m_step(log_confusion):
  """Fixed confusions; "count" is the number of M-steps that led to these parameters."""
  def m_step(posteriors, previous_params):
    del posteriors
    count = jnp.int32(0) if previous_params is None else previous_params["count"]  # None: shapes only
    return {"log_confusion": log_confusion, "log_class_prior": jnp.log(jnp.full((3,), 1 / 3)),
            "log_prior_density": jnp.float32(0.0), "count": count + 1}
  return m_step


def test_run_em_schedule_and_stopping():
  log_confusion = jnp.log(jnp.asarray(np.full((3, 3, 3), 0.1) + 0.7 * np.eye(3)))
  args = (jnp.asarray(ITEMS), jnp.asarray(ANNOTATORS), jnp.asarray(LABELS))
  start = em.vote_share_init(args[0], args[2], 3, 3)
  # Fixed parameters: the first E-step reaches the fixed point, the second moves nothing.
  e_step = em.confusion_e_step(*args, 3)
  posteriors, _, trace = em.run_em(start, None, _fixed_m_step(log_confusion), e_step, num_iters=10, tol=1e-6,
                                   refit_last=True)
  assert int(trace["num_iters"]) == 2
  assert np.isnan(np.asarray(trace["objective"])[2:]).all() and np.isfinite(np.asarray(trace["objective"])[:2]).all()
  expected, _ = em.e_step_core(*args, log_confusion, jnp.log(jnp.full((3, 3), 1 / 3)))
  np.testing.assert_allclose(posteriors, expected, rtol=1e-6)
  # Without a tolerance every iteration runs.
  _, _, trace = em.run_em(start, None, _fixed_m_step(log_confusion), e_step, num_iters=5, tol=None,
                          refit_last=True)
  assert int(trace["num_iters"]) == 5 and np.isfinite(np.asarray(trace["objective"])).all()
  # On the objective: iteration 2 gains exactly 0 (the same parameters), so it stops there.
  _, _, trace = em.run_em(start, None, _fixed_m_step(log_confusion), e_step, num_iters=10, tol=1e-6,
                          refit_last=True, stop_on="objective")
  assert int(trace["num_iters"]) == 2
  without_objective = lambda params: (e_step(params)[0], {"other": jnp.float32(0.0)})
  with pytest.raises(ValueError, match="reports no objective"):
    em.run_em(start, None, _fixed_m_step(log_confusion), without_objective, num_iters=3, tol=1e-6,
              refit_last=True, stop_on="objective")
  with pytest.raises(ValueError, match="stop_on must be one of"):
    em.run_em(start, None, _fixed_m_step(log_confusion), e_step, num_iters=3, tol=1e-6, refit_last=True,
              stop_on="labels")


def test_run_em_returns_the_parameters_of_the_last_e_step_or_a_refit():
  log_confusion = jnp.log(jnp.asarray(np.full((3, 3, 3), 0.1) + 0.7 * np.eye(3)))
  args = (jnp.asarray(ITEMS), jnp.asarray(ANNOTATORS), jnp.asarray(LABELS))
  start = em.vote_share_init(args[0], args[2], 3, 3)
  e_step = em.confusion_e_step(*args, 3)
  init = {"log_confusion": log_confusion, "log_class_prior": jnp.zeros(3), "log_prior_density": jnp.float32(0.0),
          "count": jnp.int32(0)}
  for tol, iterations in ((None, 4), (1e-6, 2)):  # fixed confusions: the second E-step moves nothing
    _, params, trace = em.run_em(start, init, _fixed_m_step(log_confusion), e_step, num_iters=4, tol=tol,
                                 refit_last=False)
    assert int(trace["num_iters"]) == iterations and int(params["count"]) == iterations
    _, params, trace = em.run_em(start, init, _fixed_m_step(log_confusion), e_step, num_iters=4, tol=tol,
                                 refit_last=True)
    assert int(trace["num_iters"]) == iterations and int(params["count"]) == iterations + 1
