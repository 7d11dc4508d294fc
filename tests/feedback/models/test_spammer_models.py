"""Tests for rlhf_jax.feedback.models.spammer_models (MACE, GLAD).

References written here: the observed-data likelihoods and item posteriors of both models
as explicit NumPy float64 loops, GLAD's M-step objective with scipy's normal log-density
and its central finite differences, a NumPy simulator with known truth, spammers and
adversaries, a NumPy majority vote, and the published crowd-kit 1.4.2 accuracies on the
real benchmark data of ../shared/data/crowd.
"""

import csv
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from rlhf_jax.feedback.models import spammer_models

CROWD_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "crowd"


# ----------------------------------------------------------------------------------------
# NumPy references.
# ----------------------------------------------------------------------------------------


def np_log_joint(items, annotators, labels, emission, prior, num_items):
  """[I, K] log P(truth = k, labels of item i), looping item by item and class by class.

  `emission(j, l, k, i)` is P(label l from annotator j | truth k) on item i.
  """
  num_classes = len(prior)
  out = np.zeros((num_items, num_classes))
  for i in range(num_items):
    for k in range(num_classes):
      total = math.log(prior[k])
      for n in np.flatnonzero(items == i):
        total += math.log(emission(annotators[n], labels[n], k, i))
      out[i, k] = total
  return out


def np_mace_emission(competence, strategy):
  def emission(j, l, k, i):
    del i
    return competence[j] * (l == k) + (1.0 - competence[j]) * strategy[j, l]

  return emission


def np_glad_emission(ability, log_beta, num_classes):
  def emission(j, l, k, i):
    correct = 1.0 / (1.0 + math.exp(-ability[j] * math.exp(log_beta[i])))
    return correct if l == k else (1.0 - correct) / (num_classes - 1)

  return emission


def np_log_likelihood_and_posteriors(log_joint):
  evidence = np.logaddexp.reduce(log_joint, axis=1)
  return evidence.sum(), np.exp(log_joint - evidence[:, None])


def np_glad_q(
    items, annotators, labels, posteriors, ability, log_beta, num_classes, prior=(1, 1, 1, 1)
):
  """GLAD's M-step objective (expected complete log-likelihood plus Gaussian log priors)."""
  mean_a, std_a, mean_b, std_b = prior
  q = posteriors[items, labels]
  logits = ability[annotators] * np.exp(log_beta[items])
  log_correct = -np.logaddexp(0.0, -logits)
  log_wrong = -np.logaddexp(0.0, logits) - math.log(num_classes - 1)
  return (
      np.sum(q * log_correct + (1.0 - q) * log_wrong)
      + scipy.stats.norm.logpdf(ability, mean_a, std_a).sum()
      + scipy.stats.norm.logpdf(log_beta, mean_b, std_b).sum()
  )


def np_majority_vote(items, labels, num_items, num_classes, rng):
  counts = np.zeros((num_items, num_classes))
  np.add.at(counts, (items, labels), 1.0)
  # Random tie-breaking: majority vote's expected accuracy, not a lucky fixed rule.
  noisy = counts + rng.uniform(0.0, 0.5, counts.shape)
  return noisy.argmax(axis=1)


def simulate_crowd(seed=0, num_items=300, num_classes=3, per_item=5):
  """Known-truth crowd: 12 honest annotators, 4 uniform spammers, 4 constant spammers."""
  rng = np.random.default_rng(seed)
  truth = rng.choice(num_classes, size=num_items, p=[0.45, 0.35, 0.2][:num_classes])
  accuracy = np.concatenate([np.linspace(0.6, 0.92, 12), np.zeros(8)])
  kind = np.array(["good"] * 12 + ["uniform"] * 4 + ["constant"] * 4)
  num_annotators = len(kind)
  constant_label = rng.integers(num_classes, size=num_annotators)
  items, annotators, labels = [], [], []
  for i in range(num_items):
    for j in rng.choice(num_annotators, size=per_item, replace=False):
      if kind[j] == "good":
        if rng.random() < accuracy[j]:
          label = truth[i]
        else:
          label = rng.choice([c for c in range(num_classes) if c != truth[i]])
      elif kind[j] == "uniform":
        label = rng.integers(num_classes)
      else:
        label = constant_label[j]
      items.append(i)
      annotators.append(j)
      labels.append(label)
  return (
      np.array(items, np.int32),
      np.array(annotators, np.int32),
      np.array(labels, np.int32),
      truth,
      kind,
  )


