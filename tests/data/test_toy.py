"""The synthetic toy data: the planted rule holds row by row (so the set is separable by
"GOOD minus BAD"), the token layout is the tokenizer's ([bos] prompt completion [eos],
loss on the completion and eos), seeds reproduce, and impossible sizes are refused."""

import numpy as np
import pytest

from rlhf_jax.data import toy


def _completion(tokens, loss_mask, row):
  return tokens[row][loss_mask[row]]


def _check_layout(tokens, attention, loss_mask, max_length):
  assert tokens.shape[1] == max_length and tokens.dtype == np.int32
  for row in range(len(tokens)):
    length = int(attention[row].sum())
    assert attention[row, :length].all() and not attention[row, length:].any()  # right padding
    assert tokens[row, 0] == toy.TOY_BOS and tokens[row, length - 1] == toy.TOY_EOS
    assert (tokens[row, length:] == toy.TOY_PAD).all()
    start = int(np.argmax(loss_mask[row]))
    assert loss_mask[row, start:length].all() and not loss_mask[row, :start].any()
    prompt = tokens[row, 1:start]
    assert 2 <= len(prompt) <= 5 and (prompt >= toy.TOY_FIRST_WORD).all()


def test_pairs_follow_the_planted_rule():
  data = toy.toy_preference_data(50, seed=3, vocab_size=20, max_length=16)
  arrays = data.arrays
  for part, good, bad in (("chosen", 1, 0), ("rejected", 0, 1)):
    tokens, attention, loss_mask = (arrays[f"{part}_{k}"] for k in ("tokens", "attention_mask", "loss_mask"))
    _check_layout(tokens, attention, loss_mask, 16)
    for row in range(50):
      completion = _completion(tokens, loss_mask, row)
      assert completion[-1] == toy.TOY_EOS
      assert (np.sum(completion == toy.TOY_GOOD), np.sum(completion == toy.TOY_BAD)) == (good, bad)
  # Both completions continue the same prompt.
  chosen_start = arrays["chosen_loss_mask"].argmax(1)
  np.testing.assert_array_equal(chosen_start, arrays["rejected_loss_mask"].argmax(1))
  for row in range(50):
    np.testing.assert_array_equal(arrays["chosen_tokens"][row, :chosen_start[row]],
                                  arrays["rejected_tokens"][row, :chosen_start[row]])
  np.testing.assert_array_equal(arrays["example_index"], np.arange(50))
  assert (arrays["target_prob"] == 1).all() and (arrays["annotator"] == -1).all() and not arrays["is_tie"].any()
  assert data.report.accepted == 50 and data.pad_id == toy.TOY_PAD


def test_sft_and_unpaired_markers():
  sft = toy.toy_sft_data(20, seed=1).arrays
  _check_layout(sft["tokens"], sft["attention_mask"], sft["loss_mask"], 16)
  for row in range(20):
    assert np.sum(_completion(sft["tokens"], sft["loss_mask"], row) == toy.TOY_GOOD) == 1
  kto = toy.toy_unpaired_data(20, seed=1).arrays
  np.testing.assert_array_equal(kto["is_desirable"], np.arange(20) % 2 == 0)
  for row in range(20):
    completion = _completion(kto["tokens"], kto["loss_mask"], row)
    marker = toy.TOY_GOOD if kto["is_desirable"][row] else toy.TOY_BAD
    assert np.sum(completion == marker) == 1
    assert np.sum(completion == (toy.TOY_BAD if marker == toy.TOY_GOOD else toy.TOY_GOOD)) == 0


def test_seeds_reproduce_and_differ():
  first, again = toy.toy_preference_data(8, seed=5).arrays, toy.toy_preference_data(8, seed=5).arrays
  other = toy.toy_preference_data(8, seed=6).arrays
  np.testing.assert_array_equal(first["chosen_tokens"], again["chosen_tokens"])
  assert not np.array_equal(first["chosen_tokens"], other["chosen_tokens"])


def test_impossible_sizes_are_refused():
  with pytest.raises(ValueError, match="`vocab_size` must exceed 5"):
    toy.toy_sft_data(4, vocab_size=5)
  with pytest.raises(ValueError, match="shorter than the longest toy sequence 12"):
    toy.toy_preference_data(4, max_length=11)
  with pytest.raises(ValueError, match="`prompt_length` must be \\(low, high\\)"):
    toy.toy_unpaired_data(4, prompt_length=(3, 2))
