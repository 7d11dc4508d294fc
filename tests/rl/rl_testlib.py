"""Shared helpers of the online-training tests: configs and reward functions.

The reward functions are imported by name (`reward.function=rl_testlib:...`), which
works because pytest puts this folder on the path (and the subprocess tests add it to
PYTHONPATH).
"""

from __future__ import annotations

from rlhf_jax.train import config as config_lib


def tiny_online_config(objective: str, **overrides):
  """The tiny preset of an online objective, shortened for tests: 8 new tokens, no
  progress bar, checkpoints only at the end."""
  config = config_lib.base_config(objective, "tiny")
  config.train.progress_bar = False
  config.rollout.max_new_tokens = 8
  config.checkpoint.every = 0
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split("__")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def count_token_5(prompts, completions):
  """The number of times token 5 (the first toy filler word) appears in a completion."""
  del prompts
  return [float(c.split().count("5")) for c in completions]


def one_float_too_few(prompts, completions):
  del prompts
  return [0.0] * (len(completions) - 1)


def nan_for_the_second(prompts, completions):
  del prompts
  return [float("nan") if i == 1 else 0.0 for i in range(len(completions))]


def text_length(prompts, completions):
  """Characters of the completion (a rule-based reward on text)."""
  del prompts
  return [float(len(c)) for c in completions]
