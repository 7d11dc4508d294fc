"""A graded gold reward over token sequences, and preference pairs with many close calls.

The world of the ablations (`experiments/*/`): responses are sequences of token ids in
`[FIRST_WORD, vocab_size)` (ids 0-2 are reserved), and a hidden gold reward scores each
one as a sum of weighted features, so that a learned reward model can be more or less
right, never trivially so (the old `make run` task had a keyword switch that every
method solved perfectly).

Gold reward of a response x = (x_1 .. x_n), 1 <= n <= max_length:

  r(x) = content(x) + length(x) + repetition(x) + format(x), all divided by `scale`

  content(x)    = (1 / n) * sum_t w[x_t]               w[v] = content_weight * T_3 draw
  length(x)     = -length_weight * log(n / optimal_length)^2
  repetition(x) = -repetition_weight * (1 - #distinct(x) / n)
  format(x)     = format_weight * ([x_1 == OPEN] + [x_n == CLOSE]) / 2

The word values `w` are Student-t draws with 3 degrees of freedom (heavy tails: a few
words matter a lot, most little); word frequencies follow a Zipf law (exponent
`zipf_exponent`), so rare words, whose values a model sees seldom, carry most of the
uncertainty, as in text. `scale` is set once from the world's own pair distribution so
that the standard deviation of the gold difference over pairs is 1: temperatures of
annotators (`rlhf_jax.worlds.annotate`) are then in units of that spread.

Pairs (`sample_pairs`): a response `a` is drawn (length log-normal around
`optimal_length`, Zipf tokens, the format tokens with probability 1/2 each, occasionally a
repeated span); with probability `edit_share` the other response `b` is a small edit of `a`
(1 to `max_edits` token substitutions, insertions or deletions, a toggled format token or
an added repeated span), otherwise an independent draw. Edits make close calls: the two
responses differ in a few features only, so the gold difference is often small, as when
two samples of one policy are compared. A pair whose gold difference is exactly 0 has no
gold preference; `gold_prefers_a` breaks it toward b and `held-out accuracy` counts it
(rare: an edit almost always changes the reward).

Everything is deterministic given `seed`: `GradedWorld.create(seed)` fixes the word
values, `sample_pairs(world, num_pairs, seed)` the pairs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["CLOSE", "FIRST_WORD", "OPEN", "PAD", "GradedWorld", "Pairs", "WorldConfig", "gold_reward",
           "reward_features", "sample_pairs"]

PAD, OPEN, CLOSE = 0, 1, 2  # reserved ids: padding, "format opening" and "format closing" tokens
FIRST_WORD = 3  # ids of ordinary words start here


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Parameters of the gold reward and of the pair distribution (see the module docstring).

  Attributes:
    vocab_size: number of token ids (words are ids FIRST_WORD .. vocab_size - 1).
    max_length: longest response in tokens (arrays are padded to it).
    optimal_length: the length the gold reward prefers.
    zipf_exponent: word frequency ~ rank^-zipf_exponent.
    content_weight, length_weight, repetition_weight, format_weight: feature weights.
    word_value_dof: degrees of freedom of the Student-t word values (heavy tails).
    length_sigma: log-scale spread of response lengths around `optimal_length`.
    edit_share: share of pairs whose second response is an edit of the first.
    max_edits: most token edits in an edited pair.
    repeat_span_rate: probability that a response contains a repeated span.
  """

  vocab_size: int = 1000
  max_length: int = 48
  optimal_length: float = 16.0
  zipf_exponent: float = 1.05
  content_weight: float = 1.0
  length_weight: float = 0.6
  repetition_weight: float = 1.5
  format_weight: float = 0.5
  word_value_dof: float = 3.0
  length_sigma: float = 0.45
  edit_share: float = 0.7
  max_edits: int = 3
  repeat_span_rate: float = 0.2

  def __post_init__(self):
    if self.vocab_size <= FIRST_WORD + 1:
      raise ValueError(f"WorldConfig.vocab_size: expected > {FIRST_WORD + 1}, got {self.vocab_size}.")
    if not 2 <= self.max_length:
      raise ValueError(f"WorldConfig.max_length: expected >= 2, got {self.max_length}.")
    if not 1 <= self.optimal_length <= self.max_length:
      raise ValueError(f"WorldConfig.optimal_length: expected in [1, max_length], got {self.optimal_length}.")
    if not 0 <= self.edit_share <= 1 or not 0 <= self.repeat_span_rate <= 1:
      raise ValueError("WorldConfig.edit_share and repeat_span_rate: expected probabilities in [0, 1].")
    if self.max_edits < 1:
      raise ValueError(f"WorldConfig.max_edits: expected >= 1, got {self.max_edits}.")


