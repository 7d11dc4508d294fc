"""Flax models: a Llama-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention)
with language-model, reward (K-head ensembles) and value heads, named presets from `tiny`
to 7B, logical axis names on every parameter and the default sharding rules, and a
jitted KV-cache sampler (`generate`), and low-rank adapters (`lora`; Hu et al. 2021).

    config = get_preset("tiny")
    model = Transformer(config)
    params = model.init(key, tokens, attention_mask)["params"]     # boxed: nn.unbox(...)
    logits = model.apply({"params": params}, tokens, attention_mask)
    samples = generate(model, params, prompts, prompt_mask, key,
                       SamplingConfig(max_new_tokens=32, temperature=0.7, eos_id=2))
"""

from rlhf_jax.models import lora
from rlhf_jax.models.config import DTYPES, LORA_TARGETS, PRESETS, TransformerConfig, get_preset
from rlhf_jax.models.generate import SamplingConfig, Samples, generate, sample, sampling_logprobs
from rlhf_jax.models.heads import RewardModel, ValueModel, last_token_index
from rlhf_jax.models.layers import AXIS_NAMES, apply_rope
from rlhf_jax.models.sharding import abstract_params, logical_axis_rules, param_count
from rlhf_jax.models.transformer import Transformer, init_cache, token_positions

__all__ = [
    "AXIS_NAMES",
    "DTYPES",
    "LORA_TARGETS",
    "PRESETS",
    "RewardModel",
    "SamplingConfig",
    "Samples",
    "Transformer",
    "TransformerConfig",
    "ValueModel",
    "abstract_params",
    "apply_rope",
    "generate",
    "get_preset",
    "init_cache",
    "last_token_index",
    "lora",
    "logical_axis_rules",
    "param_count",
    "sample",
    "sampling_logprobs",
    "token_positions",
]
