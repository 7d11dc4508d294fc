"""Synthetic data with a planted rule, for tests and the `tiny` demo (no file, no tokenizer).

Tokens are integers in a small vocabulary: `TOY_PAD`, `TOY_BOS`, `TOY_EOS`, the marker
tokens `TOY_GOOD` and `TOY_BAD`, and filler "words" `TOY_FIRST_WORD ... vocab_size - 1`.
Every preferred (chosen / desirable) completion contains `TOY_GOOD` exactly once and no
`TOY_BAD`; every dispreferred one contains `TOY_BAD` exactly once and no `TOY_GOOD`.
A reward "count of GOOD minus count of BAD in the completion" ranks every pair
correctly, so the set is separable: a reward model or a DPO policy can reach accuracy
1.0 on it. Arrays follow the token convention of `tokenization.py`.
"""

from __future__ import annotations

import numpy as np

from rlhf_jax.data.tokenization import (
    TokenizedPairs,
    TokenizedSequences,
    TokenizedUnpaired,
    TokenizeReport,
)

__all__ = [
    "TOY_BAD",
    "TOY_BOS",
    "TOY_EOS",
    "TOY_FIRST_WORD",
    "TOY_GOOD",
    "TOY_PAD",
    "toy_preference_data",
    "toy_sft_data",
    "toy_unpaired_data",
]

TOY_PAD, TOY_BOS, TOY_EOS, TOY_GOOD, TOY_BAD = 0, 1, 2, 3, 4
TOY_FIRST_WORD = 5


def _check(vocab_size: int, max_length: int, prompt_length: tuple[int, int],
           completion_length: tuple[int, int]) -> None:
  if vocab_size <= TOY_FIRST_WORD:
    raise ValueError(
        f"`vocab_size` must exceed {TOY_FIRST_WORD} (specials and markers), got {vocab_size}.")
  for name, (low, high) in (("prompt_length", prompt_length),
                            ("completion_length", completion_length)):
    if not 1 <= low <= high:
      raise ValueError(f"`{name}` must be (low, high) with 1 <= low <= high, got {(low, high)}.")
  longest = 1 + prompt_length[1] + completion_length[1] + 1
  if longest > max_length:
    raise ValueError(
        f"`max_length` {max_length} is shorter than the longest toy sequence {longest} "
        "(bos + prompt + completion + eos); nothing is truncated in toy data.")


class _Generator:
  """Draws prompts and marked completions from one NumPy generator."""

  def __init__(self, seed, vocab_size, prompt_length, completion_length):
    self.rng = np.random.default_rng(seed)
    self.vocab_size = vocab_size
    self.prompt_length = prompt_length
    self.completion_length = completion_length

  def words(self, low_high):
    n = int(self.rng.integers(low_high[0], low_high[1] + 1))
    return self.rng.integers(TOY_FIRST_WORD, self.vocab_size, size=n).tolist()

  def completion(self, marker):
    words = self.words(self.completion_length)
    words[int(self.rng.integers(len(words)))] = marker
    return words


def _rows(prompts, completions, max_length):
  n = len(prompts)
  tokens = np.full((n, max_length), TOY_PAD, np.int32)
  attention_mask = np.zeros((n, max_length), bool)
  loss_mask = np.zeros((n, max_length), bool)
  for i, (prompt, completion) in enumerate(zip(prompts, completions)):
    start = 1 + len(prompt)
    sequence = [TOY_BOS, *prompt, *completion, TOY_EOS]
    tokens[i, :len(sequence)] = sequence
    attention_mask[i, :len(sequence)] = True
    loss_mask[i, start:len(sequence)] = True
  return tokens, attention_mask, loss_mask


def _report(n, max_length, prompt_length, parts):
  return TokenizeReport(
      examples=n, accepted=n, rejected=0, truncated={p: 0 for p in ("prompt", *parts)},
      max_length=max_length, max_prompt_length=1 + prompt_length[1], cache="off")


