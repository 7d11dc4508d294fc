"""The small learners: features, a reward model that learns a planted rule, Crowd-BT
reliabilities that find an adversary, and DPO's implicit reward."""
import numpy as np
import pytest

from rlhf_jax.worlds import graded, models


def test_pair_features_worked_example():
  tokens = np.array([[graded.OPEN, 7, 7, 9, graded.CLOSE, 0], [5, 6, 0, 0, 0, 0]])
  features = models.pair_features(tokens, np.array([5, 2]))
  np.testing.assert_allclose(features[0], [np.log(5), 4 / 5, 1, 1], rtol=1e-6)
  np.testing.assert_allclose(features[1], [np.log(2), 1, 0, 0], rtol=1e-6)


def _planted(rng, num_pairs, vocab=40, length=6):
  """Responses of random words; a word's value is +1 for ids < vocab / 2, else -1."""
  tokens = rng.integers(graded.FIRST_WORD, vocab, size=(num_pairs, 2, length)).astype(np.int32)
  lengths = np.full((num_pairs, 2), length, np.int32)
  value = np.where(tokens < vocab // 2, 1.0, -1.0).sum(-1)
  keep = value[:, 0] != value[:, 1]
  return tokens[keep], lengths[keep], value[keep, 0] > value[keep, 1]


def test_reward_model_learns_a_planted_rule_and_ignores_zero_weights():
  rng = np.random.default_rng(0)
  tokens, lengths, prefers_a = _planted(rng, 400)
  eval_tokens, eval_lengths, eval_prefers_a = _planted(rng, 300)
  target = prefers_a.astype(np.float32)
  weight = np.ones_like(target)
  # Seed 1 sees every label inverted but with weight 0: it must learn nothing from them
  # and stay near chance, while seed 0 learns the rule.
  out = models.train_reward_model(
      np.array([0, 1]), np.stack([tokens] * 2), np.stack([lengths] * 2), np.stack([target, 1 - target]),
      np.stack([weight, np.zeros_like(weight)]), np.stack([eval_tokens] * 2), np.stack([eval_lengths] * 2),
      np.stack([eval_prefers_a] * 2), vocab_size=40, config=models.RewardModelConfig(steps=150))
  assert out["accuracy"][0] > 0.9
  assert 0.3 < out["accuracy"][1] < 0.7


def test_crowd_bt_joint_training_finds_the_adversary():
  rng = np.random.default_rng(1)
  tokens, lengths, prefers_a = _planted(rng, 600)
  eval_tokens, eval_lengths, eval_prefers_a = _planted(rng, 200)
  # Annotators 0 and 3 report the truth, 1 always its reverse, 2 flips a coin (most labels
  # are truthful: Crowd-BT is only identified up to reversing everyone).
  annotator = np.arange(len(prefers_a)) % 4
  coin = rng.random(len(prefers_a)) < 0.5
  reported_a = np.select([annotator == 1, annotator == 2], [~prefers_a, coin], prefers_a)
  out = models.train_reward_model(
      np.array([0]), tokens[None], lengths[None], reported_a[None].astype(np.float32),
      np.ones((1, len(prefers_a)), np.float32), eval_tokens[None], eval_lengths[None], eval_prefers_a[None],
      vocab_size=40, annotator=annotator[None], num_annotators=4, config=models.RewardModelConfig(steps=300))
  reliability = out["reliability"][0]
  assert reliability[0] > 0.8 and reliability[3] > 0.8 and reliability[1] < 0.3 and 0.3 < reliability[2] < 0.8
  assert out["accuracy"][0] > 0.85


def test_dpo_policy_implicit_reward_and_unknown_loss():
  rng = np.random.default_rng(2)
  tokens, lengths, prefers_a = _planted(rng, 400)
  eval_tokens, eval_lengths, eval_prefers_a = _planted(rng, 300)
  word_probs = np.full((1, 40), 1 / 37)
  word_probs[0, :graded.FIRST_WORD] = 0
  out = models.train_policy(word_probs, tokens[None], lengths[None], prefers_a[None].astype(np.float32),
                            eval_tokens[None], eval_lengths[None], eval_prefers_a[None],
                            config=models.PolicyConfig(steps=200, learning_rate=0.1))
  assert out["accuracy"][0] > 0.9
  with pytest.raises(ValueError, match="PolicyConfig.loss"):
    models.train_policy(word_probs, tokens[None], lengths[None], prefers_a[None].astype(np.float32),
                        eval_tokens[None], eval_lengths[None], eval_prefers_a[None],
                        config=models.PolicyConfig(loss="dpoo"))