@dataclasses.dataclass(frozen=True)
class GradedWorld:
  """The gold reward of one seed: word values, word frequencies and the scale."""

  config: WorldConfig
  seed: int
  word_values: np.ndarray  # float64 [vocab_size], 0 on the reserved ids
  word_probs: np.ndarray  # float64 [vocab_size], Zipf frequencies, 0 on the reserved ids
  scale: float  # divides the raw reward so that std(gold difference over pairs) = 1

  @classmethod
  def create(cls, seed: int, config: WorldConfig | None = None) -> "GradedWorld":
    """Draws the word values (Student-t) and frequencies (Zipf over a random order)."""
    config = config or WorldConfig()
    rng = np.random.default_rng([seed, 0x601D])
    num_words = config.vocab_size - FIRST_WORD
    values = np.zeros(config.vocab_size)
    values[FIRST_WORD:] = config.content_weight * rng.standard_t(config.word_value_dof, num_words)
    ranks = rng.permutation(num_words) + 1  # frequency rank independent of value
    probs = np.zeros(config.vocab_size)
    probs[FIRST_WORD:] = ranks.astype(np.float64) ** -config.zipf_exponent
    probs /= probs.sum()
    world = cls(config=config, seed=seed, word_values=values, word_probs=probs, scale=1.0)
    # The scale from a fixed reference sample of the world's own pairs.
    reference = sample_pairs(world, 4000, seed=-1 - seed)
    spread = float(np.std(reference.raw_difference))
    return dataclasses.replace(world, scale=spread if spread > 0 else 1.0)


