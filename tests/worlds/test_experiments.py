"""Pieces of the ablation cells checked on hand-made annotations."""
import numpy as np

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
