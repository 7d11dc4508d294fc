"""Shared helpers of the trainer tests: configs and independent NumPy references."""

from __future__ import annotations

import numpy as np

from rlhf_jax.train import config as config_lib


def tiny_config(objective: str, **overrides):
  """The tiny preset, shortened for tests (no progress bar, few steps)."""
  config = config_lib.base_config(objective, "tiny")
  config.train.progress_bar = False
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split("__")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def numpy_sequence_logps(logits: np.ndarray, tokens: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
  """Summed log-probs of the completion tokens, computed independently in float64:
  token t (where loss_mask[t]) is scored by the log-softmax of the logits at t - 1."""
  logits = np.asarray(logits, np.float64)
  shifted = logits[:, :-1]
  log_softmax = shifted - shifted.max(-1, keepdims=True)
  log_softmax = log_softmax - np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  targets = np.asarray(tokens)[:, 1:]
  picked = np.take_along_axis(log_softmax, targets[..., None], axis=-1)[..., 0]
  return np.where(np.asarray(loss_mask, bool)[:, 1:], picked, 0.0).sum(-1)


def log_sigmoid(x):
  x = np.asarray(x, np.float64)
  return -np.logaddexp(0.0, -x)


def load_datasets(config, workdir):
  """`inputs.load_datasets` of a config, read as the trainer reads it."""
  from rlhf_jax.train import inputs  # pylint: disable=g-import-not-at-top
  return inputs.load_datasets(config_lib.data_settings(config), workdir, objective=config.objective,
                              loss=config_lib.loss_settings(config), seed=int(config.seed))
