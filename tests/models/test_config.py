"""Model configs: presets with overrides, derived sizes, hashable frozen values, and a
one-line error naming the field for every invalid setting."""

import dataclasses

import jax.numpy as jnp
import pytest

from rlhf_jax.models import config as config_lib


def test_presets_and_overrides():
  tiny = config_lib.get_preset("tiny")
  assert (tiny.d_model, tiny.n_heads, tiny.head_dim) == (64, 4, 16)
  assert config_lib.PRESETS == ("tiny", "125m", "1b", "7b")
  half = config_lib.get_preset("tiny", dtype="bfloat16", n_layers=3)
  assert (half.compute_dtype, half.params_dtype, half.n_layers) == (jnp.bfloat16, jnp.float32, 3)
  assert half.replace(n_layers=2) == config_lib.get_preset("tiny", dtype="bfloat16")
  # Frozen and hashable: a field of a Flax module, a key of a cache.
  assert len({tiny, config_lib.get_preset("tiny"), half}) == 2
  with pytest.raises(dataclasses.FrozenInstanceError):
    tiny.d_model = 32  # type: ignore[misc]
  seven = config_lib.get_preset("7b")
  assert seven.remat and seven.scan_layers and seven.head_dim == 128


def test_unknown_presets_and_fields_list_the_valid_ones():
  with pytest.raises(ValueError, match="unknown model preset '3b'; valid presets: tiny, 125m, 1b, 7b"):
    config_lib.get_preset("3b")
  with pytest.raises(ValueError, match="unknown TransformerConfig field\\(s\\) 'layers'; valid fields: vocab_size"):
    config_lib.get_preset("tiny", layers=3)
  with pytest.raises(ValueError, match="unknown TransformerConfig field\\(s\\) 'width'"):
    config_lib.get_preset("tiny").replace(width=3)


@pytest.mark.parametrize("overrides, message", [
    (dict(d_model=0), "d_model must be a positive int, got 0"),
    (dict(n_layers=True), "n_layers must be a positive int, got True"),
    (dict(d_model=66), r"d_model \(66\) must be divisible by n_heads \(4\)"),
    (dict(n_kv_heads=3), r"n_heads \(4\) must be a multiple of n_kv_heads \(3\)"),
    (dict(d_model=36, n_heads=4, n_kv_heads=4), "rotary embeddings need an even head dimension; .* = 9"),
    (dict(norm_eps=0.0), "norm_eps must be a positive number"),
    (dict(dtype="float16"), "dtype must be one of 'float32', 'bfloat16'; got 'float16'"),
    (dict(remat=1), "remat must be a bool, got 1"),
    (dict(activation="swish"), "activation must be one of 'silu'"),
    (dict(rope_scaling="llama3", rope_low_freq_factor=4.0, rope_high_freq_factor=4.0),
     "rope_high_freq_factor \\(4.0\\) must exceed rope_low_freq_factor \\(4.0\\)"),
    (dict(rope_original_max_len=0), "rope_original_max_len must be a positive int"),
])
def test_invalid_settings_name_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.get_preset("tiny", **overrides)


def test_learned_positions_allow_an_odd_head_dimension():
  config = config_lib.get_preset("tiny", d_model=36, n_heads=4, n_kv_heads=4, position_embedding="learned")
  assert config.head_dim == 9
