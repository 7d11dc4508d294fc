"""Transformer configuration and named presets, from a CPU-sized `tiny` to Llama-2-7B shapes.

A config is a frozen (hashable) dataclass, so it can be a field of a Flax module and a
static argument of `jax.jit`. Dtypes are strings ("float32", "bfloat16") so that a config
round-trips through ml-collections and JSON run directories.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "DTYPES", "LORA_TARGETS", "NORMS", "POSITION_EMBEDDINGS", "PRESETS", "ROPE_SCALINGS",
           "TransformerConfig", "get_preset"]

DTYPES = ("float32", "bfloat16")
# Architecture variants beyond the Llama default, for pretrained checkpoints (`models.hf`).
NORMS = ("rms", "layer")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu", "relu")
POSITION_EMBEDDINGS = ("rope", "learned")
ROPE_SCALINGS = ("none", "linear", "llama3")
# Projections LoRA adapters can be put on (`rlhf_jax.models.lora`): the attention's
# query, key, value and output, the feed-forward's gate, up and down.
LORA_TARGETS = ("query", "key", "value", "out", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and numerics of a decoder-only transformer (Llama-style).

  Attributes:
    vocab_size: number of token ids; the embedding and output layer have this many rows.
    d_model: width of the residual stream.
    n_layers: number of transformer blocks.
    n_heads: number of query heads; `d_model` must be divisible by it.
    n_kv_heads: number of key/value heads; grouped-query attention (Ainslie et al.
      2023, arXiv 2305.13245) when smaller than `n_heads`, which it must divide.
    d_ff: hidden width of the feed-forward layer.
    max_len: longest sequence the model accepts (a trace-time check, and the default
      KV-cache length).
    rope_theta: base of the rotary position frequencies (Su et al. 2021).
    norm_eps: epsilon inside the normalisation's square root.
    dtype: compute dtype, "float32" or "bfloat16". Logits and head outputs are always
      float32; normalisation and softmax run in float32 whatever this is.
    param_dtype: storage dtype of the parameters ("float32" keeps master weights exact
      while computing in bfloat16).
    remat: recompute each block's activations in the backward pass (`nn.remat`),
      trading about one extra forward for activation memory linear in depth.
    tie_embeddings: share the input embedding with the output projection.
    scan_layers: run the blocks with `nn.scan` over stacked parameters (leading
      "layers" axis): compile time independent of depth, which matters for 7B plans.

  Architecture variants (the defaults are the Llama architecture above; the others let
  pretrained GPT-2 and Qwen2 checkpoints load, see `rlhf_jax.models.hf`):
    norm: "rms" (RMSNorm, a `scale`) or "layer" (LayerNorm, Ba et al. 2016, a `scale`
      and a `bias`), with epsilon `norm_eps` in both.
    activation: nonlinearity of the feed-forward layer: "silu", "gelu_tanh" (the tanh
      approximation of GELU, GPT-2's "gelu_new"), "gelu" (exact, erf) or "relu".
    gated_mlp: `act(x W_gate) * (x W_up)` then `W_down` (GLU family, SwiGLU with
      "silu"; Shazeer 2020) when true, else `act(x W_up) W_down` (GPT-2).
    position_embedding: "rope" (rotary, in every attention layer) or "learned" (a
      [max_len, D] table added to the token embeddings, GPT-2; no rotation).
    attention_qkv_bias: biases on the query, key and value projections (Qwen2, GPT-2).
    attention_out_bias: a bias on the attention output projection (GPT-2).
    mlp_bias: biases on the feed-forward projections (GPT-2).
    rope_scaling: how the rotary frequencies are stretched for long contexts: "none",
      "linear" (every frequency divided by `rope_scaling_factor`, i.e. positions
      interpolated; Chen et al. 2023, arXiv 2306.15595) or "llama3" (low frequencies
      divided by the factor, high ones kept, a smooth ramp between, as in Llama 3.1;
      Grattafiori et al. 2024, arXiv 2407.21783), with `rope_low_freq_factor`,
      `rope_high_freq_factor` and `rope_original_max_len` (the pretraining context).

  Low-rank adapters (LoRA; Hu et al. 2021, arXiv 2106.09685; `rlhf_jax.models.lora`):
    lora_rank: r > 0 puts an adapter on every projection of `lora_targets`,
      `y = x W + (lora_alpha / r) * dropout(x) A B` with A [in, r] and B [r, out]
      (B starts at zero, so the adapted model starts as the base); 0 (default) is off.
    lora_alpha: the numerator of the adapters' scale alpha / r.
    lora_dropout: dropout rate on the adapters' input, applied only when the caller
      passes a "dropout" PRNG key (`apply(..., rngs={"dropout": key})`, training).
    lora_targets: names of the adapted projections, a subset of `LORA_TARGETS` (a
      comma-separated string is accepted).
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  max_len: int
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  tie_embeddings: bool = False
  scan_layers: bool = False
  norm: str = "rms"
  activation: str = "silu"
  gated_mlp: bool = True
  position_embedding: str = "rope"
  attention_qkv_bias: bool = False
  attention_out_bias: bool = False
  mlp_bias: bool = False
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  lora_targets: tuple[str, ...] = ("query", "value")

  def __post_init__(self):
    targets = self.lora_targets
    if isinstance(targets, str):
      targets = [t.strip() for t in targets.split(",") if t.strip()]
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
      raise ValueError(f"TransformerConfig.lora_targets must be names of projections, got {targets!r}.")
    # A canonical tuple (a list from JSON would make the config unhashable).
    object.__setattr__(self, "lora_targets", tuple(targets))
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_len"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}.")
    if self.d_model % self.n_heads:
      raise ValueError(
          f"TransformerConfig.d_model ({self.d_model}) must be divisible by n_heads "
          f"({self.n_heads})."
      )
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"TransformerConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
          f"({self.n_kv_heads}) for grouped-query attention."
      )
    if self.head_dim % 2 and self.position_embedding == "rope":
      raise ValueError(
          f"rotary embeddings need an even head dimension; d_model / n_heads = {self.head_dim}."
      )
    for name in ("rope_theta", "norm_eps"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"TransformerConfig.{name} must be a positive number, got {value!r}.")
    for name in ("dtype", "param_dtype"):
      value = getattr(self, name)
      if value not in DTYPES:
        raise ValueError(
            f"TransformerConfig.{name} must be one of {', '.join(map(repr, DTYPES))}; got {value!r}."
        )
    for name in ("remat", "tie_embeddings", "scan_layers", "gated_mlp", "attention_qkv_bias",
                 "attention_out_bias", "mlp_bias"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"TransformerConfig.{name} must be a bool, got {getattr(self, name)!r}.")
    for name, valid in (("norm", NORMS), ("activation", ACTIVATIONS),
                        ("position_embedding", POSITION_EMBEDDINGS), ("rope_scaling", ROPE_SCALINGS)):
      if getattr(self, name) not in valid:
        raise ValueError(f"TransformerConfig.{name} must be one of {', '.join(map(repr, valid))}; "
                         f"got {getattr(self, name)!r}.")
    for name in ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"TransformerConfig.{name} must be a positive number, got {value!r}.")
    if self.rope_scaling == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
      raise ValueError(
          f"TransformerConfig.rope_high_freq_factor ({self.rope_high_freq_factor}) must exceed "
          f"rope_low_freq_factor ({self.rope_low_freq_factor}) for llama3 rope scaling.")
    value = self.rope_original_max_len
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"TransformerConfig.rope_original_max_len must be a positive int, got {value!r}.")
    if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
      raise ValueError(f"TransformerConfig.lora_rank must be an int >= 0 (0: no adapters), got {self.lora_rank!r}.")
    if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
      raise ValueError(f"TransformerConfig.lora_alpha must be a positive number, got {self.lora_alpha!r}.")
    if (isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float))
        or not 0 <= self.lora_dropout < 1):
      raise ValueError(f"TransformerConfig.lora_dropout must lie in [0, 1), got {self.lora_dropout!r}.")
    unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
    if unknown:
      raise ValueError(f"TransformerConfig.lora_targets: unknown projection(s) {unknown}; valid: "
                       f"{', '.join(LORA_TARGETS)}.")
    if self.lora_rank and not self.lora_targets:
      raise ValueError("TransformerConfig.lora_targets is empty while lora_rank > 0; name the adapted "
                       f"projections ({', '.join(LORA_TARGETS)}).")
    if self.lora_rank and "gate" in self.lora_targets and not self.gated_mlp:
      raise ValueError("TransformerConfig.lora_targets names 'gate', but the model has no gated MLP.")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def replace(self, **overrides: Any) -> "TransformerConfig":
    """A copy with some fields changed; unknown field names raise, listing the valid ones."""
    _check_fields(overrides)
    return dataclasses.replace(self, **overrides)


_PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests and the demo: a few hundred thousand parameters, GQA exercised.
    "tiny": dict(
        vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_len=128
    ),
    # MobileLLM-125M (Liu et al. 2024, arXiv 2402.14905): deep and thin, GQA, tied
    # embeddings; 124.6M parameters with a 32k vocabulary.
    "125m": dict(
        vocab_size=32000, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
        max_len=2048, norm_eps=1e-5, dtype="bfloat16", tie_embeddings=True,
    ),
    # TinyLlama-1.1B (Zhang et al. 2024, arXiv 2401.02385): Llama-2 architecture, GQA.
    "1b": dict(
        vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, d_ff=5632,
        max_len=2048, norm_eps=1e-5, dtype="bfloat16",
    ),
    # Llama 2 7B (Touvron et al. 2023, arXiv 2307.09288): 6.74B parameters.
    "7b": dict(
        vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008,
        max_len=4096, norm_eps=1e-5, dtype="bfloat16", remat=True, scan_layers=True,
    ),
}

PRESETS: tuple[str, ...] = tuple(_PRESETS)


def _check_fields(overrides: dict[str, Any]) -> None:
  valid = [f.name for f in dataclasses.fields(TransformerConfig)]
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(
        f"unknown TransformerConfig field(s) {', '.join(map(repr, unknown))}; valid fields: "
        f"{', '.join(valid)}."
    )


def get_preset(name: str, **overrides: Any) -> TransformerConfig:
  """The named preset ("tiny", "125m", "1b", "7b") with some fields overridden.

  >>> get_preset("tiny", dtype="bfloat16").d_model
  64
  """
  if name not in _PRESETS:
    raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}.")
  _check_fields(overrides)
  return TransformerConfig(**{**_PRESETS[name], **overrides})
