"""Decoder-only transformer (Llama-style: RoPE, RMSNorm, SwiGLU, grouped-query attention).

    model = Transformer(get_preset("tiny"))
    params = model.init(key, tokens, attention_mask)["params"]
    logits = model.apply({"params": params}, tokens, attention_mask)        # [B, T, V] f32
    hidden = model.apply({"params": params}, tokens, attention_mask, return_hidden=True)

Padding: `attention_mask` is true on real tokens. Keys that are padding are never
attended to, and the position of a token is the number of real tokens before it, so a
padded sequence gives, at its real positions, exactly the logits of the unpadded one
(right or left padding alike).

Sharding: parameters are created with logical axis names; under `jax.set_mesh(mesh)`
(a mesh with `AxisType.Auto` axes) and `nn.logical_axis_rules(logical_axis_rules())`
the activations get matching sharding constraints, and XLA inserts the collectives.

Shared prefixes: `segment_ids` (0 = a prefix every later segment sees, k > 0 = one
continuation) with explicit `positions` run several continuations of one prompt in one
row, and `logit_slots` computes logits only at the slots that predict a token; see
`rlhf_jax.train.shared_prompt`. Padding-free rows: `document_slots` lay several
sequences (or pairs) end to end in one row, each attending within itself only; see
`rlhf_jax.data.packing`.

Incremental decoding (online rollouts): `cache = init_cache(model, batch, length)`, then
`logits, updates = model.apply({"params": p, "cache": cache}, chunk, chunk_mask,
decode=True, mutable=["cache"])` with `cache = updates["cache"]`; chunks of any length
(a whole prompt, then one token at a time) give the logits of the full forward.
`rlhf_jax.models.generate` is that loop, jitted, with sampling.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.layers import Block, document_places, gather_slots, norm, project

__all__ = ["Transformer", "check_inputs", "check_mesh", "init_cache", "token_positions"]


def check_inputs(
    tokens: jax.Array, attention_mask: jax.Array | None, config: TransformerConfig, where: str,
    *, check_length: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """Trace-time checks of model inputs; returns `(tokens int32, attention_mask bool)`.

  Token values are not checked (they may be traced); an id outside [0, vocab_size)
  makes the embedding lookup return NaN, which shows in the logits. `check_length=False`
  allows rows longer than `max_len` (packed rows with explicit positions, whose
  positions, not slots, stay below `max_len`).
  """
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(
        f"{where}: `tokens` must be an integer array [batch, length], got dtype "
        f"{tokens.dtype} with shape {tokens.shape}."
    )
  if check_length and tokens.shape[1] > config.max_len:
    raise ValueError(
        f"{where}: `tokens` has length {tokens.shape[1]}, longer than the model's max_len "
        f"{config.max_len}."
    )
  if attention_mask is None:
    attention_mask = jnp.ones(tokens.shape, jnp.bool_)
  attention_mask = jnp.asarray(attention_mask)
  if attention_mask.shape != tokens.shape:
    raise ValueError(
        f"{where}: `attention_mask` must have the shape of `tokens` {tokens.shape}, got "
        f"{attention_mask.shape}."
    )
  if attention_mask.dtype != jnp.bool_:
    if not jnp.issubdtype(attention_mask.dtype, jnp.number):
      raise ValueError(
          f"{where}: `attention_mask` must be boolean or 0/1 numbers, got {attention_mask.dtype}."
      )
    attention_mask = attention_mask != 0
  return tokens.astype(jnp.int32), attention_mask


def check_mesh(where: str) -> None:
  """Raises when the ambient mesh (`jax.set_mesh`) has Explicit axes.

  The models shard the GSPMD way: parameters and activations carry logical axis names,
  `logical_axis_rules` map them to mesh axes, and XLA propagates shardings (inserting the
  FSDP all-gathers). Under Explicit axes (the default of `jax.make_mesh`) JAX instead
  asks every gather and matmul for an explicit output sharding, which fails deep inside
  the embedding lookup; this check says so up front.
  """
  explicit = tuple(jax.sharding.get_abstract_mesh().explicit_axes)
  if explicit:
    raise ValueError(
        f"{where}: the current mesh has Explicit axes {explicit}; the models shard through "
        "logical axis rules and need Auto axes: build the mesh with jax.make_mesh(shape, "
        "names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))."
    )


def token_positions(attention_mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
  """Position of every token = number of real tokens before it (+ `offset` [B] or scalar).

  Padding tokens get the position of the last real token before them (0 if none); their
  outputs are never read.
  """
  counts = jnp.cumsum(attention_mask.astype(jnp.int32), axis=1)
  offset = jnp.asarray(offset, jnp.int32)
  if offset.ndim == 1:
    offset = offset[:, None]
  return jnp.maximum(offset + counts - 1, 0)


class Transformer(nn.Module):
  """Decoder-only language model; see the module docstring.

  Parameters (unscanned): `embed/embedding` [V, D]; `layer_{i}/{attention_norm,mlp_norm}/
  scale` [D]; `layer_{i}/attention/{query [D, H, Dh], key [D, K, Dh], value [D, K, Dh],
  out [H, Dh, D]}`; `layer_{i}/mlp/{gate [D, F], up [D, F], down [F, D]}`;
  `final_norm/scale` [D]; `lm_head` [D, V] unless `tie_embeddings`. With `scan_layers`
  the blocks are one `layers` subtree whose leaves have a leading [n_layers] axis.
  Variants add: `position_embed/embedding` [max_len, D] (learned positions); a `bias`
  [D] next to every norm `scale` (LayerNorm); `attention/{query_bias [H, Dh],
  key_bias [K, Dh], value_bias [K, Dh]}` and `layer_{i}/attention_out_bias` [D];
  `mlp/{gate_bias, up_bias [F], down_bias [D]}`; no `mlp/gate` without `gated_mlp`.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(
      self,
      tokens: jax.Array,
      attention_mask: jax.Array | None = None,
      *,
      segment_ids: jax.Array | None = None,
      document_slots: jax.Array | None = None,
      positions: jax.Array | None = None,
      logit_slots: jax.Array | None = None,
      return_hidden: bool = False,
      decode: bool = False,
  ) -> jax.Array:
    """Logits [B, T, V] float32, or with `return_hidden` the final normalised hidden
    states [B, T, D] in the compute dtype.

    Args:
      tokens: int [B, T] token ids.
      attention_mask: bool [B, T], true on real tokens (default: all true).
      segment_ids: optional int [B, T]: segment 0 is a prefix shared by the later
        segments, a token of segment k > 0 attends to segment 0 and to segment k only
        (full forward only, not with `decode`).
      document_slots: optional int [B, D, W]: the row holds D documents end to end (a
        padding-free row), the j-th token of document d at slot document_slots[b, d, j]
        (-1 past its end; W >= the longest document). A token attends only within its
        document, computed per document (`layers.document_attention`), and its default
        position is j; full forward only.
      positions: optional int [B, T] rotary positions (default: the number of real
        tokens before each token); they must stay below `max_len`, while the row itself
        may then be longer (a packed row of several continuations).
      logit_slots: optional int [B, N] in [0, T) (checked when the values are known,
        not when traced): compute the output (logits or hidden states) only at these
        slots, giving [B, N, V] (or [B, N, D]); the output projection then costs N
        instead of T positions, and so do the queries, attention output and
        feed-forward layer of the last block (unscanned layers, full forward).
      return_hidden: skip the output projection and return the hidden states.
      decode: read and extend the KV cache (collection "cache", made by `init_cache`).
    """
    cfg = self.config
    # Packed rows may be longer than max_len: their positions (per document) stay below it.
    tokens, attention_mask = check_inputs(tokens, attention_mask, cfg, "Transformer",
                                          check_length=positions is None and document_slots is None)
    check_mesh("Transformer")
    for name, value in (("segment_ids", segment_ids), ("positions", positions)):
      if value is not None and jnp.shape(value) != tokens.shape:
        raise ValueError(
            f"Transformer: `{name}` must have the shape of `tokens` {tokens.shape}, got "
            f"{jnp.shape(value)}.")
    if decode and (segment_ids is not None or document_slots is not None or positions is not None):
      raise ValueError("Transformer: `segment_ids`, `document_slots` and `positions` are for full "
                       "forward passes; decoding derives positions from the cache.")
    if document_slots is not None and (jnp.ndim(document_slots) != 3
                                       or jnp.shape(document_slots)[0] != tokens.shape[0]):
      raise ValueError(f"Transformer: `document_slots` must be an int array [batch={tokens.shape[0]}, "
                       f"documents, width], got shape {jnp.shape(document_slots)}.")
    if document_slots is not None and positions is None and jnp.shape(document_slots)[2] > cfg.max_len:
      raise ValueError(f"Transformer: documents of {jnp.shape(document_slots)[2]} slots "
                       f"(`document_slots` width) would take positions past the model's max_len "
                       f"{cfg.max_len}; pass `positions`.")
    if logit_slots is not None and (jnp.ndim(logit_slots) != 2
                                    or jnp.shape(logit_slots)[0] != tokens.shape[0]):
      raise ValueError(
          f"Transformer: `logit_slots` must be an int array [batch={tokens.shape[0]}, N], "
          f"got shape {jnp.shape(logit_slots)}.")
    if (logit_slots is not None and not isinstance(logit_slots, jax.core.Tracer)
        and getattr(logit_slots, "is_fully_addressable", True)):
      # Out-of-range slots would be clamped by the gathers, reading another slot without
      # a word; traced values (inside jit) cannot be checked here.
      values = np.asarray(logit_slots)
      outside = np.flatnonzero((values < 0) | (values >= tokens.shape[1]))
      if outside.size:
        row, column = np.unravel_index(outside[0], values.shape)
        raise ValueError(
            f"Transformer: `logit_slots` must lie in [0, {tokens.shape[1]}) (the row length); "
            f"{outside.size} do not, the first at [{row}, {column}]: {int(values[row, column])}.")

    offset = 0
    if decode:
      initialized = self.has_variable("cache", "num_tokens")
      num_tokens = self.variable(
          "cache", "num_tokens", jnp.zeros, (tokens.shape[0],), jnp.int32
      )
      offset = num_tokens.value
      if initialized:
        num_tokens.value = offset + jnp.sum(attention_mask, axis=1, dtype=jnp.int32)
    documents = None
    if document_slots is not None:  # (slots of each document, place of each slot): once for all blocks
      document_slots = jnp.asarray(document_slots, jnp.int32)
      documents = (document_slots, document_places(document_slots, tokens.shape[1]))
    if positions is None:
      # Default: the index of each token in its document (place d * W + j -> j), or the
      # number of real tokens before it in its row.
      positions = (documents[1] % document_slots.shape[2] if documents is not None
                   else token_positions(attention_mask, offset))
    positions = jnp.asarray(positions, jnp.int32)
    if segment_ids is not None:
      segment_ids = jnp.asarray(segment_ids, jnp.int32)

    embed = nn.Embed(
        cfg.vocab_size,
        cfg.d_model,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype,
        # Unit-variance rows feed the first RMSNorm; tied rows are also the output
        # projection, scaled by 1/sqrt(D) so that the initial logits have unit scale.
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=cfg.d_model**-0.5 if cfg.tie_embeddings else 1.0),
            ("vocab", "embed"),
        ),
        name="embed",
    )
    x = embed(tokens)
    if cfg.position_embedding == "learned":
      # GPT-2: a learned [max_len, D] table, read at the same positions RoPE would use.
      x = x + nn.Embed(
          cfg.max_len, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
          embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                                      (None, "embed")),
          name="position_embed")(positions)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    block = Block
    if cfg.remat:
      # Recompute everything inside a block on the backward pass; under scan the CSE
      # barrier is unnecessary (the loop already prevents it) and costs speed.
      block = nn.remat(Block, prevent_cse=not cfg.scan_layers)
    slots = None if logit_slots is None else jnp.asarray(logit_slots, jnp.int32)
    # Read at a few slots, the last block needs keys and values everywhere but queries,
    # attention output and feed-forward only at those slots (under scan the blocks
    # share one shape, so there the output is gathered after the last block).
    # In a padding-free row the pruned queries read every slot's key (a mask over the
    # whole row), which only pays for a few slots (a reward model's read-outs).
    prune_last = (slots is not None and not decode and not cfg.scan_layers
                  and (documents is None or slots.shape[1] <= document_slots.shape[2]))
    if cfg.scan_layers:
      layers = nn.scan(
          block,
          variable_axes={"params": 0, "cache": 0},
          split_rngs={"params": True, "dropout": True},
          # The last input is the layer counter (LoRA dropout folds it into its masks).
          in_axes=(nn.broadcast,) * 5 + (0,),
          length=cfg.n_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, _ = layers(cfg, decode=decode, name="layers")(
          x, positions, attention_mask, segment_ids, documents, None, jnp.arange(cfg.n_layers, dtype=jnp.int32))
    else:
      for i in range(cfg.n_layers):
        last_slots = slots if prune_last and i == cfg.n_layers - 1 else None
        x, _ = block(cfg, decode=decode, name=f"layer_{i}")(
            x, positions, attention_mask, segment_ids, documents, last_slots, i)

    if slots is not None and not prune_last:
      # Gather before the final norm (per position) and the [D, V] projection.
      x = gather_slots(x, slots)
    hidden = norm(cfg, "final_norm")(x)
    if return_hidden:
      return hidden
    if cfg.tie_embeddings:
      logits = embed.attend(hidden)
    else:
      kernel = self.param(
          "lm_head",
          nn.with_logical_partitioning(
              nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
              ("embed", "vocab"),
          ),
          (cfg.d_model, cfg.vocab_size),
          cfg.params_dtype,
      )
      logits = project(hidden, kernel.astype(cfg.compute_dtype))
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))


def init_cache(model: nn.Module, batch_size: int, max_length: int | None = None):
  """An empty KV cache (all zeros) for `model` (a `Transformer`, `RewardModel` or
  `ValueModel`), for sequences of up to `max_length` tokens (default: `max_len`).

  Per attention layer: `key`, `value` [B, K, L, Dh] (heads-major, read in place by
  `layers.cached_attention`), `key_mask` [B, L], `index` (the next slot); per model
  `num_tokens` [B] (real tokens so far: the next token's position). Shapes come from
  `jax.eval_shape`, so no parameters are initialised.
  """
  config = model.config
  max_length = config.max_len if max_length is None else max_length
  if not 1 <= max_length <= config.max_len:
    raise ValueError(f"init_cache: max_length must lie in [1, {config.max_len}], got {max_length}.")
  tokens = jnp.zeros((batch_size, max_length), jnp.int32)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), tokens, jnp.ones(tokens.shape, bool), decode=True)
  )
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
