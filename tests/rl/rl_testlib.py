"""Shared helpers of the online-training tests: configs and reward functions.

The reward functions are imported by name (`reward.function=rl_testlib:...`), which
works because pytest puts this folder on the path (and the subprocess tests add it to
PYTHONPATH).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf_jax.train import config as config_lib

# Lengths of the test reward model (`train_reward_model`).
MAX_LENGTH, MAX_PROMPT_LENGTH = 32, 16
POLITE = ("please", "gladly", "certainly", "thanks")
RUDE = ("whatever", "ugh", "annoying", "stop")
FILLER = ("the", "river", "stone", "garden", "blue", "quiet")


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


def overflowing(prompts, completions):
  """+-3e38 in turn: finite rewards whose differences overflow float32 (non-finite
  advantages, so non-finite gradients)."""
  del prompts
  return [3e38 if i % 2 else -3e38 for i in range(len(completions))]


def text_length(prompts, completions):
  """Characters of the completion (a rule-based reward on text)."""
  del prompts
  return [float(len(c)) for c in completions]


def preference_pairs(count: int, seed: int) -> list[dict[str, str]]:
  """Pairs whose chosen answer holds a polite word and rejected one a rude word."""
  rng = np.random.default_rng(seed)

  def answer(marks):
    words = list(rng.choice(FILLER, size=int(rng.integers(2, 5))))
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(marks)))
    return " " + " ".join(words)

  return [{"prompt": f"\n\nHuman: tell me about {rng.choice(FILLER)} {i}.\n\nAssistant:", "chosen": answer(POLITE),
           "rejected": answer(RUDE)} for i in range(count)]


def train_reward_model(root: Path, *, heads: int = 2, steps: int = 6):
  """A tiny reward model trained on `preference_pairs`: (workdir, final params, config,
  the pairs file)."""
  from rlhf_jax.train import loop  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  path = root / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in preference_pairs(64, seed=1)))
  config = config_lib.base_config("reward_model", "tiny")
  config.train.progress_bar = False
  config.data.train = str(path)
  config.data.tokenizer_vocab_size = 320
  config.data.max_length, config.data.max_prompt_length = MAX_LENGTH, MAX_PROMPT_LENGTH
  config.model.reward_heads = heads
  config.train.steps, config.train.batch_size, config.train.log_every = steps, 8, steps
  config.optim.warmup_steps = 1
  config.checkpoint.every = 0
  results = loop.train(config, root / "rm")
  return root / "rm", jax.device_get(results["state"].params), config, path