def random_annotations(rng, num_items, num_annotators, num_classes, num_annotations):
  items = rng.integers(num_items, size=num_annotations).astype(np.int32)
  items[: num_items - 2] = np.arange(num_items - 2)  # every item but the last two is used...
  items[items >= num_items - 2] = 0  # ...and the last two have no annotations at all
  annotators = rng.integers(num_annotators, size=num_annotations).astype(np.int32)
  labels = rng.integers(num_classes, size=num_annotations).astype(np.int32)
  return items, annotators, labels


@pytest.fixture(scope="module")
def crowd():
  return simulate_crowd()


@pytest.fixture(scope="module")
def mace_fits(crowd):
  items, annotators, labels, _, _ = crowd
  return {
      (method, learn): spammer_models.mace(
          items, annotators, labels, num_classes=3, method=method, learn_class_prior=learn,
          num_restarts=4,
      )
      for method in ("vb", "em")
      for learn in (True, False)
  }


@pytest.fixture(scope="module")
def glad_fit(crowd):
  items, annotators, labels, _, _ = crowd
  return spammer_models.glad(items, annotators, labels, num_classes=3, num_iters=60)


# ----------------------------------------------------------------------------------------
# (1) Likelihoods against the NumPy formulas.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_prior", [False, True])
def test_mace_log_likelihood_matches_numpy(with_prior):
  rng = np.random.default_rng(1)
  num_items, num_annotators, num_classes = 12, 5, 3
  items, annotators, labels = random_annotations(rng, num_items, num_annotators, num_classes, 40)
  competence = rng.uniform(0.0, 1.0, num_annotators)
  competence[0] = 0.0  # a pure spammer
  strategy = rng.dirichlet(np.ones(num_classes), num_annotators)
  prior = rng.dirichlet(np.ones(num_classes)) if with_prior else np.full(num_classes, 1 / 3)
  expected, _ = np_log_likelihood_and_posteriors(
      np_log_joint(
          items, annotators, labels, np_mace_emission(competence, strategy), prior, num_items
      )
  )
  got = spammer_models.mace_log_likelihood(
      items, annotators, labels, competence.astype(np.float32), strategy.astype(np.float32),
      num_items=num_items, class_prior=prior.astype(np.float32) if with_prior else None,
  )
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_glad_log_likelihood_matches_numpy(num_classes):
  rng = np.random.default_rng(2)
  num_items, num_annotators = 10, 6
  items, annotators, labels = random_annotations(rng, num_items, num_annotators, num_classes, 35)
  ability = rng.normal(0.5, 1.5, num_annotators)
  log_beta = rng.normal(0.0, 0.7, num_items)
  prior = rng.dirichlet(np.ones(num_classes))
  expected, _ = np_log_likelihood_and_posteriors(
      np_log_joint(
          items, annotators, labels, np_glad_emission(ability, log_beta, num_classes), prior,
          num_items,
      )
  )
  got = spammer_models.glad_log_likelihood(
      items, annotators, labels, ability.astype(np.float32), log_beta.astype(np.float32),
      num_classes=num_classes, class_prior=prior.astype(np.float32),
  )
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.parametrize("method, learn", [("em", True), ("em", False), ("vb", True)])
def test_mace_reports_likelihood_and_posteriors_of_its_parameters(crowd, mace_fits, method, learn):
  items, annotators, labels, _, _ = crowd
  result = mace_fits[(method, learn)]
  competence = np.asarray(result.annotator_params["competence"], np.float64)
  strategy = np.asarray(result.annotator_params["spam_strategy"], np.float64)
  prior = np.asarray(result.extras["class_prior"], np.float64)
  if not learn:
    np.testing.assert_allclose(prior, 1 / 3, rtol=1e-6)
  log_likelihood, posteriors = np_log_likelihood_and_posteriors(
      np_log_joint(items, annotators, labels, np_mace_emission(competence, strategy), prior, 300)
  )
  np.testing.assert_allclose(float(result.extras["log_likelihood"]), log_likelihood, rtol=1e-5)
  # MACE's reliability: theta_j + (1 - theta_j) xi_j[truth], averaged over j's items.
  correct = competence[annotators] + (1 - competence[annotators]) * np.sum(
      np.asarray(result.posteriors)[items] * strategy[annotators], axis=1
  )
  expected = np.bincount(annotators, correct) / np.bincount(annotators)
  reliability = np.asarray(result.annotator_params["reliability"])
  np.testing.assert_allclose(reliability, expected, rtol=1e-4)
  if method == "vb":
    return  # VB's posteriors come from exp E[log params], not from the posterior means.
  np.testing.assert_allclose(np.asarray(result.posteriors), posteriors, atol=2e-4)
  # The MAP objective of smoothed EM is the likelihood plus s * sum of log parameters.
  smoothing = 0.01 / 3
  log_posterior = log_likelihood + smoothing * (
      np.log(competence).sum() + np.log1p(-competence).sum() + np.log(strategy).sum()
  )
  np.testing.assert_allclose(float(result.extras["objective_trace"][-1]), log_posterior, rtol=1e-4)


