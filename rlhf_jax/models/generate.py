"""Sampling from a policy: prefill the prompts, then decode with the KV cache, in one jit.

    config = SamplingConfig(max_new_tokens=64, temperature=0.7, top_p=0.9, eos_id=2,
                            num_samples=4)
    samples = generate(model, params, prompt_tokens, prompt_mask, key, config)
    samples.completion_tokens        # int [B n, N], pad after the end
    samples.logprobs                 # [B n, N] log-prob under the sampling distribution
    samples.policy_logprobs          # [B n, N] log-prob under the policy (temperature 1)
    samples.tokens, samples.attention_mask, samples.loss_mask   # a teacher-forced batch

`generate` is a pure function of (params, prompts, key), jitted with the model and the
`SamplingConfig` static. It prefills every prompt once (logits at its last token only),
copies the cache `num_samples` times, draws the first tokens, then runs a
`lax.while_loop` of one-token decoding steps (`Transformer(..., decode=True)`) that
stops as soon as every row has finished (emitted `eos_id` or one of `stop_ids`) or
after `max_new_tokens` tokens.

Layout. Prompts come as int [B, P] with a mask that is true on real tokens; the real
tokens may sit anywhere in the row (left or right padding): each row is first
left-padded (its real tokens moved to the end, in order), so that every row's next
token goes to slot P and the batch decodes in step. The model takes positions from the
mask (the number of real tokens before a token), so a left-padded prompt gives the
logits of the unpadded one. Completion token j of every row sits at slot P + j of the
full rows (`Samples.tokens`, `prompt_length` = P): logits at slots P - 1 + j predict it.

Rows. With `num_samples` = n the output has B n rows, prompt-major:
[p0 s0, p0 s1, ..., p0 s(n-1), p1 s0, ...] (`prompt_index` = row // n, `sample_index`
= row % n), the grouping GRPO and RLOO baselines expect (`losses.grpo_advantages`).

Randomness. The token that sample s of prompt i draws at step t uses one uniform u from
`fold_in(fold_in(fold_in(key, prompt_ids[i]), s), t)`: the first token whose cumulative
probability exceeds u (inverse-CDF sampling; tokens in vocabulary order, or from the
most probable down with top-k / top-p). So a row's completion depends on its own
prompt, its ids and the key, not on the other rows: a prompt sampled alone (with its
`prompt_ids` entry) gives the same completions as in a batch, up to float rounding of
the padded computation. The uniforms are drawn before decoding starts.

Log-probs. `logprobs` are under the distribution the token was drawn from: the softmax
of `logits / temperature` restricted to the top-k / top-p set and renormalised (zero
for greedy decoding, a point mass); the behaviour policy of PPO-style importance
ratios. `policy_logprobs` are `log softmax(logits)` at the token, the raw policy at
temperature 1, which equal `losses.sequence_logprobs` of a teacher-forced forward pass
on `Samples.tokens`. With temperature 1 and no top-k / top-p the two coincide; with
top-k and top-p off, `logprobs` is `log softmax(logits / temperature)`, what a trainer
that scores its forward pass at the sampling temperature (TRL's convention) computes.
Both are zero after a row's end.

Sharding. Under `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)` (see
`rlhf_jax.train.sampling.make_sampler`) every [rows, ...] array and the cache are split
over the "batch" logical axis (the mesh's data and fsdp axes) and the parameters keep
their training shardings.

Speed. The cache is read in place (heads-major, `layers.cached_attention`), and the
decoding loop is cut into `config.cache_segments` segments whose cache only holds the
slots filled by the end of the segment (grown between segments), so that attention
reads about the filled part of the cache rather than all of it. Sampling draws one
uniform per row and step and inverts the CDF in two levels (blocks, then tokens), with
no [rows, vocab] random tensor; top-k and top-p sort (`lax.top_k`) only when asked.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlhf_jax.models.transformer import Transformer, init_cache

__all__ = ["SamplingConfig", "Samples", "choose_tokens", "generate", "sample", "sampling_logprobs"]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to sample (static under `jax.jit`: a new value compiles a new sampler).

  Attributes:
    max_new_tokens: completion length N (tokens drawn per row, the stop token included).
    temperature: divides the logits; 0 means greedy decoding (the argmax, ties to the
      lowest id), as `do_sample=False` in Hugging Face and temperature 0 in vLLM.
    top_k: keep the k most probable tokens (0: all). Ties at the k-th value keep the
      lower ids (`lax.top_k`).
    top_p: nucleus sampling (Holtzman et al. 2020, arXiv 1904.09751): keep the most
      probable tokens while the probability mass before them is below `top_p` (so at
      least one), after temperature and top-k. 1.0: off.
    eos_id: the end-of-sequence id (None: none); a row ends after emitting it.
    stop_ids: more ids that end a row (e.g. an end-of-turn token).
    pad_id: written after a row's end and as the prompts' padding in the outputs.
    num_samples: completions per prompt (n), rows prompt-major.
    cache_segments: the decoding loop is cut into at most this many segments of steps
      (each of at least 32 steps), each with a cache that holds only the slots filled
      by its end (a compiled loop body per segment: more segments read less of the
      cache but compile longer). The tokens do not depend on it, the log-probs only up
      to float rounding.
  """

  max_new_tokens: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_id: int | None = None
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  num_samples: int = 1
  cache_segments: int = 4

  def __post_init__(self):
    def positive_int(name, minimum=1):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"SamplingConfig.{name} must be an int >= {minimum}, got {value!r}.")
    for name in ("max_new_tokens", "num_samples", "cache_segments"):
      positive_int(name)
    for name in ("top_k", "pad_id"):
      positive_int(name, 0)
    for name, low, high in (("temperature", 0.0, math.inf), ("top_p", 0.0, 1.0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
          or not low <= value <= high or (name == "top_p" and value == 0):
        interval = "a finite number >= 0" if name == "temperature" else "a number in (0, 1]"
        raise ValueError(f"SamplingConfig.{name} must be {interval}, got {value!r}.")
    stop_ids = self.stop_ids
    if isinstance(stop_ids, (int, np.integer)):
      stop_ids = (stop_ids,)
    stop_ids = tuple(stop_ids)
    for value in stop_ids + (() if self.eos_id is None else (self.eos_id,)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"SamplingConfig: eos_id and stop_ids must be token ids (ints >= 0), got {value!r}.")
    # Normalised, so that equal settings hash alike (one compiled sampler).
    object.__setattr__(self, "stop_ids", tuple(int(v) for v in stop_ids))
    object.__setattr__(self, "temperature", float(self.temperature))
    object.__setattr__(self, "top_p", float(self.top_p))

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  @property
  def end_ids(self) -> tuple[int, ...]:
    """Every id that ends a row: `eos_id` and `stop_ids`."""
    return tuple(sorted(set(self.stop_ids) | ({self.eos_id} if self.eos_id is not None else set())))


@struct.dataclass
class Samples:
  """What `generate` returns; R = B n rows (prompt-major), N = `max_new_tokens`, P = prompt
  slots. Arrays after a row's end hold `pad_id`, False or 0.

  Attributes:
    tokens: int [R, P + N] full rows: the left-padded prompt, then the completion.
    attention_mask: bool [R, P + N], true on real tokens (prompt and completion).
    loss_mask: bool [R, P + N], true on completion tokens (the stop token included):
      with `tokens` and `attention_mask` a teacher-forced batch in the data layer's
      convention, `losses.sequence_logprobs(logits[:, :-1], tokens[:, 1:],
      loss_mask[:, 1:])`.
    completion_tokens: int [R, N], `tokens[:, P:]`.
    completion_mask: bool [R, N], `loss_mask[:, P:]`.
    logprobs: float32 [R, N], log-prob of each token under its sampling distribution
      (temperature, top-k, top-p; 0 when greedy).
    policy_logprobs: float32 [R, N], log-prob under the policy at temperature 1.
    lengths: int [R], completion tokens per row (the stop token included).
    stopped: bool [R], the row ended with `eos_id` or a stop id (False: cut at N).
    prompt_index: int [R], the prompt (input row) of each row, row // n.
    sample_index: int [R], which of the n samples of its prompt, row % n.
    prompt_length: P (static): completion token j of every row is at slot P + j.
  """

  tokens: jax.Array
  attention_mask: jax.Array
  loss_mask: jax.Array
  completion_tokens: jax.Array
  completion_mask: jax.Array
  logprobs: jax.Array
  policy_logprobs: jax.Array
  lengths: jax.Array
  stopped: jax.Array
  prompt_index: jax.Array
  sample_index: jax.Array
  prompt_length: int = struct.field(pytree_node=False, default=0)


# ----------------------------------------------------------------------------- one step


def _candidates(logits: jax.Array, config: SamplingConfig) -> tuple[jax.Array, jax.Array | None]:
  """The scaled logits a token is drawn from, [R, C], and their token ids [R, C] (None:
  the whole vocabulary, C = V); entries outside the top-p set are -inf."""
  scaled = logits / config.temperature
  vocab = logits.shape[-1]
  ids = None
  if config.top_k and config.top_k < vocab:
    scaled, ids = jax.lax.top_k(scaled, config.top_k)  # sorted, descending
  if config.top_p < 1.0:
    if ids is None:
      scaled, ids = jax.lax.top_k(scaled, vocab)
    probs = jax.nn.softmax(scaled, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The most probable token always stays (mass before it is 0 < top_p).
    keep = (mass_before < config.top_p) | (jnp.arange(scaled.shape[-1]) == 0)
    scaled = jnp.where(keep, scaled, -jnp.inf)
  return scaled, ids


def sampling_logprobs(logits: jax.Array, config: SamplingConfig) -> jax.Array:
  """Log-probabilities [R, V] of the distribution `generate` draws a token from, given
  the logits [R, V]: log softmax(logits / temperature) on the top-k / top-p set,
  renormalised, -inf elsewhere. Greedy: 0 at the argmax, -inf elsewhere."""
  logits = jnp.asarray(logits, jnp.float32)
  if config.greedy:
    best = _argmax(logits)
    return jnp.where(jnp.arange(logits.shape[-1]) == best[:, None], 0.0, -jnp.inf)
  scaled, ids = _candidates(logits, config)
  logprobs = jax.nn.log_softmax(scaled, axis=-1)
  if ids is None:
    return logprobs
  rows = jnp.arange(logits.shape[0])[:, None]
  return jnp.full(logits.shape, -jnp.inf, jnp.float32).at[rows, ids].set(logprobs)


def _argmax(values: jax.Array) -> jax.Array:
  """`jnp.argmax(values, axis=-1)` (int32): the first index of the maximum, or of the
  first NaN, as two plain reductions. XLA:CPU runs argmax as one reduction of
  (value, index) pairs that it does not vectorise, several times slower over a
  vocabulary (it was a tenth of a greedy decoding step)."""
  top = jnp.max(values, axis=-1, keepdims=True)  # NaN when the row has one
  hit = (values == top) | jnp.isnan(values)
  index = jnp.arange(values.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(hit, index, values.shape[-1]), axis=-1)


def _block_size(size: int) -> int:
  """About sqrt(size), a divisor of `size` when one is near (no padding copy)."""
  root = max(8, int(math.ceil(math.sqrt(size))))
  for block in range(root, 2 * root + 1):
    if size % block == 0:
      return block
  return root


def _inverse_cdf(weights: jax.Array, uniforms: jax.Array) -> jax.Array:
  """Index i of each row drawn with probability weights[i] / sum(weights), from one
  uniform in [0, 1) per row: the first i whose cumulative weight exceeds u * total.

  weights [R, C] >= 0 with a positive sum per row. The cumulative sums run in two levels
  (block totals, then inside the chosen block), O(C) work for any C. Float rounding can
  only move the draw to a neighbouring positive-weight index, never onto a zero weight.
  """
  rows, size = weights.shape
  block = _block_size(size)
  blocks = -(-size // block)
  padded = weights
  if blocks * block != size:
    padded = jnp.pad(weights, ((0, 0), (0, blocks * block - size)))
  padded = padded.reshape(rows, blocks, block)
  block_ends = jnp.cumsum(jnp.sum(padded, axis=-1), axis=-1)  # [R, blocks]
  total = block_ends[:, -1]
  # Strictly below the total, so that some block ends beyond it.
  target = jnp.minimum(uniforms * total, jnp.nextafter(total, jnp.zeros_like(total)))
  chosen = jnp.minimum(jnp.sum(block_ends <= target[:, None], axis=-1), blocks - 1)
  start = jnp.where(chosen > 0, jnp.take_along_axis(block_ends, jnp.maximum(chosen - 1, 0)[:, None], 1)[:, 0], 0.0)
  inner = jnp.take_along_axis(padded, chosen[:, None, None], axis=1)[:, 0]  # [R, block]
  inner_ends = jnp.cumsum(inner, axis=-1)
  index = jnp.sum(inner_ends <= (target - start)[:, None], axis=-1)
  last_positive = block - 1 - jnp.argmax((inner > 0)[:, ::-1], axis=-1)
  return chosen * block + jnp.minimum(index, last_positive)


def choose_tokens(logits: jax.Array, uniforms: jax.Array | None, config: SamplingConfig
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One sampling step: `(tokens int [R], logprobs [R], policy_logprobs [R])` from logits
  [R, V] and one uniform in [0, 1) per row (None when greedy).

  `logprobs` is under the sampling distribution (`sampling_logprobs`), `policy_logprobs`
  under softmax(logits) (temperature 1, no truncation).
  """
  logits = jnp.asarray(logits, jnp.float32)
  untouched = config.temperature == 1.0 and not (0 < config.top_k < logits.shape[-1]) and config.top_p == 1.0
  if config.greedy:
    tokens = _argmax(logits)
    logprobs = jnp.zeros(tokens.shape, jnp.float32)
  else:
    scaled, ids = _candidates(logits, config)
    top = jnp.max(scaled, axis=-1, keepdims=True)
    weights = jnp.exp(scaled - top)
    norm = top[:, 0] + jnp.log(jnp.sum(weights, axis=-1))
    pick = _inverse_cdf(weights, uniforms)
    logprobs = jnp.take_along_axis(scaled, pick[:, None], axis=-1)[:, 0] - norm
    tokens = (pick if ids is None else jnp.take_along_axis(ids, pick[:, None], axis=-1)[:, 0]).astype(jnp.int32)
  # The sampling distribution is the policy's own at temperature 1 without truncation.
  policy_norm = norm if untouched and not config.greedy else jax.nn.logsumexp(logits, axis=-1)
  policy_logprobs = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0] - policy_norm
  return tokens, logprobs, policy_logprobs


# ----------------------------------------------------------------------------- the cache

# Rank of each cache entry without the stacked-layers axis of `scan_layers`; the batch
# axis is the first of those (none for `index`), the slot axis of key/value is the
# second to last, of key_mask the last.
_CACHE_RANK = {"key": 4, "value": 4, "key_mask": 2, "num_tokens": 1, "index": 0}


def _map_cache(cache: Any, function) -> Any:
  """`function(name, leaf, batch_axis)` on every cache entry."""
  def visit(path, leaf):
    name = path[-1].key
    return function(name, leaf, leaf.ndim - _CACHE_RANK[name])
  return jax.tree_util.tree_map_with_path(visit, cache)


def _grow_cache(cache: Any, length: int) -> Any:
  """The cache with its slot axis padded (empty, masked slots) to `length`."""
  def grow(name, leaf, batch_axis):
    if name not in ("key", "value", "key_mask"):
      return leaf
    axis = leaf.ndim - (2 if name != "key_mask" else 1)
    widths = [(0, 0)] * leaf.ndim
    widths[axis] = (0, length - leaf.shape[axis])
    return jnp.pad(leaf, widths)
  return _map_cache(cache, grow)


def _repeat_cache(cache: Any, times: int) -> Any:
  """Every row of the cache `times` times in a row (prompt-major samples)."""
  if times == 1:
    return cache
  return _map_cache(cache, lambda name, leaf, axis: leaf if name == "index" else jnp.repeat(leaf, times, axis=axis))


# A decoding segment is a compiled copy of the model: shorter ones save too little
# attention to pay for their compilation.
_MIN_SEGMENT_STEPS = 32


def _segments(prompt_length: int, new_tokens: int, count: int) -> list[tuple[int, int]]:
  """(end step, cache length) of each decoding segment: at most `count`, each of at
  least `_MIN_SEGMENT_STEPS` steps (one if fewer). Step t >= 1 feeds token t - 1 into
  slot P + t - 1, so steps [a, b) need P + b - 1 slots."""
  count = max(1, min(count, (new_tokens - 1) // _MIN_SEGMENT_STEPS))
  ends = sorted({1 + -(-(new_tokens - 1) * (i + 1) // count) for i in range(count)})
  return [(end, prompt_length + end - 1) for end in ends]


def _left_align(tokens: jax.Array, mask: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
  """Real tokens moved to the end of each row, in order; pads (`pad_id`) before them."""
  order = jnp.argsort(mask, axis=1, stable=True)  # False (padding) first
  tokens = jnp.take_along_axis(tokens, order, axis=1)
  mask = jnp.take_along_axis(mask, order, axis=1)
  return jnp.where(mask, tokens, pad_id).astype(jnp.int32), mask


def _batch_constraint(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))


# ----------------------------------------------------------------------------- sampling


def _check(model: nn.Module, prompt_tokens: Any, prompt_mask: Any, config: SamplingConfig,
           prompt_ids: Any) -> None:
  if not isinstance(model, Transformer):
    raise ValueError(f"generate: `model` must be a models.Transformer (a policy with an output "
                     f"layer), got {type(model).__name__}.")
  if not isinstance(config, SamplingConfig):
    raise ValueError(f"generate: `config` must be a SamplingConfig, got {type(config).__name__}.")
  shape = jnp.shape(prompt_tokens)
  if len(shape) != 2 or not jnp.issubdtype(jnp.result_type(prompt_tokens), jnp.integer):
    raise ValueError(f"generate: `prompt_tokens` must be an int array [batch, length], got "
                     f"{jnp.result_type(prompt_tokens)} {shape}.")
  if jnp.shape(prompt_mask) != shape:
    raise ValueError(f"generate: `prompt_mask` must have the shape of `prompt_tokens` {shape}, got "
                     f"{jnp.shape(prompt_mask)}.")
  if prompt_ids is not None and jnp.shape(prompt_ids) != shape[:1]:
    raise ValueError(f"generate: `prompt_ids` must be an int array [batch={shape[0]}], got shape "
                     f"{jnp.shape(prompt_ids)}.")
  total = shape[1] + config.max_new_tokens
  if total > model.config.max_len:
    raise ValueError(f"generate: prompts of {shape[1]} slots + max_new_tokens {config.max_new_tokens} = "
                     f"{total} exceed the model's max_len {model.config.max_len}.")
  vocab = model.config.vocab_size
  for name, value in (("eos_id", config.eos_id), ("pad_id", config.pad_id)) + tuple(
      ("stop_ids", v) for v in config.stop_ids):
    if value is not None and value >= vocab:
      raise ValueError(f"generate: SamplingConfig.{name} {value} is not below the vocabulary size {vocab}.")
  if not isinstance(prompt_mask, jax.core.Tracer) and getattr(prompt_mask, "is_fully_addressable", True):
    empty = np.flatnonzero(~np.asarray(prompt_mask, bool).any(axis=1))
    if empty.size:
      raise ValueError(f"generate: prompt rows {empty[:8].tolist()} have no real token (an all-false "
                       "`prompt_mask` row); every prompt needs at least one (e.g. a bos).")


def sample(model: Transformer, params: Any, prompt_tokens: jax.Array, prompt_mask: jax.Array,
           key: jax.Array, config: SamplingConfig, prompt_ids: jax.Array | None = None) -> Samples:
  """`generate` without the `jax.jit` (to call inside another jitted function, e.g. a
  rollout that samples and scores in one program); see the module docstring."""
  _check(model, prompt_tokens, prompt_mask, config, prompt_ids)
  prompt_tokens = jnp.asarray(prompt_tokens)
  batch, prompt_length = prompt_tokens.shape
  new_tokens, n = config.max_new_tokens, config.num_samples
  rows = batch * n
  prompt_mask = jnp.asarray(prompt_mask)
  prompt_mask = prompt_mask if prompt_mask.dtype == jnp.bool_ else prompt_mask != 0
  prompt_tokens, prompt_mask = _left_align(prompt_tokens, prompt_mask, config.pad_id)
  prompt_tokens, prompt_mask = _batch_constraint(prompt_tokens), _batch_constraint(prompt_mask)
  prompt_ids = jnp.arange(batch, dtype=jnp.int32) if prompt_ids is None else jnp.asarray(prompt_ids, jnp.int32)

  # Row r = sample r % n of prompt r // n; its key depends only on (key, prompt id, sample).
  prompt_index = jnp.repeat(jnp.arange(batch, dtype=jnp.int32), n)
  sample_index = jnp.tile(jnp.arange(n, dtype=jnp.int32), batch)
  # All uniforms are drawn before decoding: threefry inside the loop would run as small
  # nested loops at every step (how XLA:CPU gets it), costing more than the sampling.
  all_uniforms = None
  if not config.greedy:
    def row_uniforms(prompt_id, sample_id):
      row_key = jax.random.fold_in(jax.random.fold_in(key, prompt_id), sample_id)
      return jax.vmap(lambda t: jax.random.uniform(jax.random.fold_in(row_key, t)))(jnp.arange(new_tokens))
    all_uniforms = _batch_constraint(jax.vmap(row_uniforms)(prompt_ids[prompt_index], sample_index))  # [R, N]

  def uniforms(step):
    if all_uniforms is None:
      return None
    return jax.lax.dynamic_slice_in_dim(all_uniforms, step, 1, axis=1)[:, 0]

  def apply(cache, tokens, mask, **kwargs):
    logits, updates = model.apply({"params": params, "cache": cache}, tokens, mask, decode=True,
                                  mutable=["cache"], **kwargs)
    return logits[:, -1], updates["cache"]

  segments = _segments(prompt_length, new_tokens, config.cache_segments)
  # Prefill: every prompt once, logits at its last slot only; then n copies of the cache.
  cache = init_cache(model, batch, segments[0][1])
  logits, cache = apply(cache, prompt_tokens, prompt_mask,
                        logit_slots=jnp.full((batch, 1), prompt_length - 1, jnp.int32))
  cache = _repeat_cache(cache, n)
  logits = _batch_constraint(jnp.repeat(logits, n, axis=0))

  end_ids = jnp.asarray(config.end_ids, jnp.int32)
  def record(state, step, tokens, logprobs, policy_logprobs):
    """Writes step `step`'s draws into the output buffers (padding for finished rows)."""
    done, lengths, out_tokens, out_logprobs, out_policy = state
    live = ~done
    tokens = jnp.where(live, tokens, config.pad_id)
    columns = lambda buffer, values: jax.lax.dynamic_update_slice(
        buffer, values[:, None].astype(buffer.dtype), (0, step))
    out_tokens = columns(out_tokens, tokens)
    out_logprobs = columns(out_logprobs, jnp.where(live, logprobs, 0.0))
    out_policy = columns(out_policy, jnp.where(live, policy_logprobs, 0.0))
    lengths = lengths + live.astype(jnp.int32)
    if config.end_ids:
      done = done | (live & jnp.isin(tokens, end_ids))
    return (done, lengths, out_tokens, out_logprobs, out_policy), tokens

  outputs = (jnp.zeros(rows, jnp.bool_), jnp.zeros(rows, jnp.int32),
             jnp.full((rows, new_tokens), config.pad_id, jnp.int32),
             jnp.zeros((rows, new_tokens), jnp.float32), jnp.zeros((rows, new_tokens), jnp.float32))
  outputs = jax.tree.map(_batch_constraint, outputs)
  outputs, last = record(outputs, 0, *choose_tokens(logits, uniforms(0), config))

  def body(carry):
    step, cache, last, outputs = carry
    done = outputs[0]
    logits, cache = apply(cache, last[:, None], ~done[:, None])
    outputs, last = record(outputs, step, *choose_tokens(logits, uniforms(step), config))
    return step + 1, cache, last, outputs

  step = jnp.ones((), jnp.int32)
  for end, length in segments:
    cache = _grow_cache(cache, length)
    cond = lambda carry, end=end: (carry[0] < end) & ~jnp.all(carry[3][0])
    step, cache, last, outputs = jax.lax.while_loop(cond, body, (step, cache, last, outputs))

  done, lengths, completion, logprobs, policy_logprobs = outputs
  completion_mask = jnp.arange(new_tokens)[None, :] < lengths[:, None]
  prompt_tokens = jnp.repeat(prompt_tokens, n, axis=0)
  prompt_mask = jnp.repeat(prompt_mask, n, axis=0)
  return Samples(
      tokens=jnp.concatenate([prompt_tokens, completion], axis=1),
      attention_mask=jnp.concatenate([prompt_mask, completion_mask], axis=1),
      loss_mask=jnp.concatenate([jnp.zeros_like(prompt_mask), completion_mask], axis=1),
      completion_tokens=completion, completion_mask=completion_mask, logprobs=logprobs,
      policy_logprobs=policy_logprobs, lengths=lengths, stopped=done, prompt_index=prompt_index,
      sample_index=sample_index, prompt_length=prompt_length)


_jitted_sample = jax.jit(sample, static_argnames=("model", "config"))


def generate(model: Transformer, params: Any, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             key: jax.Array, config: SamplingConfig, prompt_ids: jax.Array | None = None) -> Samples:
  """Samples `config.num_samples` completions of each prompt (see the module docstring),
  compiled once per model, config and input shapes (`jax.jit` of `sample`).

  Args:
    model: the policy, a `models.Transformer` (static: hashed by its config).
    params: its parameters (unboxed).
    prompt_tokens: int [B, P] prompts, padded on either side.
    prompt_mask: bool [B, P], true on real tokens (at least one per row).
    key: a PRNG key (unused when greedy).
    config: a `SamplingConfig` (static).
    prompt_ids: optional int [B], the id each prompt's randomness is folded from
      (default: its row, 0..B-1); give data-set indices to make a prompt's samples
      independent of the batch it is in.

  Returns:
    `Samples` with B n rows, prompt-major.

  Raises:
    ValueError: wrong shapes, prompts + max_new_tokens longer than the model's max_len,
      special ids outside the vocabulary, or a prompt without real tokens (checked when
      the mask is not traced).
  """
  _check(model, prompt_tokens, prompt_mask, config, prompt_ids)  # with the values, before tracing
  return _jitted_sample(model, params, prompt_tokens, prompt_mask, key, config, prompt_ids)
