"""Evaluation metrics over a whole data set, from the objectives' per-example outputs.

- Reward models: pairwise accuracy (the preferred response gets the higher reward) and
  the expected calibration error of P(chosen preferred) = sigmoid(r_c - r_r).
- DPO family: implicit-reward accuracy (the chosen completion's implicit reward
  beta * log(pi / pi_ref) exceeds the rejected one's) and the mean reward margin.
- SFT: token-level negative log-likelihood and perplexity.
- KTO: the fraction of completions whose implicit reward has their label's sign, and
  the mean rewards of desirable and undesirable completions.

All functions take NumPy arrays (gathered on host) and return Python floats.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

__all__ = [
    "expected_calibration_error",
    "implicit_reward_metrics",
    "pairwise_accuracy",
    "preference_metrics",
    "reward_model_metrics",
    "sft_metrics",
    "kto_metrics",
    "summarize",
]


def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
  """Fraction of pairs with chosen > rejected (a tie counts as wrong)."""
  chosen, rejected = np.asarray(chosen, np.float64), np.asarray(rejected, np.float64)
  if chosen.size == 0:
    return float("nan")
  return float(np.mean(chosen > rejected))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 10) -> float:
  """Expected calibration error of binary predictions, with equal-width confidence bins.

    ECE = sum_m (|B_m| / n) * |accuracy(B_m) - confidence(B_m)|

  where the prediction is `probs > 0.5`, its confidence `max(p, 1 - p)`, and bin m
  holds the confidences in ((m - 1) / M, m / M] (the first bin includes 0). Naeini,
  Cooper & Hauskrecht 2015 (AAAI); Guo, Pleiss, Sun & Weinberger 2017 (arXiv
  1706.04599), Eq. 3.

  Args:
    probs: [n] predicted probabilities that the label is 1.
    labels: [n] 0/1 (or bool) labels.
    num_bins: M, the number of equal-width bins over [0, 1].

  Returns:
    The ECE in [0, 1] (nan for n = 0).
  """
  probs = np.asarray(probs, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1).astype(bool)
  if probs.shape != labels.shape:
    raise ValueError(f"`probs` {probs.shape} and `labels` {labels.shape} must have the same shape.")
  if num_bins < 1:
    raise ValueError(f"`num_bins` must be >= 1, got {num_bins}.")
  if probs.size == 0:
    return float("nan")
  if np.any((probs < 0) | (probs > 1) | ~np.isfinite(probs)):
    raise ValueError("`probs` must lie in [0, 1].")
  predictions = probs > 0.5
  confidence = np.where(predictions, probs, 1.0 - probs)
  correct = predictions == labels
  # Bin m holds ((m - 1) / M, m / M]: `right=True` puts a confidence equal to an inner
  # edge into the lower bin.
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  bins = np.digitize(confidence, edges[1:-1], right=True)
  ece = 0.0
  for m in range(num_bins):
    in_bin = bins == m
    if np.any(in_bin):
      ece += np.mean(in_bin) * abs(np.mean(correct[in_bin]) - np.mean(confidence[in_bin]))
  return float(ece)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  # The tanh form never overflows.
  return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def preference_metrics(margin: np.ndarray, target_prob: np.ndarray | None = None,
                       is_tie: np.ndarray | None = None, *, num_bins: int = 10) -> dict[str, float]:
  """Pairwise accuracy and ECE of reward margins r_c - r_r against the pairs' labels.

  Each pair's label comes from its `target_prob` (default 1): chosen preferred when
  > 0.5, rejected when < 0.5; ties (`is_tie`, or target 0.5) are left out of accuracy
  and ECE. A margin of exactly 0 ranks neither response first and counts as wrong.
  P(chosen preferred) for the ECE is sigmoid(margin), the Bradley-Terry probability.

  Returns:
    {"accuracy", "ece" (nan when no pair is decided), "pairs", "ties"}.
  """
  margin = np.asarray(margin, np.float64).reshape(-1)
  target = np.ones_like(margin) if target_prob is None else np.asarray(target_prob, np.float64).reshape(-1)
  tie = np.zeros(margin.shape, bool) if is_tie is None else np.asarray(is_tie).reshape(-1).astype(bool)
  tie = tie | (target == 0.5)
  decided = ~tie
  label = target[decided] > 0.5
  d = margin[decided]
  return {
      "accuracy": float(np.mean((d > 0) == label)) if d.size else float("nan"),
      "ece": expected_calibration_error(_sigmoid(d), label, num_bins) if d.size else float("nan"),
      "pairs": float(margin.size),
      "ties": float(np.sum(tie)),
  }


def reward_model_metrics(outputs: Mapping[str, np.ndarray], *, num_bins: int = 10) -> dict[str, float]:
  """Accuracy, ECE and margins of a reward model on pairs (labels and ties as in
  `preference_metrics`)."""
  margin = np.asarray(outputs["margin"], np.float64)
  labelled = preference_metrics(margin, outputs.get("label_target_prob"), outputs.get("label_is_tie"),
                                num_bins=num_bins)
  metrics = {
      "accuracy": labelled["accuracy"],
      "ece": labelled["ece"],
      "margin": float(np.mean(margin)),
      "chosen_reward": float(np.mean(outputs["chosen_reward"])),
      "rejected_reward": float(np.mean(outputs["rejected_reward"])),
      "loss": float(np.mean(outputs["loss"])),
      "pairs": labelled["pairs"],
      "ties": labelled["ties"],
  }
  if "margin_std" in outputs:
    metrics["margin_std"] = float(np.mean(outputs["margin_std"]))
  return metrics


def implicit_reward_metrics(outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
  """DPO family: implicit-reward accuracy, mean margin, mean chosen/rejected rewards."""
  chosen = np.asarray(outputs["chosen_reward"], np.float64)
  rejected = np.asarray(outputs["rejected_reward"], np.float64)
  margin = np.asarray(outputs.get("margin", chosen - rejected), np.float64)
  metrics = {
      "accuracy": float(np.mean(margin > 0)),
      "margin": float(np.mean(margin)),
      "chosen_reward": float(np.mean(chosen)),
      "rejected_reward": float(np.mean(rejected)),
      "loss": float(np.mean(outputs["loss"])),
      "pairs": float(chosen.size),
  }
  for name in ("chosen_logps", "rejected_logps", "chosen_nll"):
    if name in outputs:
      metrics[name] = float(np.mean(outputs[name]))
  return metrics


def sft_metrics(outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Token-level NLL (total NLL / total completion tokens) and its perplexity."""
  tokens = float(np.sum(outputs["num_tokens"]))
  nll = float(np.sum(outputs["nll_sum"])) / max(tokens, 1.0)
  return {"token_nll": nll, "perplexity": float(np.exp(nll)), "loss": float(np.mean(outputs["loss"])),
          "tokens": tokens}


def kto_metrics(outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
  """KTO: sign accuracy, mean rewards per label and their difference (margin)."""
  reward = np.asarray(outputs["reward"], np.float64)
  desirable = np.asarray(outputs["label_is_desirable"]) > 0.5
  good = float(np.mean(reward[desirable])) if np.any(desirable) else float("nan")
  bad = float(np.mean(reward[~desirable])) if np.any(~desirable) else float("nan")
  return {"accuracy": float(np.mean(outputs["accuracy"])), "desirable_reward": good,
          "undesirable_reward": bad, "margin": good - bad, "loss": float(np.mean(outputs["loss"])),
          "examples": float(reward.size)}


def summarize(objective: Any, outputs: Mapping[str, np.ndarray], num_bins: int = 10) -> dict[str, float]:
  """Data-set metrics from the per-example outputs of `objective` (a registered
  `objectives.Objective`: its `summary`); `num_bins`: the ECE bins (`eval.ece_bins`)."""
  return objective.summary(outputs, int(num_bins))


def concatenate(parts: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Joins per-batch output dicts along the example axis."""
  parts = list(parts)
  if not parts:
    return {}
  return {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}
