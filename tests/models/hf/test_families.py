"""Model families (`models/hf/families.py`): our configs read from a checkpoint's
config.json, and the architectures and rope scalings that are not supported named."""

import pytest

from rlhf_jax import hf

from hf_testlib import copy_fixture, edit_config, FIXTURES


def test_configs_read_from_config_json():
  """The architecture options each fixture was made with (make_hf_fixtures.py) arrive in
  our config; a wrong one would also show in the logits above."""
  config = lambda name: hf.model_for(FIXTURES / name).config
  assert config("llama3_gqa_tied").n_kv_heads == 2 and config("llama3_gqa_tied").tie_embeddings
  assert (config("llama3_gqa_tied").rope_scaling, config("llama3_gqa_tied").rope_scaling_factor,
          config("llama3_gqa_tied").rope_original_max_len) == ("llama3", 8.0, 64)
  assert (config("llama_linear_bias").rope_scaling, config("llama_linear_bias").rope_theta) == ("linear", 500.0)
  assert config("llama_linear_bias").attention_qkv_bias and config("llama_linear_bias").mlp_bias
  qwen = config("qwen2")
  assert (qwen.attention_qkv_bias, qwen.attention_out_bias, qwen.norm_eps) == (True, False, 1e-6)
  gpt2 = config("gpt2")
  assert (gpt2.norm, gpt2.activation, gpt2.gated_mlp, gpt2.position_embedding, gpt2.d_ff) == (
      "layer", "gelu_tanh", False, "learned", 128)


def test_unsupported_model_type(tmp_path):
  directory = copy_fixture("llama", tmp_path)
  edit_config(directory, model_type="falcon")
  with pytest.raises(hf.CheckpointError, match=r"config.*model_type 'falcon' is not supported; "
                                               r"supported: llama, mistral, qwen2, gpt2"):
    hf.load(directory)


def test_unsupported_rope_scaling(tmp_path):
  directory = copy_fixture("llama", tmp_path)
  edit_config(directory, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
  with pytest.raises(hf.CheckpointError, match="rope scaling type 'yarn' is not supported"):
    hf.load(directory)
