"""Pieces of the ablation cells checked on hand-made annotations."""
import types

import numpy as np
import pytest

from rlhf_jax import ablate, feedback
from rlhf_jax.worlds import experiments


def test_leave_one_out_agreement_worked_example():
  # Item 0: labels a, a, b. Item 1: a, b (the others of each tie or are one label).
  items = np.array([0, 0, 0, 1, 1])
  labels = np.array([0, 0, 1, 0, 1])
  agrees, usable = experiments._leave_one_out_agreement(items, labels, 2)  # pylint: disable=protected-access
  # Item 0: the first two see (a, b) among the others: a tie, unusable; the third sees
  # (a, a): majority a, disagrees. Item 1: each sees the other one label: usable.
  np.testing.assert_array_equal(usable, [False, False, True, True, True])
  np.testing.assert_array_equal(agrees[usable], [False, False, False])


def test_one_label_takes_the_first_annotation_of_each_item():
  class Crowd:  # the fields `aggregate` reads for one_label
    items = np.array([1, 0, 1, 0, 2])
    annotators = np.array([0, 1, 2, 3, 0])
    labels = np.array([1, 0, 0, 1, 1])
    types = np.zeros(4, np.int32)
  labels, prob_a = experiments.aggregate("one_label", Crowd, 3)
  np.testing.assert_array_equal(labels, [0, 1, 1])
  np.testing.assert_array_equal(prob_a, [1.0, 0.0, 0.0])



def _crowd(seed, num_items=30, num_annotators=6):
  """Hand-made crowd labels of seed `seed`: 3 labels per item, annotator m right with
  probability 0.5 + 0.08 m, some golden items, timestamps and response times."""
  rng = np.random.default_rng([seed, 3])
  items = np.repeat(np.arange(num_items), 3)
  annotators = rng.integers(0, num_annotators, items.size)
  truth = rng.integers(0, 2, num_items)
  right = rng.random(items.size) < 0.5 + 0.08 * annotators
  labels = np.where(right, truth[items], 1 - truth[items])
  is_golden = np.isin(items, np.arange(0, num_items, 10))
  return types.SimpleNamespace(
      items=items, annotators=annotators, labels=labels, timestamps=np.cumsum(rng.uniform(1, 60, items.size)),
      response_ms=rng.uniform(500, 20000, items.size), is_golden=is_golden,
      golden_labels=np.where(is_golden, truth[items], -1), types=np.zeros(num_annotators, np.int32))


@pytest.mark.parametrize("method", ["one_label", "majority_vote", "weighted_formula", "dawid_skene"])
def test_aggregation_of_seeds_vmapped_equals_seed_after_seed_and_the_feedback_call(method):
  seeds = [0, 1, 2]
  program = ablate.SeedProgram(
      prepare=lambda params, seed: (experiments.aggregation_inputs(method, _crowd(seed), 30, seed=seed), seed),
      compute=experiments.aggregate_arrays, finish=lambda params, seeds, contexts, outputs: outputs,
      static_of=lambda params: (method, 30, 6))
  vmapped = ablate.run_seeds(program, {}, seeds)
  sequential = ablate.run_seeds(program, {}, seeds, vectorize=False)
  assert vmapped.vectorized and not sequential.vectorized and vmapped.note is None
  for seed, got, want in zip(seeds, vmapped.metrics, sequential.metrics):
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["prob_a"], want["prob_a"], atol=1e-6)
    crowd = _crowd(seed)
    common = dict(num_classes=2, num_items=30)
    if method == "one_label":  # the first label of each item, by a Python loop
      first = {}
      for item, label in zip(crowd.items, crowd.labels):
        first.setdefault(int(item), int(label))
      reference = np.array([first[i] for i in range(30)]), None
    elif method == "weighted_formula":
      metrics = feedback.annotator_metrics(
          crowd.items, crowd.annotators, crowd.labels, timestamps=crowd.timestamps, response_ms=crowd.response_ms,
          is_golden=crowd.is_golden, golden_labels=crowd.golden_labels, expert_labels=None, num_annotators=6,
          num_items=30)
      result = feedback.weighted_vote(crowd.items, crowd.annotators, crowd.labels,
                                      annotator_weights=feedback.annotator_weights(metrics, fast_penalty=0.7),
                                      **common)
      reference = result.labels, result.posteriors[:, 0]
    elif method == "majority_vote":
      result = feedback.majority_vote(crowd.items, crowd.annotators, crowd.labels, num_annotators=6, **common)
      reference = result.labels, result.posteriors[:, 0]
    else:
      result = feedback.dawid_skene(crowd.items, crowd.annotators, crowd.labels, num_annotators=6,
                                    smoothing=0.01, **common)
      reference = result.labels, result.posteriors[:, 0]
    np.testing.assert_array_equal(got["labels"], reference[0])
    if reference[1] is not None:
      np.testing.assert_allclose(got["prob_a"], reference[1], atol=1e-5)
