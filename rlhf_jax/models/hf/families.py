"""Model families: a Hugging Face `config.json` <-> `TransformerConfig`, and every tensor's
name, shape and layout change between a checkpoint and our parameter tree.

Supported `model_type`s: "llama" (Llama 2 and 3, SmolLM and other Llama-shaped models),
"mistral", "qwen2" (q/k/v biases) and "gpt2" (learned positions, LayerNorm, GELU, fused
Conv1D attention weights). Our parameter paths are tuples ("layer_0", "attention",
"query"); reward and value models put the backbone under "backbone".

Layouts. Hugging Face `nn.Linear` weights are [out, in]; our kernels are [in, out...]
with heads split out: query [D, H, Dh], key and value [D, K, Dh], out [H, Dh, D],
gate and up [D, F], down [F, D], lm_head [D, V]. GPT-2's `Conv1D` weights are already
[in, out], and its `c_attn` holds the query, key and value side by side ([D, 3D]:
columns [0, D), [D, 2D), [2D, 3D)). Both use the half-split RoPE convention of
`layers.apply_rope` (Hugging Face's `rotate_half`), so no row permutation is needed.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import numpy as np

from rlhf_jax.models.config import TransformerConfig

__all__ = ["CheckpointError", "Family", "FAMILIES", "KINDS", "Source", "family_for_config",
           "family_of_model_type", "head_name"]

KINDS = ("policy", "reward", "value")
Path = tuple[str, ...]


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as the model asked for (the message names the
  file, the tensor or the config field, and what was expected)."""


@dataclasses.dataclass(frozen=True)
class Source:
  """Where one of our parameters lives in a checkpoint, and how its layout changes.

  Attributes:
    name: tensor name in the checkpoint, without the base-model prefix when `base`.
    shape: the whole tensor's shape in the checkpoint.
    to_ours: the tensor (or its `columns`) -> our layout.
    to_hf: our layout -> the tensor (or its `columns`).
    columns: for fused tensors, the range [start, stop) of the last axis that holds this
      parameter (GPT-2's `c_attn`); None for a whole tensor.
    base: the tensor belongs to the base model ("model." / "transformer." prefix), not to
      a head (`lm_head`, `score`).
  """

  name: str
  shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  columns: tuple[int, int] | None = None
  base: bool = True


def _same(name: str, shape: tuple[int, ...]) -> Source:
  return Source(name, shape, lambda w: w, lambda a: a)


def _transposed(name: str, shape: tuple[int, int]) -> Source:
  """An [out, in] Linear weight <-> our [in, out] kernel."""
  return Source(name, shape, lambda w: w.T, lambda a: a.T)


def _split_heads_in(name: str, heads: int, head_dim: int, d_model: int) -> Source:
  """q/k/v_proj [N Dh, D] <-> our [D, N, Dh]."""
  return Source(name, (heads * head_dim, d_model),
                lambda w: w.T.reshape(d_model, heads, head_dim),
                lambda a: a.reshape(d_model, heads * head_dim).T)


def _split_bias(name: str, heads: int, head_dim: int, columns=None, shape=None) -> Source:
  """A [N Dh] bias <-> our [N, Dh]."""
  return Source(name, shape or (heads * head_dim,), lambda b: b.reshape(heads, head_dim),
                lambda a: a.reshape(heads * head_dim), columns)


def head_name(kind: str) -> str:
  return {"reward": "reward_head", "value": "value_head"}[kind]


