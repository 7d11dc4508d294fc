"""`models.generate`: the KV-cache sampler against full forward passes (greedy tokens,
teacher-forced log-probs), the sampling distribution against NumPy (chi-square), stop
tokens, lengths, sample order and per-row randomness."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import numpy_transformer as ref
from rlhf_jax import losses, models
from rlhf_jax.models.generate import _segments, choose_tokens
from rlhf_jax.train.components import FAST_COMPILE_OPTIONS

TINY = models.get_preset("tiny")
PAD = 0
# Three prompts of 5, 7 and 3 real tokens in 8 slots: right, left and two-sided padding.
PROMPT_LENGTHS = (5, 7, 3)
_RNG = np.random.default_rng(0)
PROMPTS = np.zeros((3, 8), np.int32)
PROMPT_MASK = np.zeros((3, 8), bool)
for _row, (_start, _length) in enumerate(((0, 5), (1, 7), (2, 3))):
  PROMPT_MASK[_row, _start:_start + _length] = True
  PROMPTS[_row, _start:_start + _length] = _RNG.integers(5, TINY.vocab_size, _length)


# `models.generate` is `jax.jit(models.sample)` after argument checks; most tests compile
# `sample` without LLVM's optimisations (same values, a third of the compile time).
_fast_sample = jax.jit(models.sample, static_argnames=("model", "config"), compiler_options=FAST_COMPILE_OPTIONS)


def generate(model, params, prompts, prompt_mask, key, config, prompt_ids=None):
  # Explicit default ids, so that calls with and without ids share one compiled sampler.
  prompt_ids = np.arange(len(prompts)) if prompt_ids is None else prompt_ids
  return _fast_sample(model, params, prompts, prompt_mask, key, config, prompt_ids)


# Settings shared by several tests (one compilation each).
PLAIN = models.SamplingConfig(max_new_tokens=16, temperature=1.0, pad_id=PAD)
TRUNCATED = models.SamplingConfig(max_new_tokens=10, temperature=0.8, top_k=40, top_p=0.9, num_samples=3,
                                  pad_id=PAD)


def real_prompt(row: int) -> np.ndarray:
  return PROMPTS[row][PROMPT_MASK[row]]


@pytest.fixture(scope="module")
def tiny():
  model = models.Transformer(TINY)
  params = ref.random_params(nn.unbox(models.abstract_params(model)), seed=3)
  return model, params


@pytest.fixture(scope="module")
def forward(tiny):
  model, _ = tiny
  return jax.jit(lambda p, t, m: model.apply({"params": p}, t, m), compiler_options=FAST_COMPILE_OPTIONS)


def numpy_distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
  """The target sampling distribution [V] of one row, in float64: softmax of logits / T
  over the k largest, then the shortest most-probable prefix whose mass reaches top_p."""
  z = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-z, kind="stable")
  kept = order[:top_k] if top_k else order
  p = np.exp(z[kept] - z[kept].max())
  p /= p.sum()
  before = np.cumsum(p) - p
  kept = kept[before < top_p]
  probs = np.zeros(z.shape)
  probs[kept] = np.exp(z[kept] - z[kept].max())
  return probs / probs.sum()


def teacher_forced(forward, params, samples):
  """Log-probs of the completion tokens [R, N] from one full forward over the rows."""
  logits = forward(params, samples.tokens, samples.attention_mask)
  per_token = losses.sequence_logprobs(logits[:, :-1], samples.tokens[:, 1:], samples.loss_mask[:, 1:])
  return np.asarray(logits), np.asarray(per_token)[:, samples.prompt_length - 1:]


def test_greedy_with_the_cache_equals_recomputing_the_prefix(tiny, forward):
  # 66 new tokens: two decoding segments (the cache grows between them).
  model, params = tiny
  new_tokens = 66
  assert len(_segments(8, new_tokens, 4)) == 2
  config = models.SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, pad_id=PAD)
  samples = models.generate(model, params, PROMPTS, PROMPT_MASK, jax.random.key(0), config)
  # Reference: right-padded rows, each step a full forward (no cache) over the whole
  # buffer, reading the logits at the row's last real token.
  buffer = np.zeros((3, 8 + new_tokens), np.int32)
  lengths = np.array(PROMPT_LENGTHS)
  for row in range(3):
    buffer[row, :lengths[row]] = real_prompt(row)
  for _ in range(new_tokens):
    mask = np.arange(buffer.shape[1])[None, :] < lengths[:, None]
    logits = np.asarray(forward(params, buffer, mask))
    buffer[np.arange(3), lengths] = np.argmax(logits[np.arange(3), lengths - 1], axis=-1)
    lengths = lengths + 1
  expected = np.stack([buffer[row, PROMPT_LENGTHS[row]:PROMPT_LENGTHS[row] + new_tokens] for row in range(3)])
  np.testing.assert_array_equal(samples.completion_tokens, expected)
  assert samples.completion_mask.all() and not samples.stopped.any()
  np.testing.assert_array_equal(samples.lengths, [new_tokens] * 3)
  np.testing.assert_array_equal(samples.logprobs, 0.0)  # a point mass
  # The full rows: the left-aligned prompt, then the completion; the teacher-forced
  # log-probs of the same tokens are the returned policy log-probs.
  assert samples.prompt_length == 8 and samples.tokens.shape == (3, 8 + new_tokens)
  for row in range(3):
    np.testing.assert_array_equal(samples.tokens[row, 8 - PROMPT_LENGTHS[row]:8], real_prompt(row))
    assert not samples.attention_mask[row, :8 - PROMPT_LENGTHS[row]].any()
  _, expected_logprobs = teacher_forced(forward, params, samples)
  np.testing.assert_allclose(samples.policy_logprobs, expected_logprobs, atol=1e-5)


# Temperature, top-k and top-p one by one are covered by the chi-square test below.
@pytest.mark.parametrize("config", [PLAIN, TRUNCATED], ids=["plain", "truncated"])
def test_logprobs_equal_the_teacher_forced_pass_and_numpy(tiny, forward, config):
  model, params = tiny
  samples = generate(model, params, PROMPTS, PROMPT_MASK, jax.random.key(1), config)
  logits, expected_policy = teacher_forced(forward, params, samples)
  # Raw policy (temperature 1): `losses.sequence_logprobs` of a teacher-forced pass.
  np.testing.assert_allclose(samples.policy_logprobs, expected_policy, atol=1e-5)
  # Sampling distribution: recomputed in NumPy from the teacher-forced logits.
  prompt = samples.prompt_length
  completion = np.asarray(samples.completion_tokens)
  for row in range(completion.shape[0]):
    for step in range(completion.shape[1]):
      target = numpy_distribution(logits[row, prompt - 1 + step], config.temperature, config.top_k, config.top_p)
      token = completion[row, step]
      assert target[token] > 0, f"row {row} step {step}: token {token} is outside the allowed set"
      np.testing.assert_allclose(samples.logprobs[row, step], np.log(target[token]), atol=1e-5)
  if config.temperature == 1.0 and config.top_k == 0 and config.top_p == 1.0:
    np.testing.assert_allclose(samples.logprobs, samples.policy_logprobs, atol=1e-6)
  # Each draw is the documented one: the uniform of fold_in(fold_in(fold_in(key, prompt
  # id), sample), step) inverted through the NumPy target's CDF, over the tokens in
  # vocabulary order, or from the most probable down with top-k / top-p.
  key = jax.random.key(1)
  for row in range(completion.shape[0]):
    prompt_id, sample_id = int(samples.prompt_index[row]), int(samples.sample_index[row])
    row_key = jax.random.fold_in(jax.random.fold_in(key, prompt_id), sample_id)
    for step in range(completion.shape[1]):
      uniform = float(jax.random.uniform(jax.random.fold_in(row_key, step)))
      step_logits = logits[row, prompt - 1 + step]
      target = numpy_distribution(step_logits, config.temperature, config.top_k, config.top_p)
      order = np.arange(len(target))
      if config.top_k or config.top_p < 1:
        order = np.argsort(-step_logits, kind="stable")
      drawn = order[np.searchsorted(np.cumsum(target[order]), uniform, side="right")]
      assert completion[row, step] == drawn, (row, step)
  # The library's distribution function agrees with NumPy too.
  some = logits[:, prompt - 1]
  expected = np.stack([numpy_distribution(row, config.temperature, config.top_k, config.top_p) for row in some])
  np.testing.assert_allclose(np.exp(models.sampling_logprobs(some, config)), expected, atol=1e-6)


CHI_SQUARE_SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.5, top_k=4),
    dict(temperature=1.0, top_p=0.7),
    dict(temperature=1.5, top_k=6, top_p=0.8),
]


@pytest.mark.parametrize("settings", CHI_SQUARE_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_draws_follow_the_target_distribution(settings):
  vocab, draws = 10, 40_000
  logits = np.array([2.0, 1.5, 1.1, 0.7, 0.3, 0.0, -0.4, -0.9, -1.5, -2.2], np.float32)
  config = models.SamplingConfig(max_new_tokens=1, **settings)
  target = numpy_distribution(logits, config.temperature, config.top_k, config.top_p)
  allowed = target > 0
  if config.top_p < 1:
    # The nucleus drops tokens, and no cumulative mass lies within rounding of top_p.
    before_top_p = numpy_distribution(logits, config.temperature, config.top_k, 1.0)
    assert np.min(np.abs(np.cumsum(np.sort(before_top_p)[::-1]) - config.top_p)) > 1e-3
    assert allowed.sum() < (before_top_p > 0).sum()
  uniforms = jax.random.uniform(jax.random.key(7), (draws,))
  tokens, logprobs, policy = jax.jit(lambda u: choose_tokens(jnp.broadcast_to(logits, (draws, vocab)), u, config))(
      uniforms)
  tokens = np.asarray(tokens)
  assert allowed[tokens].all(), "a token outside the top-k / top-p set was drawn"
  np.testing.assert_allclose(logprobs, np.log(target[tokens]), atol=1e-5)
  np.testing.assert_allclose(policy, (logits - np.log(np.sum(np.exp(logits.astype(np.float64)))))[tokens],
                             atol=1e-5)
  counts = np.bincount(tokens, minlength=vocab)[allowed]
  expected = draws * target[allowed]
  assert stats.chisquare(counts, expected).pvalue > 1e-3
  # The test has power: the untempered, untruncated distribution is rejected (when it
  # differs from the target).
  untouched = numpy_distribution(logits, 1.0, 0, 1.0)
  if not np.allclose(untouched, target):
    full_counts = np.bincount(tokens, minlength=vocab)
    assert stats.chisquare(full_counts, draws * untouched).pvalue < 1e-6


def test_greedy_takes_the_argmax_and_the_distribution_is_a_point_mass():
  logits = jnp.array([[0.1, 3.0, 2.9, -1.0], [5.0, 5.0, 1.0, 0.0]])
  config = models.SamplingConfig(max_new_tokens=1, temperature=0.0)
  tokens, logprobs, policy = choose_tokens(logits, None, config)
  np.testing.assert_array_equal(tokens, [1, 0])  # ties go to the lower id
  np.testing.assert_array_equal(logprobs, [0.0, 0.0])
  np.testing.assert_allclose(policy, jax.nn.log_softmax(logits)[jnp.arange(2), tokens], atol=1e-6)
  np.testing.assert_array_equal(np.exp(models.sampling_logprobs(logits, config)), [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_greedy_choice_is_numpys_argmax_with_ties_infinities_and_nan():
  rng = np.random.default_rng(3)
  logits = np.concatenate([
      rng.integers(0, 3, size=(40, 9)).astype(np.float32),  # many ties
      rng.normal(size=(4, 9)).astype(np.float32),
      np.full((1, 9), -np.inf, np.float32),
      np.array([[1, np.inf, np.inf, 0, 0, 0, 0, 0, 0], [0, 2, np.nan, 5, np.nan, 0, 0, 0, 0],
                [np.inf, np.nan, 0, 0, 0, 0, 0, 0, 0]], np.float32)])
  config = models.SamplingConfig(max_new_tokens=1, temperature=0.0)
  tokens = choose_tokens(jnp.asarray(logits), None, config)[0]
  # NumPy's argmax: the first maximum, or the first NaN when there is one.
  np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))
  np.testing.assert_array_equal(np.argmax(np.exp(models.sampling_logprobs(logits[:45], config)), -1),
                                np.argmax(logits[:45], axis=-1))


def _first_index(row: np.ndarray, token: int) -> int:
  return int(np.flatnonzero(row == token)[0])


def test_rows_stop_at_eos_or_a_stop_id_and_emit_only_padding_afterwards(tiny):
  model, params = tiny
  key = jax.random.key(2)
  free = generate(model, params, PROMPTS, PROMPT_MASK, key, PLAIN)
  tokens = np.asarray(free.completion_tokens)
  # Stop tokens chosen from what the rows draw without them: row 0 at step 3 (eos),
  # row 2 at step 9 (a stop id); row 1 keeps going unless it draws one of them earlier.
  eos, stop = int(tokens[0, 3]), int(tokens[2, 9])
  config = models.SamplingConfig(max_new_tokens=16, temperature=1.0, pad_id=PAD, eos_id=eos, stop_ids=(stop,))
  assert config.end_ids == tuple(sorted({eos, stop}))
  stopped = generate(model, params, PROMPTS, PROMPT_MASK, key, config)
  for row in range(3):
    hits = [i for i, t in enumerate(tokens[row]) if t in (eos, stop)]
    end = hits[0] + 1 if hits else 16
    assert int(stopped.lengths[row]) == end and bool(stopped.stopped[row]) == bool(hits)
    # Up to the end: the same draws as without stop tokens (per-row randomness).
    np.testing.assert_array_equal(stopped.completion_tokens[row, :end], tokens[row, :end])
    np.testing.assert_allclose(stopped.logprobs[row, :end], free.logprobs[row, :end], atol=1e-6)
    # After it: padding, masked, zero log-probs.
    np.testing.assert_array_equal(stopped.completion_tokens[row, end:], PAD)
    np.testing.assert_array_equal(stopped.completion_mask[row], np.arange(16) < end)
    np.testing.assert_array_equal(stopped.logprobs[row, end:], 0.0)
    np.testing.assert_array_equal(stopped.policy_logprobs[row, end:], 0.0)
    np.testing.assert_array_equal(stopped.loss_mask[row, 8:], np.arange(16) < end)
    assert not stopped.attention_mask[row, 8 + end:].any()
  assert int(stopped.lengths[0]) <= 4 and int(stopped.lengths[2]) <= 10 and np.asarray(stopped.stopped)[[0, 2]].all()


def test_max_new_tokens_cuts_the_same_draws(tiny):
  # A row's draw at step t does not depend on the completion length asked for.
  model, params = tiny
  key = jax.random.key(4)
  long = generate(model, params, PROMPTS, PROMPT_MASK, key, PLAIN)
  short = generate(model, params, PROMPTS, PROMPT_MASK, key, models.SamplingConfig(max_new_tokens=5, pad_id=PAD))
  assert short.completion_tokens.shape == (3, 5) and short.tokens.shape == (3, 13)
  np.testing.assert_array_equal(short.completion_tokens, long.completion_tokens[:, :5])
  np.testing.assert_allclose(short.logprobs, long.logprobs[:, :5], atol=1e-6)
  np.testing.assert_array_equal(short.lengths, [5, 5, 5])
  assert not short.stopped.any()


def test_samples_are_prompt_major_and_a_prompt_alone_draws_the_same(tiny):
  model, params = tiny
  key = jax.random.key(5)
  config = TRUNCATED
  batch = generate(model, params, PROMPTS, PROMPT_MASK, key, config)
  assert batch.completion_tokens.shape == (9, 10)
  np.testing.assert_array_equal(batch.prompt_index, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(batch.sample_index, [0, 1, 2] * 3)
  for row in range(9):
    prompt = real_prompt(row // 3)
    np.testing.assert_array_equal(batch.tokens[row, 8 - len(prompt):8], prompt)
  # The samples of one prompt differ from each other.
  for prompt in range(3):
    group = np.asarray(batch.completion_tokens[3 * prompt:3 * prompt + 3])
    assert len({tuple(r) for r in group}) == 3
  rows = lambda prompt: slice(3 * prompt, 3 * prompt + 3)

  def same(samples, prompt, other_prompt):
    np.testing.assert_array_equal(samples.completion_tokens[rows(prompt)], batch.completion_tokens[rows(other_prompt)])
    np.testing.assert_allclose(samples.logprobs[rows(prompt)], batch.logprobs[rows(other_prompt)], atol=1e-5)
    np.testing.assert_allclose(samples.policy_logprobs[rows(prompt)], batch.policy_logprobs[rows(other_prompt)],
                               atol=1e-5)

  # The batch in reverse order, each prompt with its id: the same completions per prompt.
  reverse = generate(model, params, PROMPTS[::-1], PROMPT_MASK[::-1], key, config, prompt_ids=np.array([2, 1, 0]))
  for prompt in range(3):
    same(reverse, 2 - prompt, prompt)
  # A prompt alone, unpadded, with its id: the same three completions.
  alone_prompt = real_prompt(1)[None]
  alone = generate(model, params, alone_prompt, np.ones(alone_prompt.shape, bool), key, config,
                   prompt_ids=np.array([1]))
  same(alone, 0, 1)
  # Other ids draw other completions.
  other = generate(model, params, PROMPTS, PROMPT_MASK, key, config, prompt_ids=np.array([7, 8, 9]))
  assert not np.array_equal(other.completion_tokens, batch.completion_tokens)


def test_scanned_layers_sample_like_unscanned(tiny):
  model, params = tiny
  config = PLAIN
  key = jax.random.key(6)
  plain = generate(model, params, PROMPTS, PROMPT_MASK, key, config)
  stacked = {k: v for k, v in params.items() if not k.startswith("layer_")}
  stacked["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *[params[f"layer_{i}"] for i in range(TINY.n_layers)])
  scanned = generate(models.Transformer(TINY.replace(scan_layers=True)), stacked, PROMPTS, PROMPT_MASK,
                            key, config)
  np.testing.assert_array_equal(scanned.completion_tokens, plain.completion_tokens)
  np.testing.assert_allclose(scanned.logprobs, plain.logprobs, atol=1e-5)


def test_segments_cover_every_step():
  for prompt, new_tokens, count in [(8, 1, 4), (8, 2, 4), (8, 33, 4), (8, 66, 4), (64, 128, 4), (5, 1000, 3)]:
    segments = _segments(prompt, new_tokens, count)
    ends = [end for end, _ in segments]
    assert ends == sorted(ends) and ends[-1] == new_tokens and len(segments) <= count
    assert all(length == prompt + end - 1 for end, length in segments)  # just the filled slots
    starts = [1] + ends[:-1]
    assert all(end - start >= 32 for start, end in zip(starts, ends)) or len(segments) == 1


def test_bad_settings_and_inputs_are_refused(tiny):
  model, params = tiny
  for bad, message in [(dict(max_new_tokens=0), "max_new_tokens must be an int >= 1"),
                       (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
                       (dict(top_p=0.0), r"top_p must be a number in \(0, 1\]"),
                       (dict(top_p=1.5), r"top_p must be a number in \(0, 1\]"),
                       (dict(top_k=-2), "top_k must be an int >= 0"),
                       (dict(stop_ids=(3, -1)), "must be token ids"),
                       (dict(num_samples=0), "num_samples must be an int >= 1")]:
    with pytest.raises(ValueError, match=message):
      models.SamplingConfig(**{"max_new_tokens": 4, **bad})
  config = models.SamplingConfig(max_new_tokens=4)
  assert models.SamplingConfig(max_new_tokens=4, stop_ids=[3, 4]) == models.SamplingConfig(
      max_new_tokens=4, stop_ids=(3, 4))  # hashable alike: one compiled sampler
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="exceed the model's max_len 128"):
    models.generate(model, params, PROMPTS, PROMPT_MASK, key, models.SamplingConfig(max_new_tokens=121))
  empty = PROMPT_MASK.copy()
  empty[1] = False
  with pytest.raises(ValueError, match=r"prompt rows \[1\] have no real token"):
    models.generate(model, params, PROMPTS, empty, key, config)
  with pytest.raises(ValueError, match="eos_id 512 is not below the vocabulary size 512"):
    models.generate(model, params, PROMPTS, PROMPT_MASK, key, models.SamplingConfig(max_new_tokens=4, eos_id=512))
  with pytest.raises(ValueError, match="`prompt_mask` must have the shape"):
    models.generate(model, params, PROMPTS, PROMPT_MASK[:, :4], key, config)
  with pytest.raises(ValueError, match="must be a models.Transformer"):
    models.generate(models.RewardModel(TINY), params, PROMPTS, PROMPT_MASK, key, config)