def np_dirichlet_kl(a, b):
  """KL(Dir(a) || Dir(b)) along the last axis, from the log Beta functions."""
  from scipy.special import digamma, gammaln

  log_beta_fn = lambda x: gammaln(x).sum(-1) - gammaln(x.sum(-1))
  return log_beta_fn(b) - log_beta_fn(a) + np.sum(
      (a - b) * (digamma(a) - digamma(a.sum(-1, keepdims=True))), axis=-1
  )


def test_mace_vb_reports_its_elbo_and_posteriors(crowd, mace_fits):
  """VB's trace ends at the ELBO of the returned q: E-step log-evidence under
  exp E_q[log params], minus KL(q || prior) for every Beta and Dirichlet factor."""
  from scipy.special import digamma

  items, annotators, labels, _, _ = crowd
  result = mace_fits[("vb", True)]
  beta_q = np.asarray(result.annotator_params["competence_posterior"], np.float64)
  strategy_q = np.asarray(result.annotator_params["strategy_posterior"], np.float64)
  # Expected counts: "knows" + "spams" = the annotator's annotations; strategy sums to spams.
  np.testing.assert_allclose(beta_q.sum(1) - 1.0, np.bincount(annotators, minlength=20), rtol=1e-4)
  np.testing.assert_allclose(strategy_q.sum(1) - 30.0, beta_q[:, 1] - 0.5, rtol=1e-3, atol=1e-3)
  log_know = digamma(beta_q[:, 0]) - digamma(beta_q.sum(1))
  log_spam = digamma(beta_q[:, 1]) - digamma(beta_q.sum(1))
  log_strategy = digamma(strategy_q) - digamma(strategy_q.sum(1, keepdims=True))
  np.testing.assert_allclose(
      np.asarray(result.annotator_params["competence"]), beta_q[:, 0] / beta_q.sum(1), rtol=1e-5
  )

  def emission(j, l, k, i):
    del i
    return math.exp(log_know[j]) * (l == k) + math.exp(log_spam[j] + log_strategy[j, l])

  prior = np.asarray(result.extras["class_prior"], np.float64)
  log_evidence, posteriors = np_log_likelihood_and_posteriors(
      np_log_joint(items, annotators, labels, emission, prior, 300)
  )
  elbo = (
      log_evidence
      - np_dirichlet_kl(beta_q, np.full_like(beta_q, 0.5)).sum()
      - np_dirichlet_kl(strategy_q, np.full_like(strategy_q, 10.0)).sum()
  )
  np.testing.assert_allclose(float(result.extras["objective_trace"][-1]), elbo, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(result.posteriors), posteriors, atol=2e-4)


@pytest.mark.parametrize("posterior, prior", [((3.0, 7.5), (0.5, 0.5)), ((40.2, 1.3), (2.0, 0.7))])
def test_beta_kl_of_the_elbo_matches_numerical_integration(posterior, prior):
  """VB's objective subtracts KL(q || prior); check the Beta case by quadrature."""
  q, p = scipy.stats.beta(*posterior), scipy.stats.beta(*prior)
  integrand = lambda x: q.pdf(x) * (q.logpdf(x) - p.logpdf(x))
  expected, _ = scipy.integrate.quad(integrand, 0, 1, limit=200)
  got = spammer_models._dirichlet_kl(jnp.array(posterior), jnp.array(prior))
  np.testing.assert_allclose(float(got), expected, rtol=1e-4, atol=1e-6)


