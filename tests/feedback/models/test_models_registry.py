"""Tests for rlhf_jax.feedback.models.registry: every class-level method by name, one
calling convention, and a misspelt name answered with the close matches."""

import numpy as np
import pytest

from rlhf_jax import feedback
from rlhf_jax.feedback.models.registry import AGGREGATION_METHODS, EXTRA_INPUTS

# Item 0: three answers 0; item 1: three answers 1; item 2: 0, 0, 1.
ITEMS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
ANNOTATORS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
LABELS = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1])


def test_every_method_is_registered_under_its_public_name():
  assert set(AGGREGATION_METHODS.names()) == {
      "majority_vote", "weighted_vote", "wawa", "zero_based_skill", "gold_majority_vote", "dawid_skene",
      "one_coin_dawid_skene", "bayesian_dawid_skene", "mace", "glad", "kos", "mmsr"}
  for name in AGGREGATION_METHODS.names():
    assert AGGREGATION_METHODS.get(name) is getattr(feedback, name)


@pytest.mark.parametrize("name", ["majority_vote", "wawa", "zero_based_skill", "kos", "mmsr", "dawid_skene"])
def test_one_calling_convention_and_a_unanimous_crowd_is_followed(name):
  result = AGGREGATION_METHODS.get(name)(ITEMS, ANNOTATORS, LABELS, num_classes=2, num_items=3, num_annotators=3)
  np.testing.assert_array_equal(result.labels, [0, 1, 0])
  assert np.asarray(result.posteriors).shape == (3, 2)
  assert name not in EXTRA_INPUTS


def test_unknown_name_lists_close_matches():
  with pytest.raises(ValueError, match=r"unknown aggregation method 'wawaa'; did you mean 'wawa'"):
    AGGREGATION_METHODS.get("wawaa")