class Family:
  """One `model_type`: its config translation and its tensor names."""

  model_type: str = ""
  base_prefix: str = ""            # the base model's tensor prefix, with its dot
  causal_lm: str = ""              # architecture name of the language model
  classifier: str = ""             # architecture name of the sequence classifier
  default_rope_theta: float = 10000.0
  # Tensors that are buffers, not parameters, in some checkpoints (the regexes match
  # names without the base prefix); they are skipped by name.
  ignored: tuple[str, ...] = ()

  def config(self, hf: dict[str, Any], where: str) -> dict[str, Any]:
    """TransformerConfig fields from a config.json dict (`where` names it in errors)."""
    raise NotImplementedError

  def hf_config(self, config: TransformerConfig) -> dict[str, Any]:
    """The config.json fields of the architecture (no architectures, dtype, token ids)."""
    raise NotImplementedError

  def check_writable(self, config: TransformerConfig) -> str | None:
    """Why `config` cannot be written as this family (None when it can)."""
    raise NotImplementedError

  def backbone_sources(self, config: TransformerConfig) -> dict[Path, Source]:
    raise NotImplementedError

  def sources(self, config: TransformerConfig, kind: str, num_labels: int = 1) -> dict[Path, Source]:
    """Our parameter path -> its source, for a model of `kind` (backbone and output)."""
    backbone = self.backbone_sources(config)
    if kind == "policy":
      sources = dict(backbone)
      if not config.tie_embeddings:
        sources[("lm_head",)] = dataclasses.replace(
            _transposed("lm_head.weight", (config.vocab_size, config.d_model)), base=False)
      return sources
    sources = {("backbone",) + path: source for path, source in backbone.items()}
    sources[(head_name(kind), "kernel")] = dataclasses.replace(
        _transposed("score.weight", (num_labels, config.d_model)), base=False)
    return sources

  def is_ignored(self, name: str) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in self.ignored)


