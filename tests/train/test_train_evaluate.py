"""Evaluation metrics on hand-computed examples."""

import numpy as np
import pytest

from rlhf_jax.train import evaluate


def test_ece_hand_example_one_per_bin():
  # Predictions 1, 1, 0, 1 with confidences .95, .85, .75, .62, each alone in its bin;
  # correct: yes, no, yes, yes. ECE = (.05 + .85 + .25 + .38) / 4.
  probs = np.array([0.95, 0.85, 0.25, 0.62])
  labels = np.array([1, 0, 0, 1])
  assert evaluate.expected_calibration_error(probs, labels, 10) == pytest.approx(1.53 / 4, abs=1e-12)


def test_ece_hand_example_shared_bin_and_edges():
  # .92 and .97 share bin (0.9, 1.0]: accuracy 1/2, confidence .945 -> |.5 - .945| * 2/4.
  # .6 sits on an inner edge and belongs to (0.5, 0.6]; .55 shares it: predictions 1, 1,
  # labels 1, 1 -> accuracy 1, confidence .575 -> |1 - .575| * 2/4.
  probs = np.array([0.92, 0.97, 0.6, 0.55])
  labels = np.array([1, 0, 1, 1])
  expected = 0.5 * abs(0.5 - 0.945) + 0.5 * abs(1.0 - 0.575)
  assert evaluate.expected_calibration_error(probs, labels, 10) == pytest.approx(expected, abs=1e-12)
  # With one bin, ECE = |accuracy - mean confidence| = |.75 - (.92 + .97 + .6 + .55) / 4|.
  assert evaluate.expected_calibration_error(probs, labels, 1) == pytest.approx(abs(0.75 - 0.76), abs=1e-12)


def test_ece_of_a_calibrated_predictor_is_small():
  rng = np.random.default_rng(0)
  probs = rng.uniform(size=200_000)
  labels = rng.uniform(size=probs.size) < probs
  assert evaluate.expected_calibration_error(probs, labels, 10) < 0.01


def test_ece_rejects_bad_input():
  with pytest.raises(ValueError, match="lie in"):
    evaluate.expected_calibration_error(np.array([1.5]), np.array([1]))
  with pytest.raises(ValueError, match="same shape"):
    evaluate.expected_calibration_error(np.array([0.5, 0.2]), np.array([1]))


def test_reward_model_metrics_use_soft_labels_and_skip_ties():
  outputs = {
      # pair 0: chosen preferred (p=.9) and ranked right; pair 1: target .2 means the
      # rejected response is preferred, and the model ranks it higher (right); pair 2:
      # tie (excluded); pair 3: chosen preferred but ranked lower (wrong).
      "margin": np.array([2.0, -1.0, 5.0, -0.5]),
      "chosen_reward": np.array([1.0, 0.0, 3.0, 0.0]),
      "rejected_reward": np.array([-1.0, 1.0, -2.0, 0.5]),
      "loss": np.array([0.1, 0.2, 0.3, 0.4]),
      "label_target_prob": np.array([0.9, 0.2, 0.5, 1.0]),
      "label_is_tie": np.array([0.0, 0.0, 1.0, 0.0]),
  }
  metrics = evaluate.reward_model_metrics(outputs, num_bins=10)
  assert metrics["accuracy"] == pytest.approx(2 / 3)
  assert metrics["ties"] == 1
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  expected_ece = evaluate.expected_calibration_error(sigmoid(np.array([2.0, -1.0, -0.5])), np.array([1, 0, 1]), 10)
  assert metrics["ece"] == pytest.approx(expected_ece)
  assert metrics["margin"] == pytest.approx(np.mean([2.0, -1.0, 5.0, -0.5]))


def test_implicit_reward_metrics():
  outputs = {"chosen_reward": np.array([0.3, -0.1, 0.2]), "rejected_reward": np.array([0.1, 0.0, 0.2]),
             "loss": np.zeros(3)}
  metrics = evaluate.implicit_reward_metrics(outputs)
  assert metrics["accuracy"] == pytest.approx(1 / 3)  # a tie is not a win
  assert metrics["margin"] == pytest.approx(np.mean([0.2, -0.1, 0.0]))


def test_sft_metrics_are_token_weighted():
  outputs = {"nll_sum": np.array([6.0, 1.0]), "num_tokens": np.array([3.0, 1.0]), "loss": np.array([2.0, 1.0])}
  metrics = evaluate.sft_metrics(outputs)
  assert metrics["token_nll"] == pytest.approx(7.0 / 4.0)
  assert metrics["perplexity"] == pytest.approx(np.exp(7.0 / 4.0))


def test_preference_metrics_hand_example():
  # Hard labels by default: margins 1, 0 (no preference: wrong), -2 -> accuracy 1/3.
  metrics = evaluate.preference_metrics(np.array([1.0, 0.0, -2.0]), num_bins=1)
  assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["ties"] == 0 and metrics["pairs"] == 3
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  # One bin: |accuracy - mean confidence|; predictions 1, 0 (p = .5 is not > .5), 0.
  confidence = np.array([sigmoid(1.0), 0.5, 1 - sigmoid(-2.0)])
  assert metrics["ece"] == pytest.approx(abs(1 / 3 - confidence.mean()))
  # A flagged tie and a 0.5 target are both left out.
  metrics = evaluate.preference_metrics(np.array([1.0, -1.0, 3.0]), np.array([0.0, 0.5, 1.0]),
                                        np.array([False, False, True]))
  assert metrics["accuracy"] == 0.0 and metrics["ties"] == 2
