"""Reward and value heads against the NumPy reference: the reward is read at the last
real token, ensembles give [B, K], values are per token and zero on padding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_transformer as ref
from rlhf_jax import models

TINY = models.get_preset("tiny")
LENGTHS = np.array([10, 7, 3, 1])
TOKENS = np.random.default_rng(1).integers(1, TINY.vocab_size, size=(4, 10)).astype(np.int32)
MASK = np.arange(10)[None, :] < LENGTHS[:, None]
TOKENS = np.where(MASK, TOKENS, 0)


def random_params(model, seed=0):
  return ref.random_params(nn.unbox(models.abstract_params(model)), seed)


def test_last_token_index_hand_example():
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(models.last_token_index(mask), [2, 0, 2, 3])


@pytest.mark.parametrize("num_heads", [1, 3])
def test_reward_is_head_at_last_real_token(num_heads):
  model = models.RewardModel(TINY, num_heads=num_heads)
  params = random_params(model, seed=num_heads)
  assert set(params) == {"backbone", "reward_head"}
  assert params["reward_head"]["kernel"].shape == (TINY.d_model, num_heads)
  apply = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m))
  rewards = apply(params, TOKENS, MASK)
  assert rewards.shape == (4, num_heads) and rewards.dtype == jnp.float32

  _, hidden = ref.forward(params["backbone"], TOKENS, MASK, TINY)
  kernel, bias = params["reward_head"]["kernel"], params["reward_head"]["bias"]
  expected = np.stack([hidden[b, LENGTHS[b] - 1] @ kernel + bias for b in range(4)])
  np.testing.assert_allclose(rewards, expected, atol=1e-4, rtol=1e-4)
  # Not vacuous: for the padded rows, the last slot's hidden state gives another value.
  at_last_slot = hidden[:, -1] @ kernel + bias
  assert np.all(np.abs(at_last_slot[1:] - expected[1:]) > 1e-3)
  if num_heads > 1:
    assert np.all(np.std(np.asarray(rewards), axis=1) > 1e-3)  # the heads differ

  # Left padding the same sequences gives the same rewards (positions count real tokens).
  left = np.zeros_like(TOKENS)
  left_mask = np.zeros_like(MASK)
  for b, length in enumerate(LENGTHS):
    left[b, 10 - length:] = TOKENS[b, :length]
    left_mask[b, 10 - length:] = True
  np.testing.assert_allclose(apply(params, left, left_mask), expected, atol=1e-4, rtol=1e-4)


def test_values_per_token_and_zero_on_padding():
  model = models.ValueModel(TINY)
  params = random_params(model, seed=7)
  values = jax.jit(lambda p: model.apply({"params": p}, TOKENS, MASK))(params)
  assert values.shape == (4, 10) and values.dtype == jnp.float32
  _, hidden = ref.forward(params["backbone"], TOKENS, MASK, TINY)
  head = params["value_head"]
  expected = np.where(MASK, (hidden @ head["kernel"])[..., 0] + head["bias"][0], 0.0)
  np.testing.assert_allclose(values, expected, atol=1e-4, rtol=1e-4)


def test_backbone_layout_is_the_policy_layout_without_lm_head():
  policy = nn.unbox(models.abstract_params(models.Transformer(TINY)))
  del policy["lm_head"]
  for model in (models.RewardModel(TINY, num_heads=2), models.ValueModel(TINY)):
    backbone = nn.unbox(models.abstract_params(model))["backbone"]
    assert jax.tree.map(lambda a: (a.shape, a.dtype), backbone) == jax.tree.map(
        lambda a: (a.shape, a.dtype), policy)


def test_bad_head_count_is_rejected():
  with pytest.raises(ValueError, match="RewardModel.num_heads must be a positive int, got 0"):
    models.abstract_params(models.RewardModel(TINY, num_heads=0))
  with pytest.raises(ValueError, match="RewardModel: `attention_mask` must have the shape"):
    models.RewardModel(TINY).init(jax.random.key(0), TOKENS, MASK[:, :3])