def reward_features(world: GradedWorld, tokens: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
  """The four unscaled terms of the gold reward for responses `tokens` [..., L], `lengths` [...]."""
  c = world.config
  tokens = np.asarray(tokens)
  lengths = np.asarray(lengths)
  positions = np.arange(tokens.shape[-1])
  mask = positions < lengths[..., None]
  n = np.maximum(lengths, 1).astype(np.float64)
  content = np.sum(np.where(mask, world.word_values[tokens], 0.0), axis=-1) / n
  length = -c.length_weight * np.log(n / c.optimal_length) ** 2
  # Distinct tokens: sort each row (padding pushed past every word) and count changes.
  big = np.where(mask, tokens, c.vocab_size + positions)
  ordered = np.sort(big, axis=-1)
  distinct = 1 + np.sum((np.diff(ordered, axis=-1) != 0) & (ordered[..., 1:] < c.vocab_size), axis=-1)
  distinct = np.minimum(distinct, lengths)
  repetition = -c.repetition_weight * (1.0 - distinct / n)
  first = tokens[..., 0]
  last = np.take_along_axis(tokens, np.maximum(lengths - 1, 0)[..., None], axis=-1)[..., 0]
  fmt = c.format_weight * ((first == OPEN).astype(np.float64) + (last == CLOSE)) / 2.0
  return {"content": content, "length": length, "repetition": repetition, "format": fmt}


def gold_reward(world: GradedWorld, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """r(x) of the module docstring (float64, [...]): the sum of `reward_features` / scale."""
  return sum(reward_features(world, tokens, lengths).values()) / world.scale


@dataclasses.dataclass(frozen=True)
class Pairs:
  """Preference pairs with their gold rewards (NumPy).

  tokens: int32 [P, 2, L] (side 0 is response a, side 1 response b), padded with PAD.
  lengths: int32 [P, 2].
  gold: float64 [P, 2] gold rewards; `difference` = gold[:, 0] - gold[:, 1].
  edited: bool [P], b is an edit of a.
  raw_difference: float64 [P], the difference before scaling (used to set the scale).
  """

  tokens: np.ndarray
  lengths: np.ndarray
  gold: np.ndarray
  edited: np.ndarray
  raw_difference: np.ndarray

  @property
  def difference(self) -> np.ndarray:
    return self.gold[:, 0] - self.gold[:, 1]

  @property
  def gold_prefers_a(self) -> np.ndarray:
    return self.difference > 0

  def __len__(self) -> int:
    return int(self.tokens.shape[0])

  def take(self, index: np.ndarray) -> "Pairs":
    return Pairs(self.tokens[index], self.lengths[index], self.gold[index], self.edited[index],
                 self.raw_difference[index])


def _draw_words(world: GradedWorld, rng: np.random.Generator, size) -> np.ndarray:
  return rng.choice(world.config.vocab_size, size=size, p=world.word_probs)


def _response(world: GradedWorld, rng: np.random.Generator) -> list[int]:
  c = world.config
  n = int(np.clip(round(c.optimal_length * np.exp(c.length_sigma * rng.standard_normal())), 2, c.max_length))
  words = list(_draw_words(world, rng, n))
  if rng.random() < c.repeat_span_rate:
    _repeat_span(words, rng, c.max_length)
  if rng.random() < 0.5:
    words[0] = OPEN
  if rng.random() < 0.5:
    words[-1] = CLOSE
  return words


def _repeat_span(words: list[int], rng: np.random.Generator, max_length: int) -> None:
  start = int(rng.integers(0, len(words)))
  span = words[start:start + int(rng.integers(2, 6))]
  room = max_length - len(words)
  if room > 0:
    at = int(rng.integers(0, len(words) + 1))
    words[at:at] = span[:room]


def _edit(world: GradedWorld, rng: np.random.Generator, words: list[int]) -> list[int]:
  c = world.config
  out = list(words)
  for _ in range(int(rng.integers(1, c.max_edits + 1))):
    kind = rng.choice(5, p=[0.5, 0.15, 0.15, 0.1, 0.1])
    if kind == 0:  # substitute a word
      out[int(rng.integers(0, len(out)))] = int(_draw_words(world, rng, None))
    elif kind == 1 and len(out) < c.max_length:  # insert a word
      out.insert(int(rng.integers(0, len(out) + 1)), int(_draw_words(world, rng, None)))
    elif kind == 2 and len(out) > 2:  # delete a word
      del out[int(rng.integers(0, len(out)))]
    elif kind == 3:  # toggle a format token
      if rng.random() < 0.5:
        out[0] = int(_draw_words(world, rng, None)) if out[0] == OPEN else OPEN
      else:
        out[-1] = int(_draw_words(world, rng, None)) if out[-1] == CLOSE else CLOSE
    else:
      _repeat_span(out, rng, c.max_length)
  return out


def sample_pairs(world: GradedWorld, num_pairs: int, seed: int) -> Pairs:
  """Draws `num_pairs` pairs (see the module docstring); deterministic given `seed`."""
  c = world.config
  rng = np.random.default_rng([abs(seed), 1 if seed < 0 else 0, world.seed, 0x9A125])
  tokens = np.full((num_pairs, 2, c.max_length), PAD, np.int32)
  lengths = np.zeros((num_pairs, 2), np.int32)
  edited = rng.random(num_pairs) < c.edit_share
  for p in range(num_pairs):
    a = _response(world, rng)
    b = _edit(world, rng, a) if edited[p] else _response(world, rng)
    for side, words in enumerate((a, b)):
      tokens[p, side, :len(words)] = words
      lengths[p, side] = len(words)
  raw = sum(reward_features(world, tokens, lengths).values())
  return Pairs(tokens=tokens, lengths=lengths, gold=raw / world.scale, edited=edited,
               raw_difference=raw[:, 0] - raw[:, 1])