def test_glad_reports_likelihood_and_posteriors_of_its_parameters(crowd, glad_fit):
  items, annotators, labels, _, _ = crowd
  ability = np.asarray(glad_fit.annotator_params["ability"], np.float64)
  log_beta = np.asarray(glad_fit.extras["log_beta"], np.float64)
  log_likelihood, posteriors = np_log_likelihood_and_posteriors(
      np_log_joint(
          items, annotators, labels, np_glad_emission(ability, log_beta, 3), np.full(3, 1 / 3), 300
      )
  )
  np.testing.assert_allclose(float(glad_fit.extras["log_likelihood"]), log_likelihood, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(glad_fit.posteriors), posteriors, atol=2e-4)
  log_posterior = (
      log_likelihood
      + scipy.stats.norm.logpdf(ability, 1.0, 1.0).sum()
      + scipy.stats.norm.logpdf(log_beta, 1.0, 1.0).sum()
  )
  extras = glad_fit.extras
  np.testing.assert_allclose(float(extras["objective_trace"][-1]), log_posterior, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(extras["item_difficulty"]), np.exp(-log_beta), rtol=1e-5)
  # Reliability: the model's P(correct) averaged over the annotator's own annotations.
  correct = 1.0 / (1.0 + np.exp(-ability[annotators] * np.exp(log_beta[items])))
  expected = np.bincount(annotators, correct) / np.bincount(annotators)
  reliability = np.asarray(glad_fit.annotator_params["reliability"])
  np.testing.assert_allclose(reliability, expected, rtol=1e-4)


# ----------------------------------------------------------------------------------------
# (2) GLAD's M-step objective and its gradient.
# ----------------------------------------------------------------------------------------


