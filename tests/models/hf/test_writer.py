"""Writing our models as Hugging Face checkpoints (`models/hf/writer.py`): save -> load is
exact, shards and scanned layers, and what cannot be written is refused. The
comparisons against transformers itself are in tests/models/test_hf_transformers.py."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from rlhf_jax import hf

from hf_testlib import assert_logits_match, expected, FIXTURES


@pytest.mark.parametrize("name, kind", [("llama3_gqa_tied", "policy"), ("gpt2", "policy"),
                                        ("qwen2", "policy"), ("llama_linear_bias", "policy"),
                                        ("gpt2_reward", "reward")])
def test_save_then_load_is_exact(tmp_path, name, kind):
  """Our writer's files read back to the same parameters, and to the same tensors as
  the original checkpoint (names, shapes and values)."""
  model, params = hf.load(FIXTURES / name, kind=kind)
  hf.save(tmp_path, model, params, pad_token_id=0 if kind == "reward" else None)
  again_model, again = hf.load(tmp_path, kind=kind)
  assert again_model.config == model.config
  jax.tree.map(np.testing.assert_array_equal, params, again)
  original = load_file(FIXTURES / name / "model.safetensors")
  written = load_file(tmp_path / "model.safetensors")
  assert set(written) == set(original)
  for key in original:
    np.testing.assert_array_equal(written[key], original[key], err_msg=key)
  written_config = json.loads((tmp_path / "config.json").read_text())
  assert written_config["architectures"] == json.loads(
      (FIXTURES / name / "config.json").read_text())["architectures"]


def test_save_shards_and_scanned_layers(tmp_path):
  model, params = hf.load(FIXTURES / "mistral", scan_layers=True)
  hf.save(tmp_path, model, params, max_shard_bytes=20_000, model_type="mistral")
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mistral"
  again_model, again = hf.load(tmp_path)
  assert not again_model.config.scan_layers
  assert_logits_match(again_model, again, expected("mistral"))


def test_save_refusals(tmp_path):
  model, params = hf.load(FIXTURES / "llama_reward", kind="reward")
  with pytest.raises(ValueError, match="needs pad_token_id"):
    hf.save(tmp_path, model, params)
  with pytest.raises(ValueError, match="is the eos id"):
    hf.save(tmp_path, model, params, pad_token_id=2, tokenizer=hf.load_tokenizer(FIXTURES / "tokenizer"))
  shifted = jax.tree.map(lambda x: x, params)
  shifted["reward_head"]["bias"] = shifted["reward_head"]["bias"] + 0.5
  with pytest.raises(ValueError, match="nonzero bias"):
    hf.save(tmp_path, model, shifted, pad_token_id=0)
  hf.save(tmp_path, model, shifted, pad_token_id=0, drop_head_bias=True)
  gpt2, gpt2_params = hf.load(FIXTURES / "gpt2")
  with pytest.raises(hf.CheckpointError, match="cannot be written as model_type 'llama'"):
    hf.save(tmp_path, gpt2, gpt2_params, model_type="llama")
  with pytest.raises(hf.CheckpointError, match="model_type 'gptj' is not supported"):
    hf.save(tmp_path, gpt2, gpt2_params, model_type="gptj")