def _get(hf: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
  if key in hf and hf[key] is not None:
    return hf[key]
  if default is ...:
    raise CheckpointError(f"{where}: config field {key!r} is missing.")
  return default


def _rope_fields(hf: dict[str, Any], where: str, default_theta: float) -> dict[str, Any]:
  """rope_theta and scaling from either spelling: transformers 5's `rope_parameters`
  or the older top-level `rope_theta` with a `rope_scaling` dict."""
  parameters = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or parameters
  theta = parameters.get("rope_theta", hf.get("rope_theta", default_theta))
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  partial = parameters.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    raise CheckpointError(f"{where}: partial_rotary_factor {partial} is not supported (only 1.0).")
  fields: dict[str, Any] = {"rope_theta": float(theta)}
  if rope_type == "default":
    return fields
  if rope_type not in ("linear", "llama3"):
    raise CheckpointError(
        f"{where}: rope scaling type {rope_type!r} is not supported; supported: 'default', "
        "'linear', 'llama3'.")
  factor = scaling.get("factor")
  if factor is None:
    raise CheckpointError(f"{where}: rope scaling {rope_type!r} needs a 'factor'.")
  fields.update(rope_scaling=rope_type, rope_scaling_factor=float(factor))
  if rope_type == "llama3":
    for key, field in (("low_freq_factor", "rope_low_freq_factor"),
                       ("high_freq_factor", "rope_high_freq_factor"),
                       ("original_max_position_embeddings", "rope_original_max_len")):
      if scaling.get(key) is None:
        raise CheckpointError(f"{where}: llama3 rope scaling needs {key!r}.")
      fields[field] = int(scaling[key]) if field == "rope_original_max_len" else float(scaling[key])
  return fields


def _hf_rope(config: TransformerConfig) -> dict[str, Any]:
  """rope_theta and rope_scaling in the older spelling, which transformers 4 and 5 read."""
  out: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_scaling": None}
  if config.rope_scaling == "linear":
    out["rope_scaling"] = {"rope_type": "linear", "type": "linear", "factor": config.rope_scaling_factor}
  elif config.rope_scaling == "llama3":
    out["rope_scaling"] = {
        "rope_type": "llama3", "factor": config.rope_scaling_factor,
        "low_freq_factor": config.rope_low_freq_factor,
        "high_freq_factor": config.rope_high_freq_factor,
        "original_max_position_embeddings": config.rope_original_max_len}
  return out


_ACTIVATIONS_IN = {"silu": "silu", "swish": "silu", "gelu_new": "gelu_tanh",
                   "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def _activation(name: str, where: str, key: str) -> str:
  if name not in _ACTIVATIONS_IN:
    raise CheckpointError(f"{where}: {key} {name!r} is not supported; supported: "
                          f"{', '.join(sorted(_ACTIVATIONS_IN))}.")
  return _ACTIVATIONS_IN[name]


class LlamaFamily(Family):
  """Llama, and the families that share its tensor names (Mistral, Qwen2)."""

  model_type = "llama"
  base_prefix = "model."
  causal_lm = "LlamaForCausalLM"
  classifier = "LlamaForSequenceClassification"
  ignored = (r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)
  # Which projections carry biases: from config.json, or fixed by the family.
  qkv_bias_key: str | None = "attention_bias"
  out_bias_key: str | None = "attention_bias"
  mlp_bias_key: str | None = "mlp_bias"

  def config(self, hf, where):
    d_model = int(_get(hf, "hidden_size", where))
    heads = int(_get(hf, "num_attention_heads", where))
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * heads != d_model:
      raise CheckpointError(
          f"{where}: head_dim {head_dim} x num_attention_heads {heads} != hidden_size {d_model}; "
          "only head_dim = hidden_size / num_attention_heads is supported.")
    max_len = int(_get(hf, "max_position_embeddings", where))
    window = hf.get("sliding_window")
    if window is not None and hf.get("use_sliding_window", True) and window < max_len:
      # Sequences no longer than the window attend exactly as full causal attention
      # does; longer ones are refused (the max_len check) rather than computed wrongly.
      max_len = int(window)
    fields = dict(
        vocab_size=int(_get(hf, "vocab_size", where)), d_model=d_model,
        n_layers=int(_get(hf, "num_hidden_layers", where)), n_heads=heads,
        n_kv_heads=int(_get(hf, "num_key_value_heads", where, heads)),
        d_ff=int(_get(hf, "intermediate_size", where)), max_len=max_len,
        norm_eps=float(_get(hf, "rms_norm_eps", where)),
        tie_embeddings=bool(_get(hf, "tie_word_embeddings", where, False)),
        activation=_activation(_get(hf, "hidden_act", where, "silu"), where, "hidden_act"),
        **_rope_fields(hf, where, self.default_rope_theta))
    fields.update(self._biases(hf, where))
    return fields

  def _biases(self, hf, where):
    return dict(attention_qkv_bias=bool(hf.get(self.qkv_bias_key) or False),
                attention_out_bias=bool(hf.get(self.out_bias_key) or False),
                mlp_bias=bool(hf.get(self.mlp_bias_key) or False))

  def check_writable(self, config):
    if (config.norm, config.gated_mlp, config.position_embedding) != ("rms", True, "rope"):
      return "needs RMSNorm, a gated MLP and rotary positions"
    if config.attention_qkv_bias != config.attention_out_bias:
      return "Llama's attention_bias puts biases on all four attention projections or none"
    return None

  def hf_config(self, config):
    return dict(
        model_type=self.model_type, vocab_size=config.vocab_size, hidden_size=config.d_model,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim,
        intermediate_size=config.d_ff, max_position_embeddings=config.max_len,
        rms_norm_eps=config.norm_eps, tie_word_embeddings=config.tie_embeddings,
        hidden_act=config.activation if config.activation != "gelu_tanh" else "gelu_pytorch_tanh",
        attention_bias=config.attention_qkv_bias, mlp_bias=config.mlp_bias,
        **_hf_rope(config))

  def backbone_sources(self, config):
    d, h, k, dh, f = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff
    sources: dict[Path, Source] = {
        ("embed", "embedding"): _same("embed_tokens.weight", (config.vocab_size, d)),
        ("final_norm", "scale"): _same("norm.weight", (d,)),
    }
    for i in range(config.n_layers):
      layer, p = f"layer_{i}", f"layers.{i}."
      sources.update({
          (layer, "attention_norm", "scale"): _same(p + "input_layernorm.weight", (d,)),
          (layer, "mlp_norm", "scale"): _same(p + "post_attention_layernorm.weight", (d,)),
          (layer, "attention", "query"): _split_heads_in(p + "self_attn.q_proj.weight", h, dh, d),
          (layer, "attention", "key"): _split_heads_in(p + "self_attn.k_proj.weight", k, dh, d),
          (layer, "attention", "value"): _split_heads_in(p + "self_attn.v_proj.weight", k, dh, d),
          (layer, "attention", "out"): Source(
              p + "self_attn.o_proj.weight", (d, h * dh), lambda w: w.T.reshape(h, dh, d),
              lambda a: a.reshape(h * dh, d).T),
          (layer, "mlp", "gate"): _transposed(p + "mlp.gate_proj.weight", (f, d)),
          (layer, "mlp", "up"): _transposed(p + "mlp.up_proj.weight", (f, d)),
          (layer, "mlp", "down"): _transposed(p + "mlp.down_proj.weight", (d, f)),
      })
      if config.attention_qkv_bias:
        sources.update({
            (layer, "attention", "query_bias"): _split_bias(p + "self_attn.q_proj.bias", h, dh),
            (layer, "attention", "key_bias"): _split_bias(p + "self_attn.k_proj.bias", k, dh),
            (layer, "attention", "value_bias"): _split_bias(p + "self_attn.v_proj.bias", k, dh),
        })
      if config.attention_out_bias:
        sources[(layer, "attention_out_bias")] = _same(p + "self_attn.o_proj.bias", (d,))
      if config.mlp_bias:
        sources.update({
            (layer, "mlp", "gate_bias"): _same(p + "mlp.gate_proj.bias", (f,)),
            (layer, "mlp", "up_bias"): _same(p + "mlp.up_proj.bias", (f,)),
            (layer, "mlp", "down_bias"): _same(p + "mlp.down_proj.bias", (d,)),
        })
    return sources


class MistralFamily(LlamaFamily):
  model_type = "mistral"
  causal_lm = "MistralForCausalLM"
  classifier = "MistralForSequenceClassification"
  qkv_bias_key = out_bias_key = mlp_bias_key = None

  def check_writable(self, config):
    if config.attention_qkv_bias or config.attention_out_bias or config.mlp_bias:
      return "Mistral has no biases"
    return super().check_writable(config)

  def hf_config(self, config):
    out = super().hf_config(config)
    for key in ("attention_bias", "mlp_bias"):
      del out[key]
    return {**out, "sliding_window": None}


class Qwen2Family(LlamaFamily):
  model_type = "qwen2"
  causal_lm = "Qwen2ForCausalLM"
  classifier = "Qwen2ForSequenceClassification"
  qkv_bias_key = out_bias_key = mlp_bias_key = None

  def _biases(self, hf, where):
    return dict(attention_qkv_bias=True, attention_out_bias=False, mlp_bias=False)

  def check_writable(self, config):
    if (config.norm, config.gated_mlp, config.position_embedding) != ("rms", True, "rope"):
      return "needs RMSNorm, a gated MLP and rotary positions"
    if not config.attention_qkv_bias or config.attention_out_bias or config.mlp_bias:
      return "Qwen2 has q/k/v biases and no others"
    return None

  def hf_config(self, config):
    out = super().hf_config(config)
    for key in ("attention_bias", "mlp_bias", "head_dim"):
      del out[key]
    return {**out, "use_sliding_window": False, "sliding_window": None}


class GPT2Family(Family):
  model_type = "gpt2"
  base_prefix = "transformer."
  causal_lm = "GPT2LMHeadModel"
  classifier = "GPT2ForSequenceClassification"
  # The causal-mask buffers of older GPT-2 checkpoints.
  ignored = (r"h\.\d+\.attn\.(masked_)?bias",)

  def config(self, hf, where):
    d_model = int(_get(hf, "n_embd", where))
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
      if bool(hf.get(key, want)) != want:
        raise CheckpointError(f"{where}: {key}={hf[key]!r} is not supported (only {want}).")
    heads = int(_get(hf, "n_head", where))
    return dict(
        vocab_size=int(_get(hf, "vocab_size", where)), d_model=d_model,
        n_layers=int(_get(hf, "n_layer", where)), n_heads=heads, n_kv_heads=heads,
        d_ff=int(_get(hf, "n_inner", where, 4 * d_model)), max_len=int(_get(hf, "n_positions", where)),
        norm_eps=float(_get(hf, "layer_norm_epsilon", where)),
        tie_embeddings=bool(_get(hf, "tie_word_embeddings", where, True)),
        norm="layer", gated_mlp=False, position_embedding="learned",
        activation=_activation(_get(hf, "activation_function", where, "gelu_new"), where,
                               "activation_function"),
        attention_qkv_bias=True, attention_out_bias=True, mlp_bias=True)

  def check_writable(self, config):
    want = dict(norm="layer", gated_mlp=False, position_embedding="learned", attention_qkv_bias=True,
                attention_out_bias=True, mlp_bias=True, n_kv_heads=config.n_heads)
    wrong = [f"{key}={getattr(config, key)!r} (needs {value!r})" for key, value in want.items()
             if getattr(config, key) != value]
    return "; ".join(wrong) or None

  def hf_config(self, config):
    activation = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}[config.activation]
    return dict(
        model_type="gpt2", vocab_size=config.vocab_size, n_embd=config.d_model,
        n_layer=config.n_layers, n_head=config.n_heads, n_inner=config.d_ff,
        n_positions=config.max_len, layer_norm_epsilon=config.norm_eps,
        activation_function=activation, tie_word_embeddings=config.tie_embeddings,
        scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        summary_first_dropout=0.0)

  def backbone_sources(self, config):
    d, h, dh, f = config.d_model, config.n_heads, config.head_dim, config.d_ff
    sources: dict[Path, Source] = {
        ("embed", "embedding"): _same("wte.weight", (config.vocab_size, d)),
        ("position_embed", "embedding"): _same("wpe.weight", (config.max_len, d)),
        ("final_norm", "scale"): _same("ln_f.weight", (d,)),
        ("final_norm", "bias"): _same("ln_f.bias", (d,)),
    }
    for i in range(config.n_layers):
      layer, p = f"layer_{i}", f"h.{i}."
      fused = p + "attn.c_attn.weight"
      for index, name in enumerate(("query", "key", "value")):
        columns = (index * d, (index + 1) * d)
        sources[(layer, "attention", name)] = Source(
            fused, (d, 3 * d), lambda w: w.reshape(d, h, dh), lambda a: a.reshape(d, d), columns)
        sources[(layer, "attention", f"{name}_bias")] = _split_bias(
            p + "attn.c_attn.bias", h, dh, columns, (3 * d,))
      sources.update({
          (layer, "attention", "out"): Source(
              p + "attn.c_proj.weight", (d, d), lambda w: w.reshape(h, dh, d), lambda a: a.reshape(d, d)),
          (layer, "attention_out_bias"): _same(p + "attn.c_proj.bias", (d,)),
          (layer, "attention_norm", "scale"): _same(p + "ln_1.weight", (d,)),
          (layer, "attention_norm", "bias"): _same(p + "ln_1.bias", (d,)),
          (layer, "mlp_norm", "scale"): _same(p + "ln_2.weight", (d,)),
          (layer, "mlp_norm", "bias"): _same(p + "ln_2.bias", (d,)),
          (layer, "mlp", "up"): _same(p + "mlp.c_fc.weight", (d, f)),
          (layer, "mlp", "up_bias"): _same(p + "mlp.c_fc.bias", (f,)),
          (layer, "mlp", "down"): _same(p + "mlp.c_proj.weight", (f, d)),
          (layer, "mlp", "down_bias"): _same(p + "mlp.c_proj.bias", (d,)),
      })
    return sources


FAMILIES: dict[str, Family] = {
    family.model_type: family for family in (LlamaFamily(), MistralFamily(), Qwen2Family(), GPT2Family())}


def family_of_model_type(model_type: Any, where: str) -> Family:
  if model_type not in FAMILIES:
    raise CheckpointError(
        f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}.")
  return FAMILIES[model_type]


def family_for_config(config: TransformerConfig, model_type: str | None = None) -> Family:
  """The family a `TransformerConfig` is written as: `model_type` if given, else GPT-2 for
  learned positions, Qwen2 for q/k/v biases without an output bias, else Llama."""
  if model_type is None:
    if config.position_embedding == "learned":
      model_type = "gpt2"
    elif config.attention_qkv_bias and not config.attention_out_bias and not config.mlp_bias:
      model_type = "qwen2"
    else:
      model_type = "llama"
  family = family_of_model_type(model_type, "save")
  reason = family.check_writable(config)
  if reason is not None:
    raise CheckpointError(f"save: this model cannot be written as model_type {model_type!r}: {reason}.")
  return family
