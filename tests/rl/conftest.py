"""Fixtures shared by the online-training tests."""

import pytest

from rl_testlib import train_reward_model


@pytest.fixture(scope="session")
def reward_run(tmp_path_factory):
  """A tiny two-head reward model trained on a text file: (workdir, params, config, pairs file)."""
  return train_reward_model(tmp_path_factory.mktemp("rm"))
