"""Building blocks of the decoder: RMSNorm, rotary embeddings, attention, SwiGLU, block.

The Llama architecture is the default; config fields switch in the variants that
pretrained checkpoints need (LayerNorm, learned positions, biases, GELU, a plain MLP,
scaled RoPE frequencies; see `TransformerConfig`).

Every parameter is created through `nn.with_logical_partitioning` with logical axis
names from `AXIS_NAMES`, so that `logical_axis_rules` (in `sharding.py`) maps it to mesh
axes. Activations carry `nn.with_logical_constraint` hints that are no-ops unless the
caller installs rules and a mesh.

Shapes: B batch, T query length, S key length, D d_model, H query heads, K key/value
heads, Dh head dimension, F feed-forward width.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models import lora
from rlhf_jax.models.config import TransformerConfig

__all__ = ["AXIS_NAMES", "Attention", "Block", "FeedForward", "LayerNorm", "RMSNorm", "apply_rope",
           "cached_attention", "causal_attention", "document_attention", "document_places", "gather_slots", "norm",
           "project", "rope_frequencies", "visible_keys"]

# Logical names used by parameters. "layers" appears only with `scan_layers=True`;
# None marks a dimension too small to shard (the outputs of a reward or value head).
AXIS_NAMES = ("vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers")


def _fan_in_init(in_axis, out_axis):
  """LeCun-normal (truncated) initialiser: variance 1 / fan_in over the contracted axes."""
  return nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis
  )


def _constrain(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
  return nn.with_logical_constraint(x, names)


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  return x @ w


def _matmul_forward(x, w):
  return x @ w, (x, w)


def _matmul_backward(residuals, grad):
  x, w = residuals
  grad_x = jnp.einsum("no,io->ni", grad, w)
  # Autodiff's form of these two products made XLA:CPU write transposed copies of the
  # activations, recomputed element by element (strided writes costing more than the
  # matmul). Of the hand-written forms, [O, I] then transposed was the faster on one
  # SwiGLU layer (210 against 235 ms for [I, O]); see docs/benchmarks.md.
  grad_w = jnp.einsum("ni,no->oi", x, grad).T
  # Cotangents in the primals' dtypes (x and w may differ: `x @ w` promotes).
  return grad_x.astype(x.dtype), grad_w.astype(w.dtype)


_matmul.defvjp(_matmul_forward, _matmul_backward)


def project(x: jax.Array, kernel: jax.Array, contract: int = 1) -> jax.Array:
  """A linear map: the last `contract` axes of `x` against the leading ones of `kernel`.

    project(x [..., I1..Ic], kernel [I1..Ic, O1..Om]) -> [..., O1..Om]

  The value of `jnp.tensordot(x, kernel, contract)`, as one [N, I] x [I, O] matmul whose
  gradient is written out (`jax.custom_vjp`): dx = g W^T, dW = x^T g. XLA:CPU compiles
  this backward without the strided transposed copies it made of autodiff's (what that
  gained in the benchmarked train steps: docs/benchmarks.md, appendix A.1).
  Being a custom VJP, it supports reverse-mode differentiation (`grad`, `vjp`) and not
  forward mode (`jvp`).
  """
  lead, inner = x.shape[: x.ndim - contract], x.shape[x.ndim - contract:]
  if kernel.shape[:contract] != inner:
    raise ValueError(f"project: x ends in {inner}, but the kernel starts with {kernel.shape[:contract]}.")
  outer = kernel.shape[contract:]
  n_in, n_out = math.prod(inner), math.prod(outer)
  out = _matmul(x.reshape(-1, n_in), kernel.reshape(n_in, n_out))
  return out.reshape(*lead, *outer)


def causal_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array,
                     query_blocks: int = 2) -> jax.Array:
  """Softmax attention for a full forward whose mask is causal in slot order.

    out[t] = sum_s softmax_s(q_t . k_s / sqrt(Dh), over s with mask[t, s]) v_s

  query [B, T, H, Dh], key and value [B, T, K, Dh] (query head h reads key head
  h // (H / K)), mask bool [B, 1, T, T] that is false wherever s > t. The queries are
  cut into `query_blocks` blocks and block [a, e) reads keys [0, e) only: the rest of
  its scores are masked anyway. With two blocks that is 3/4 of the score matrix, where
  `jax.nn.dot_product_attention` computes every score. The mask is not checked for
  causality (it may be traced): a mask that lets a query see a later key is wrong here.
  Scores and softmax are float32; the output has the dtype of `value`.
  """
  length, heads, head_dim = query.shape[1], query.shape[2], query.shape[3]
  if key.shape[1] != length or mask.shape[-2:] != (length, length) or heads % key.shape[2]:
    raise ValueError(f"causal_attention: queries and keys need the same length and query heads "
                     f"a multiple of key heads, got "
                     f"query {query.shape}, key {key.shape}, mask {mask.shape}.")
  repeats = heads // key.shape[2]
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (query, key, value))  # [B, H or K, T, Dh]
  if repeats > 1:
    k, v = jnp.repeat(k, repeats, axis=1), jnp.repeat(v, repeats, axis=1)
  if length % query_blocks:
    query_blocks = 1
  block = length // query_blocks
  outputs = []
  for start in range(0, length, block):
    end = start + block
    scores = jnp.einsum("bhtd,bhsd->bhts", q[:, :, start:end], k[:, :, :end],
                        preferred_element_type=jnp.float32) * head_dim**-0.5
    scores = jnp.where(mask[:, :, start:end, :end], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    outputs.append(jnp.einsum("bhts,bhsd->bhtd", weights, v[:, :, :end]))
  return jnp.concatenate(outputs, axis=2).transpose(0, 2, 1, 3)


def cached_attention(query: jax.Array, cached_key: jax.Array, cached_value: jax.Array,
                     mask: jax.Array) -> jax.Array:
  """Softmax attention of T new queries to a KV cache laid out heads-major.

    out[t] = sum_s softmax_s(q_t . k_s / sqrt(Dh), over s with mask[t, s]) v_s

  query [B, T, H, Dh]; cached_key and cached_value [B, K, S, Dh] (query head h reads key
  head h // (H / K)); mask bool [B, T, S]. The H / K query heads that share a key head
  are grouped against it, so keys are neither repeated nor transposed: each product
  reads the cache once, in place. Scores and softmax are float32; the output [B, T, H, Dh]
  has the dtype of `cached_value`. A query that sees no key gets the mean of the values.
  """
  batch, length, heads, head_dim = query.shape
  kv_heads = cached_key.shape[1]
  if heads % kv_heads or cached_value.shape != cached_key.shape or mask.shape != (
      batch, length, cached_key.shape[2]):
    raise ValueError(f"cached_attention: query {query.shape}, key {cached_key.shape}, value "
                     f"{cached_value.shape} and mask {mask.shape} do not fit together.")
  groups = heads // kv_heads
  q = query.reshape(batch, length, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, Dh]
  scores = jnp.einsum("bkgtd,bksd->bkgts", q, cached_key,
                      preferred_element_type=jnp.float32) * head_dim**-0.5
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(cached_value.dtype)
  out = jnp.einsum("bkgts,bksd->bkgtd", weights, cached_value)
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


def visible_keys(causal: jax.Array, key_valid: jax.Array,
                 query_segments: jax.Array | None = None, key_segments: jax.Array | None = None,
                 query_documents: jax.Array | None = None,
                 key_documents: jax.Array | None = None) -> jax.Array:
  """Which keys a query may attend to (all arguments broadcast against each other).

  A key is visible when it is causal (not after the query) and valid (not padding);
  with segments, when it is in the query's segment or in the shared prefix (segment 0);
  with documents, when it is in the query's document.
  """
  mask = causal & key_valid
  if query_segments is not None:
    mask = mask & ((query_segments == key_segments) | (key_segments == 0))
  if query_documents is not None:
    mask = mask & (query_documents == key_documents)
  return mask


def document_attention(query: jax.Array, key: jax.Array, value: jax.Array, document_slots: jax.Array,
                       slot_places: jax.Array, segment_ids: jax.Array | None = None,
                       key_mask: jax.Array | None = None) -> jax.Array:
  """Causal attention within each document of padding-free rows.

  A row of T slots holds D documents (sequences, or pairs under prompt sharing) end to
  end; `document_slots` int [B, D, W] gives the slot of the j-th token of document d
  (-1 past its end, W >= the longest document) and `slot_places` int [B, T] the inverse,
  the place d * W + j of each slot (any place in [0, D W) for a slot outside every
  document). The queries, keys and values are gathered into [B D, W] document rows,
  attended causally there (`causal_attention`, with the segment rule of `visible_keys`
  when `segment_ids` [B, T] are given) and gathered back to their slots: the scores cost
  D x W^2 per row instead of T^2, what the documents cost one by one, while the matmuls
  around attention run on the T slots without padding. `key_mask` bool [B, T] (the
  model's attention mask) hides the slots where it is false from every query, inside
  documents too, as in the other attention paths.

  query [B, T, H, Dh], key and value [B, T, K, Dh]; returns [B, T, H, Dh].
  """
  batch, documents, width = document_slots.shape
  places = jnp.clip(document_slots, 0).reshape(batch, documents * width)
  to_documents = lambda x: gather_slots(x, places).reshape(batch * documents, width, *x.shape[2:])
  real = (document_slots >= 0).reshape(batch * documents, 1, width)
  if key_mask is not None:
    real = real & to_documents(key_mask).reshape(batch * documents, 1, width)
  causal = jnp.tril(jnp.ones((width, width), jnp.bool_))[None]
  segments = None if segment_ids is None else to_documents(segment_ids)
  mask = visible_keys(causal, real, None if segments is None else segments[:, :, None],
                      None if segments is None else segments[:, None, :])
  attended = causal_attention(to_documents(query), to_documents(key), to_documents(value), mask[:, None])
  return gather_slots(attended.reshape(batch, documents * width, *attended.shape[2:]), slot_places)


def document_places(document_slots: jax.Array, length: int) -> jax.Array:
  """The inverse of `document_slots` [B, D, W]: int [B, length], the place d * W + j of
  every slot in the flattened documents (0 for slots outside every document)."""
  batch, documents, width = document_slots.shape
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None, None], document_slots.shape)
  places = jnp.broadcast_to(jnp.arange(documents * width).reshape(1, documents, width), document_slots.shape)
  # Slots -1 (past a document's end) go out of bounds and are dropped.
  slots = jnp.where(document_slots >= 0, document_slots, length)
  return jnp.zeros((batch, length), jnp.int32).at[rows, slots].set(places.astype(jnp.int32), mode="drop")


def gather_slots(x: jax.Array, slots: jax.Array) -> jax.Array:
  """Rows of `x` [B, T, ...] at `slots` int [B, N] (in [0, T)): [B, N, ...]."""
  index = slots.reshape(slots.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


class RMSNorm(nn.Module):
  """Root-mean-square normalisation (Zhang & Sennrich 2019, arXiv 1910.07467).

    y = x / sqrt(mean(x ** 2) + eps) * scale

  computed in float32 and returned in the compute dtype. `scale` starts at one.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    scale = self.param(
        "scale",
        nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        (cfg.d_model,),
        cfg.params_dtype,
    )
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_eps)
    return (x32 * inv_rms * scale.astype(jnp.float32)).astype(cfg.compute_dtype)


class LayerNorm(nn.Module):
  """Layer normalisation (Ba et al. 2016, arXiv 1607.06450), as in GPT-2.

    y = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias

  computed in float32 and returned in the compute dtype. `scale` starts at one, `bias`
  at zero.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                       (cfg.d_model,), cfg.params_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
                      (cfg.d_model,), cfg.params_dtype)
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    inv_std = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + cfg.norm_eps)
    out = centred * inv_std * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return out.astype(cfg.compute_dtype)


def norm(config: TransformerConfig, name: str) -> nn.Module:
  """The normalisation layer `config.norm` names ("rms" or "layer")."""
  return (LayerNorm if config.norm == "layer" else RMSNorm)(config, name=name)


def rope_frequencies(config: TransformerConfig) -> np.ndarray | None:
  """Rotary frequencies [Dh / 2] (float32) with `config.rope_scaling` applied, or None for
  unscaled RoPE (`apply_rope` then computes `theta ** (-2 i / Dh)` itself).

  "linear": every frequency divided by the factor (positions interpolated by it; Chen
  et al. 2023, arXiv 2306.15595). "llama3" (Llama 3.1; Grattafiori et al. 2024, arXiv
  2407.21783): with wavelength `l = 2 pi / w` and pretraining context `C`, frequencies
  whose wavelength exceeds `C / low_freq_factor` are divided by the factor, those
  shorter than `C / high_freq_factor` are kept, and in between
  `w' = (1 - s) w / factor + s w` with `s = (C / l - low) / (high - low)`.
  """
  if config.rope_scaling == "none":
    return None
  head_dim = config.head_dim
  base = np.float32(config.rope_theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
  frequencies = (1.0 / base).astype(np.float64)
  factor = config.rope_scaling_factor
  if config.rope_scaling == "linear":
    return (frequencies / factor).astype(np.float32)
  low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
  context = config.rope_original_max_len
  wavelength = 2 * np.pi / frequencies
  smooth = (context / wavelength - low) / (high - low)
  scaled = np.where(wavelength > context / low, frequencies / factor, frequencies)
  medium = (wavelength <= context / low) & (wavelength >= context / high)
  scaled = np.where(medium, (1 - smooth) * frequencies / factor + smooth * frequencies, scaled)
  return scaled.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float,
               frequencies: np.ndarray | None = None) -> jax.Array:
  """Rotary position embedding (Su et al. 2021, "RoFormer", arXiv 2104.09864).

  Half-split convention (GPT-NeoX, Hugging Face Llama): with `x = [x1, x2]` split along
  the head dimension Dh and frequencies `w_i = theta ** (-2 i / Dh)`, i < Dh / 2,

    rope(x, p) = [x1 cos(p w) - x2 sin(p w),  x2 cos(p w) + x1 sin(p w)]

  Args:
    x: [B, T, N, Dh] queries or keys.
    positions: int [B, T] position of every token.
    theta: frequency base.
    frequencies: optional [Dh / 2] frequencies replacing `theta ** (-2 i / Dh)` (scaled
      RoPE, see `rope_frequencies`).

  Returns:
    [B, T, N, Dh] in the dtype of `x`; the rotation is computed in float32.
  """
  half = x.shape[-1] // 2
  if frequencies is None:
    frequencies = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / x.shape[-1])
  else:
    frequencies = jnp.asarray(frequencies, jnp.float32)
  angles = positions.astype(jnp.float32)[:, :, None, None] * frequencies  # [B, T, 1, Dh/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., :half], x32[..., half:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


class Attention(nn.Module):
  """Causal multi-head attention with grouped-query heads, RoPE and a padding mask.

  A query at position t attends to keys s <= t whose `attention_mask[s]` is true.
  Query head h reads key/value head h // (H / K) (the "repeat" convention of GQA).

  With `segment_ids` (int [B, T], full forward only) a row holds a shared prefix
  (segment 0) followed by several continuations of it (segments 1, 2, ...): a token of
  segment k > 0 attends to the prefix and to its own segment only, never to another
  continuation; prefix tokens attend to the prefix. See `rlhf_jax.train.shared_prompt`.

  With `documents = (document_slots [B, D, W], slot_places [B, T])` (full forward only)
  a row holds D documents end to end (a padding-free row of several sequences) and a
  token attends within its own document only (`document_attention`).

  With `query_slots` (int [B, N], full forward only) keys and values are computed at
  every slot but queries only at those N slots: the output is [B, N, D], the rows of
  the full output at those slots (the last block of a model read at a few slots).

  With `decode=True` the keys and values are also written to a "cache" collection
  (`key`, `value` [B, K, L, Dh], `key_mask` [B, L], `index` scalar), and queries attend
  to everything cached so far plus the new tokens: feeding a sequence in chunks gives
  the same outputs as one full forward. The cache is created (all zeros, length L = the
  input length) when the variable does not exist yet; see `transformer.init_cache`.
  """

  config: TransformerConfig
  decode: bool = False

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      positions: jax.Array,
      attention_mask: jax.Array,
      segment_ids: jax.Array | None = None,
      documents: tuple[jax.Array, jax.Array] | None = None,
      query_slots: jax.Array | None = None,
  ) -> jax.Array:
    cfg = self.config
    if self.decode and (segment_ids is not None or documents is not None):
      raise ValueError("Attention: segment_ids and documents are for full forward passes, not decoding.")
    document_ids = None
    if documents is not None:  # the document of each slot, for masks over the whole row
      document_ids = documents[1] // documents[0].shape[2]
    d, h, k, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    dtype = cfg.compute_dtype

    def kernel(name, shape, axes, in_axis, out_axis):
      value = self.param(
          name,
          nn.with_logical_partitioning(_fan_in_init(in_axis, out_axis), axes),
          shape,
          cfg.params_dtype,
      )
      return value.astype(dtype)

    shapes = {"query": ((d, h, dh), ("embed", "heads", "head_dim")),
              "key": ((d, k, dh), ("embed", "kv_heads", "head_dim")),
              "value": ((d, k, dh), ("embed", "kv_heads", "head_dim")),
              "out": ((h, dh, d), ("heads", "head_dim", "embed"))}
    query_kernel = kernel("query", *shapes["query"], 0, (1, 2))
    key_kernel = kernel("key", *shapes["key"], 0, (1, 2))
    value_kernel = kernel("value", *shapes["value"], 0, (1, 2))
    out_kernel = kernel("out", *shapes["out"], (0, 1), 2)

    def linear(name, inputs, kernel_value):
      """inputs W, plus the LoRA adapter's term when `name` is a target."""
      contract = 2 if name == "out" else 1
      out = project(inputs, kernel_value, contract=contract)
      if cfg.lora_rank and name in cfg.lora_targets:
        out = out + lora.adapter(self, name, inputs, *shapes[name], contract=contract)
      return out

    x = x.astype(dtype)
    length = x.shape[1]
    key_slots = jnp.arange(length)
    if query_slots is None:
      query_input, query_positions, query_segments = x, positions, segment_ids
      query_documents = document_ids
      query_index = key_slots[None]  # [1, T]: the slot of every query
    else:
      if self.decode:
        raise ValueError("Attention: query_slots are for full forward passes, not decoding.")
      query_index = jnp.asarray(query_slots, jnp.int32)  # [B, N]
      query_input = gather_slots(x, query_index)
      query_positions = gather_slots(positions, query_index)
      query_segments = None if segment_ids is None else gather_slots(segment_ids, query_index)
      query_documents = None if document_ids is None else gather_slots(document_ids, query_index)
    query = linear("query", query_input, query_kernel)  # [B, T or N, H, Dh]
    key = linear("key", x, key_kernel)  # [B, T, K, Dh]
    value = linear("value", x, value_kernel)
    if cfg.attention_qkv_bias:
      query, key, value = self._add_biases(query, key, value)
    query = _constrain(query, ("batch", "length", "heads", "head_dim"))
    key = _constrain(key, ("batch", "length", "kv_heads", "head_dim"))
    value = _constrain(value, ("batch", "length", "kv_heads", "head_dim"))
    if cfg.position_embedding == "rope":
      frequencies = rope_frequencies(cfg)
      query = apply_rope(query, query_positions, cfg.rope_theta, frequencies)
      key = apply_rope(key, positions, cfg.rope_theta, frequencies)

    key_mask = attention_mask
    if self.decode:
      # The cache is heads-major, [B, K, L, Dh]: the attention products then read it in
      # place (batch dimensions leading), where [B, L, K, Dh] made XLA transpose the whole
      # cache of every layer at every decoding step.
      initialized = self.has_variable("cache", "key")
      cache_shape = (key.shape[0], k, length, dh)
      cached_key = self.variable("cache", "key", jnp.zeros, cache_shape, dtype)
      cached_value = self.variable("cache", "value", jnp.zeros, cache_shape, dtype)
      cached_mask = self.variable("cache", "key_mask", jnp.zeros, attention_mask.shape, jnp.bool_)
      cache_index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      if initialized:
        # Writing past the end of the cache would be clamped by dynamic_update_slice,
        # silently overwriting the last slots; callers size the cache for prompt +
        # generation (`init_cache(..., max_length)`).
        index = cache_index.value
        cache_names = ("batch", "kv_heads", "length", "head_dim")
        for variable, new in ((cached_key, key), (cached_value, value)):
          variable.value = _constrain(jax.lax.dynamic_update_slice(
              variable.value, new.transpose(0, 2, 1, 3).astype(dtype), (0, 0, index, 0)), cache_names)
        cached_mask.value = jax.lax.dynamic_update_slice(cached_mask.value, attention_mask, (0, index))
        cache_index.value = index + length
        # Query t (cache slot index + t) sees the cached keys up to its own slot.
        slots = jnp.arange(cached_mask.value.shape[1])
        visible = (slots[None, :] <= index + key_slots[:, None])[None] & cached_mask.value[:, None, :]
        attended = cached_attention(query, cached_key.value, cached_value.value, visible)
        out = linear("out", attended, out_kernel)
        return _constrain(out, ("batch", "length", "embed"))

    if documents is not None and query_slots is None:
      attended = document_attention(query, key, value, *documents, segment_ids, key_mask)
      out = linear("out", attended, out_kernel)
      return _constrain(out, ("batch", "length", "embed"))

    per_query = lambda ids: None if ids is None else ids[:, :, None]
    per_key = lambda ids: None if ids is None else ids[:, None, :]
    # [B, 1, T, S]: causal in slot order, non-pad keys, segment and document rules.
    mask = visible_keys(key_slots[None, None, :] <= query_index[:, :, None], key_mask[:, None, :],
                        per_query(query_segments), per_key(segment_ids),
                        per_query(query_documents), per_key(document_ids))[:, None]
    if self.decode or query_slots is not None:
      # A first decoding call (building the cache), or queries at a few slots: XLA's implementation
      # handles GQA without materialising repeated keys and computes logits and softmax
      # in float32.
      attended = jax.nn.dot_product_attention(query, key, value, mask=mask)
    else:
      attended = causal_attention(query, key, value, mask)
    out = linear("out", attended, out_kernel)
    return _constrain(out, ("batch", "length", "embed"))

  def _add_biases(self, query: jax.Array, key: jax.Array, value: jax.Array):
    """query + b_q [H, Dh], key + b_k [K, Dh], value + b_v [K, Dh] (`attention_qkv_bias`)."""
    cfg = self.config
    h, k, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    bias = lambda name, shape, axes: self.param(
        name, nn.with_logical_partitioning(nn.initializers.zeros_init(), axes), shape,
        cfg.params_dtype).astype(cfg.compute_dtype)
    return (query + bias("query_bias", (h, dh), ("heads", "head_dim")),
            key + bias("key_bias", (k, dh), ("kv_heads", "head_dim")),
            value + bias("value_bias", (k, dh), ("kv_heads", "head_dim")))


class FeedForward(nn.Module):
  """SwiGLU feed-forward layer (Shazeer 2020, arXiv 2002.05202).

    y = (silu(x W_gate) * (x W_up)) W_down

  or, with `gated_mlp=False`, `act(x W_up) W_down` (GPT-2), with the activation
  `config.activation` and, with `mlp_bias`, a bias after each projection.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = cfg.compute_dtype

    def kernel(name, shape, axes):
      value = self.param(
          name, nn.with_logical_partitioning(_fan_in_init(0, 1), axes), shape, cfg.params_dtype
      )
      return value.astype(dtype)

    def linear(name, inputs, shape, axes):
      out = project(inputs, kernel(name, shape, axes))
      if cfg.lora_rank and name in cfg.lora_targets:
        out = out + lora.adapter(self, name, inputs, shape, axes)
      if cfg.mlp_bias:
        out = out + self.param(
            f"{name}_bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
            shape[1:], cfg.params_dtype).astype(dtype)
      return out

    activation = _ACTIVATIONS[cfg.activation]
    x = x.astype(dtype)
    if cfg.gated_mlp:
      hidden = (activation(linear("gate", x, (cfg.d_model, cfg.d_ff), ("embed", "mlp")))
                * linear("up", x, (cfg.d_model, cfg.d_ff), ("embed", "mlp")))
    else:
      hidden = activation(linear("up", x, (cfg.d_model, cfg.d_ff), ("embed", "mlp")))
    hidden = _constrain(hidden, ("batch", "length", "mlp"))
    return _constrain(linear("down", hidden, (cfg.d_ff, cfg.d_model), ("mlp", "embed")),
                      ("batch", "length", "embed"))


_ACTIVATIONS = {
    "silu": nn.silu,
    # GPT-2's "gelu_new": 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x)).

  Returns `(x, None)` so that the same module can be the body of `nn.scan`. With
  `query_slots` int [B, N] it returns only the rows at those slots, [B, N, D]: every
  slot still gives its key and value, but the query, the attention output and the
  feed-forward layer run at N slots instead of T. `layer` (the block's index, traced
  under scan) reaches the LoRA adapters (`lora.block_index`).
  """

  config: TransformerConfig
  decode: bool = False

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      positions: jax.Array,
      attention_mask: jax.Array,
      segment_ids: jax.Array | None = None,
      documents: tuple[jax.Array, jax.Array] | None = None,
      query_slots: jax.Array | None = None,
      layer: jax.Array | int | None = None,
  ) -> tuple[jax.Array, None]:
    cfg = self.config
    with lora.block_index(layer):  # LoRA dropout: a mask per layer, also under scan
      attended = Attention(cfg, decode=self.decode, name="attention")(
          norm(cfg, "attention_norm")(x), positions, attention_mask, segment_ids, documents,
          query_slots)
      if cfg.attention_out_bias:
        # The output projection's bias, added here so that every attention path (full,
        # per document, cached decoding) has it.
        attended = attended + self.param(
            "attention_out_bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            (cfg.d_model,), cfg.params_dtype).astype(attended.dtype)
      if query_slots is not None:
        x = gather_slots(x, jnp.asarray(query_slots, jnp.int32))
      x = x + attended
      x = x + FeedForward(cfg, name="mlp")(norm(cfg, "mlp_norm")(x))
    return _constrain(x, ("batch", "length", "embed")), None