def test_glad_m_step_objective_and_gradient_match_finite_differences():
  rng = np.random.default_rng(3)
  num_items, num_annotators, num_classes = 8, 5, 3
  items, annotators, labels = random_annotations(rng, num_items, num_annotators, num_classes, 30)
  posteriors = rng.dirichlet(np.ones(num_classes), num_items)
  ability = rng.normal(0.5, 1.0, num_annotators)
  log_beta = rng.normal(0.3, 0.5, num_items)
  prior = (0.7, 1.3, 0.2, 0.8)

  def reference(a, b):
    return np_glad_q(items, annotators, labels, posteriors, a, b, num_classes, prior)

  def objective(a, b):
    return spammer_models.glad_m_step_objective(
        items, annotators, labels, jnp.asarray(posteriors, jnp.float32), a, b,
        num_classes=num_classes, ability_prior_mean=prior[0], ability_prior_std=prior[1],
        log_beta_prior_mean=prior[2], log_beta_prior_std=prior[3],
    )

  a32, b32 = ability.astype(np.float32), log_beta.astype(np.float32)
  np.testing.assert_allclose(float(objective(a32, b32)), reference(ability, log_beta), rtol=1e-5)
  grad_a, grad_b = jax.grad(objective, argnums=(0, 1))(a32, b32)
  step = 1e-6
  fd_a = np.array([
      (reference(ability + step * e, log_beta) - reference(ability - step * e, log_beta))
      / (2 * step)
      for e in np.eye(num_annotators)
  ])
  fd_b = np.array([
      (reference(ability, log_beta + step * e) - reference(ability, log_beta - step * e))
      / (2 * step)
      for e in np.eye(num_items)
  ])
  np.testing.assert_allclose(np.asarray(grad_a), fd_a, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(grad_b), fd_b, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------
# (3) EM never decreases its objective.
# ----------------------------------------------------------------------------------------


def assert_non_decreasing(trace):
  trace = np.asarray(trace, np.float64)
  assert np.all(np.isfinite(trace))
  # float32 rounding of a sum of ~1500 terms: allow a few ulps of the objective.
  slack = 8 * np.finfo(np.float32).eps * np.abs(trace[1:])
  drops = trace[:-1] - trace[1:]
  assert np.all(drops <= slack), f"objective decreased by up to {drops.max()} at {drops.argmax()}"
  assert trace[-1] > trace[0]


@pytest.mark.parametrize("method", ["vb", "em"])
@pytest.mark.parametrize("learn", [True, False])
def test_mace_objective_is_non_decreasing(mace_fits, method, learn):
  assert_non_decreasing(mace_fits[(method, learn)].extras["objective_trace"])


def test_glad_objective_is_non_decreasing(glad_fit):
  assert_non_decreasing(glad_fit.extras["objective_trace"])


# ----------------------------------------------------------------------------------------
# (4) Recovery of truth and of the spammers on simulated data.
# ----------------------------------------------------------------------------------------


def empirical_accuracy(crowd):
  items, annotators, labels, truth, _ = crowd
  return np.bincount(annotators, labels == truth[items]) / np.bincount(annotators)


def test_mace_finds_spammers_and_beats_majority_vote(crowd, mace_fits):
  items, annotators, labels, truth, kind = crowd
  majority = np_majority_vote(items, labels, 300, 3, np.random.default_rng(0))
  majority_accuracy = np.mean(majority == truth)
  for (method, learn), result in mace_fits.items():
    competence = np.asarray(result.annotator_params["competence"])
    reliability = np.asarray(result.annotator_params["reliability"])
    good, spam = kind == "good", kind != "good"
    # One uniform spammer was right 43% of the time by chance (a third expected).
    assert competence[spam].max() < 0.3, (method, learn, competence[spam])
    assert competence[good].min() > competence[spam].max() + 0.15, (method, learn)
    assert reliability[good].min() > reliability[spam].max(), (method, learn)
    assert scipy.stats.spearmanr(reliability, empirical_accuracy(crowd)).statistic > 0.85
    # Honest annotators' competence tracks their accuracy: theta = (K acc - 1) / (K - 1).
    true_competence = (3 * np.linspace(0.6, 0.92, 12) - 1) / 2
    np.testing.assert_allclose(competence[good], true_competence, atol=0.2)
    # Constant spammers put their strategy mass on their one label.
    constant = kind == "constant"
    strategy = np.asarray(result.annotator_params["spam_strategy"])
    assert np.all(strategy[constant].max(axis=1) > 0.7)
    accuracy = np.mean(np.asarray(result.labels) == truth)
    assert accuracy > majority_accuracy + 0.04, (method, learn, accuracy, majority_accuracy)


def test_glad_finds_spammers_and_beats_majority_vote(crowd, glad_fit):
  items, annotators, labels, truth, kind = crowd
  majority = np_majority_vote(items, labels, 300, 3, np.random.default_rng(0))
  ability = np.asarray(glad_fit.annotator_params["ability"])
  reliability = np.asarray(glad_fit.annotator_params["reliability"])
  good, spam = kind == "good", kind != "good"
  # Spammers are right about a third of the time: sigmoid(alpha beta) = 1/3 means alpha < 0
  # (one uniform spammer was right 43% of the time by chance).
  assert np.sum(ability[spam] < 0.0) >= 7 and ability[spam].max() < 0.2, ability[spam]
  assert ability[good].min() > ability[spam].max()
  assert reliability[good].min() > reliability[spam].max()
  assert scipy.stats.spearmanr(reliability, empirical_accuracy(crowd)).statistic > 0.85
  assert np.mean(np.asarray(glad_fit.labels) == truth) > np.mean(majority == truth) + 0.04


def test_mace_restarts_are_reproducible_and_keyed(crowd):
  items, annotators, labels, _, _ = crowd
  run = lambda key: spammer_models.mace(
      items, annotators, labels, num_classes=3, num_restarts=4, key=key, method="em",
      learn_class_prior=True,
  )
  first, again, other = run(jax.random.key(5)), run(jax.random.key(5)), run(jax.random.key(6))
  np.testing.assert_array_equal(np.asarray(first.posteriors), np.asarray(again.posteriors))
  starts = np.asarray(first.extras["restart_objectives"])
  assert float(first.extras["objective_trace"][-1]) == starts.max()
  assert not np.array_equal(starts, np.asarray(other.extras["restart_objectives"]))


def test_mace_runs_under_jit(crowd):
  items, annotators, labels, _, _ = crowd

  @jax.jit
  def aggregate(items, annotators, labels):
    return spammer_models.mace(
        items, annotators, labels, num_classes=3, num_items=300, num_annotators=20,
        num_restarts=4, method="em",
    ).posteriors

  eager = spammer_models.mace(items, annotators, labels, num_classes=3, num_restarts=4, method="em")
  np.testing.assert_allclose(
      np.asarray(aggregate(items, annotators, labels)), np.asarray(eager.posteriors), atol=1e-5
  )


# ----------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------


def test_bad_input_is_named():
  items = np.array([0, 1, 1], np.int32)
  annotators = np.array([0, 0, 1], np.int32)
  with pytest.raises(ValueError, match=r"`labels` must be < `num_classes` = 2, got 5 at position 2"):
    spammer_models.mace(items, annotators, np.array([0, 1, 5]), num_classes=2)
  with pytest.raises(ValueError, match="`labels` must be an integer array"):
    spammer_models.glad(items, annotators, np.array([0.0, 1.0, 1.0]), num_classes=2)
  with pytest.raises(ValueError, match="no annotations"):
    spammer_models.glad(items[:0], annotators[:0], items[:0], num_classes=2)
  with pytest.raises(ValueError, match="one entry per annotation"):
    spammer_models.mace(items, annotators[:2], items, num_classes=2)
  with pytest.raises(ValueError, match="`method` must be one of"):
    spammer_models.mace(items, annotators, items, num_classes=2, method="gibbs")
  with pytest.raises(ValueError, match="`num_classes` must be at least 2"):
    spammer_models.glad(items, annotators, items * 0, num_classes=1)
  with pytest.raises(ValueError, match=r"`class_prior` must have shape \(num_classes,\)"):
    spammer_models.glad(items, annotators, items, num_classes=2, class_prior=[1.0])


# ----------------------------------------------------------------------------------------
# (5) Accuracy on the real benchmarks (Zheng et al. 2017 collection).
# ----------------------------------------------------------------------------------------

# crowd-kit 1.4.2 with default settings (../shared/data/README.md).
PUBLISHED = {
    "mace": {"duck": 0.852, "product": 0.929, "dog": 0.835},
    "glad": {"duck": 0.722, "product": 0.928, "dog": 0.834},
}


def read_crowd(name):
  """Reads answers.csv (question,worker,answer) and truth.csv (question,truth)."""
  folder = CROWD_DATA / name
  if not (folder / "answers.csv").is_file() or not (folder / "truth.csv").is_file():
    pytest.skip(f"real crowd data not found at {folder} (../shared/data is absent)")
  with open(folder / "answers.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  with open(folder / "truth.csv", newline="", encoding="utf-8") as f:
    truth_rows = list(csv.DictReader(f))
  item_index, annotator_index = {}, {}
  classes = sorted({row["answer"] for row in rows}, key=int)
  class_index = {c: k for k, c in enumerate(classes)}
  items = np.array([item_index.setdefault(r["question"], len(item_index)) for r in rows], np.int32)
  annotators = np.array(
      [annotator_index.setdefault(r["worker"], len(annotator_index)) for r in rows], np.int32
  )
  labels = np.array([class_index[r["answer"]] for r in rows], np.int32)
  gold_items = np.array([item_index[r["question"]] for r in truth_rows])
  gold = np.array([class_index[r["truth"]] for r in truth_rows])
  return items, annotators, labels, len(classes), gold_items, gold


@pytest.mark.slow
@pytest.mark.parametrize("name", ["duck", "product", "dog"])
def test_accuracy_on_real_data(name):
  items, annotators, labels, num_classes, gold_items, gold = read_crowd(name)
  results = {
      "mace": spammer_models.mace(items, annotators, labels, num_classes=num_classes),
      "glad": spammer_models.glad(items, annotators, labels, num_classes=num_classes),
  }
  for method, result in results.items():
    accuracy = np.mean(np.asarray(result.labels)[gold_items] == gold)
    print(f"{name} {method}: accuracy {accuracy:.4f} (crowd-kit {PUBLISHED[method][name]})")
    assert accuracy >= PUBLISHED[method][name] - 0.02, (name, method, accuracy)
