"""Safetensors checkpoints (`models/hf/checkpoint.py`): a truncated file, a broken shard
index and a folder that is not a checkpoint are named."""

import pytest

from rlhf_jax import hf

from hf_testlib import assert_logits_match, copy_fixture, expected, FIXTURES


def test_truncated_file_is_named(tmp_path):
  directory = copy_fixture("llama", tmp_path)
  path = directory / "model.safetensors"
  path.write_bytes(path.read_bytes()[:-1000])
  with pytest.raises(hf.CheckpointError, match=r"model.safetensors: not a readable safetensors file \(truncated"):
    hf.load(directory)


def test_sharded_checkpoint_errors(tmp_path):
  directory = copy_fixture("mistral", tmp_path)
  model, params = hf.load(directory)  # three shards and an index
  assert_logits_match(model, params, expected("mistral"))
  (directory / "model-00002-of-00003.safetensors").unlink()
  with pytest.raises(hf.CheckpointError, match="lists model-00002-of-00003.safetensors, which does not exist"):
    hf.load(directory)
  (directory / "model.safetensors.index.json").unlink()
  with pytest.raises(hf.CheckpointError, match="a sharded checkpoint needs its index"):
    hf.load(directory)


def test_not_a_checkpoint(tmp_path):
  with pytest.raises(hf.CheckpointError, match="no such checkpoint directory or GGUF file"):
    hf.load(tmp_path / "nowhere")
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(hf.CheckpointError, match="config.json: not valid JSON"):
    hf.load(tmp_path)
  with pytest.raises(ValueError, match="kind must be one of"):
    hf.load(FIXTURES / "llama", kind="critic")
