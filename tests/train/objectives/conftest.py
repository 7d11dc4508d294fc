"""Fixtures of the objective tests; tests/train (its `train_testlib`) on the import path."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from objectives_testlib import ForwardModel  # pylint: disable=wrong-import-position
from train_testlib import tiny_config  # pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def policy():
  return ForwardModel(tiny_config("dpo"), "policy", key=0)


@pytest.fixture(scope="module")
def reward_model():
  return ForwardModel(tiny_config("reward_model", model__reward_heads=2), "reward", key=3)