def toy_preference_data(
    num_pairs: int = 64,
    *,
    seed: int = 0,
    vocab_size: int = 32,
    max_length: int = 16,
    prompt_length: tuple[int, int] = (2, 5),
    completion_length: tuple[int, int] = (2, 5),
) -> TokenizedPairs:
  """Pairs whose chosen completion holds `TOY_GOOD` and rejected one holds `TOY_BAD`.

  Prompts and the filler of each completion are drawn independently and uniformly from
  the filler words, lengths uniformly from the given (low, high) ranges; labels are
  hard (target_prob 1, weight 1, no ties, annotator -1).
  """
  _check(vocab_size, max_length, prompt_length, completion_length)
  gen = _Generator(seed, vocab_size, prompt_length, completion_length)
  prompts, chosen, rejected = [], [], []
  for _ in range(num_pairs):
    prompts.append(gen.words(prompt_length))
    chosen.append(gen.completion(TOY_GOOD))
    rejected.append(gen.completion(TOY_BAD))
  arrays = {}
  for part, completions in (("chosen", chosen), ("rejected", rejected)):
    tokens, attention_mask, loss_mask = _rows(prompts, completions, max_length)
    arrays.update({f"{part}_tokens": tokens, f"{part}_attention_mask": attention_mask,
                   f"{part}_loss_mask": loss_mask})
  arrays.update(
      target_prob=np.ones(num_pairs, np.float32), weight=np.ones(num_pairs, np.float32),
      is_tie=np.zeros(num_pairs, bool), annotator=np.full(num_pairs, -1, np.int32),
      example_index=np.arange(num_pairs, dtype=np.int64))
  report = _report(num_pairs, max_length, prompt_length, ("chosen", "rejected"))
  return TokenizedPairs(arrays=arrays, report=report, pad_id=TOY_PAD)


def toy_sft_data(
    num_examples: int = 64,
    *,
    seed: int = 0,
    vocab_size: int = 32,
    max_length: int = 16,
    prompt_length: tuple[int, int] = (2, 5),
    completion_length: tuple[int, int] = (2, 5),
) -> TokenizedSequences:
  """SFT sequences whose completions all hold `TOY_GOOD` once (a learnable habit)."""
  _check(vocab_size, max_length, prompt_length, completion_length)
  gen = _Generator(seed, vocab_size, prompt_length, completion_length)
  prompts, completions = [], []
  for _ in range(num_examples):
    prompts.append(gen.words(prompt_length))
    completions.append(gen.completion(TOY_GOOD))
  tokens, attention_mask, loss_mask = _rows(prompts, completions, max_length)
  arrays = {"tokens": tokens, "attention_mask": attention_mask, "loss_mask": loss_mask,
            "example_index": np.arange(num_examples, dtype=np.int64)}
  report = _report(num_examples, max_length, prompt_length, ("completion",))
  return TokenizedSequences(arrays=arrays, report=report, pad_id=TOY_PAD)


def toy_unpaired_data(
    num_examples: int = 64,
    *,
    seed: int = 0,
    vocab_size: int = 32,
    max_length: int = 16,
    prompt_length: tuple[int, int] = (2, 5),
    completion_length: tuple[int, int] = (2, 5),
) -> TokenizedUnpaired:
  """KTO examples: desirable ones (even rows) hold `TOY_GOOD`, undesirable ones `TOY_BAD`."""
  _check(vocab_size, max_length, prompt_length, completion_length)
  gen = _Generator(seed, vocab_size, prompt_length, completion_length)
  is_desirable = np.arange(num_examples) % 2 == 0
  prompts, completions = [], []
  for desirable in is_desirable:
    prompts.append(gen.words(prompt_length))
    completions.append(gen.completion(TOY_GOOD if desirable else TOY_BAD))
  tokens, attention_mask, loss_mask = _rows(prompts, completions, max_length)
  arrays = {"tokens": tokens, "attention_mask": attention_mask, "loss_mask": loss_mask,
            "is_desirable": is_desirable, "example_index": np.arange(num_examples, dtype=np.int64)}
  report = _report(num_examples, max_length, prompt_length, ("completion",))
  return TokenizedUnpaired(arrays=arrays, report=report, pad_id=TOY_PAD)
