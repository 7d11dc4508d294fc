"""Loading Hugging Face checkpoints (`models/hf/loader.py`): checkpoints made by
transformers (tests/models/fixtures/hf, see make_hf_fixtures.py) load into our models
with transformers' logits, rewards and values; every tensor that does not map, is
missing or has another shape is named; parameters are placed on a mesh shard by shard."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rlhf_jax import hf
from rlhf_jax import models

from hf_testlib import apply, assert_logits_match, CAUSAL, copy_fixture, edit_config, expected, FIXTURES


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_lm_logits_match_transformers(name):
  model, params = hf.load(FIXTURES / name)
  assert isinstance(model, models.Transformer)
  data = expected(name)
  assert_logits_match(model, params, data)


def test_bfloat16_checkpoint_keeps_its_dtype_and_values():
  """The checkpoint's dtype is the default: params stay bfloat16 and hold the stored
  values exactly; as float32 the logits are transformers' float32 logits."""
  model, params = hf.load(FIXTURES / "llama_bf16")
  assert (model.config.param_dtype, model.config.dtype) == ("bfloat16", "bfloat16")
  assert all(leaf.dtype == ml_dtypes.bfloat16 for leaf in jax.tree.leaves(params))
  stored = load_file(FIXTURES / "llama_bf16" / "model.safetensors")
  np.testing.assert_array_equal(np.asarray(params["embed"]["embedding"]), stored["model.embed_tokens.weight"])
  model32, params32 = hf.load(FIXTURES / "llama_bf16", param_dtype="float32")
  assert model32.config.dtype == "float32"
  assert_logits_match(model32, params32, expected("llama_bf16"))


@pytest.mark.parametrize("name", ["llama_reward", "gpt2_reward"])
def test_reward_model_scores_match_transformers(name):
  """transformers reads the score at the last non-pad token (right padding here), we at
  the last real token; the score head has no bias, ours is loaded as zero."""
  model, params = hf.load(FIXTURES / name, kind="reward")
  data = expected(name)
  assert isinstance(model, models.RewardModel) and model.num_heads == data["scores"].shape[1]
  assert not np.any(np.asarray(params["reward_head"]["bias"]))
  rewards = apply(model, params, data)
  np.testing.assert_allclose(np.asarray(rewards), data["scores"], atol=1e-4, rtol=0)


def test_value_model_from_a_one_label_classifier():
  """A critic from a one-label reward checkpoint: at the last real token its value is
  transformers' score; it is zero on padding."""
  model, params = hf.load(FIXTURES / "llama_reward", kind="value")
  data = expected("llama_reward")
  values = np.asarray(apply(model, params, data))
  last = data["attention_mask"].sum(axis=1) - 1
  np.testing.assert_allclose(values[np.arange(2), last], data["scores"][:, 0], atol=1e-4, rtol=0)
  assert not np.any(values[~data["attention_mask"]])
  with pytest.raises(hf.CheckpointError, match="one-label score head.*2 rows"):
    hf.load(FIXTURES / "gpt2_reward", kind="value")


def test_reward_model_from_a_causal_lm_gets_a_new_head_from_the_key():
  """Backbone = the policy's final hidden states; head = normal(0, 1/D) from `key`."""
  policy, policy_params = hf.load(FIXTURES / "llama")
  with pytest.raises(ValueError, match="pass key="):
    hf.load(FIXTURES / "llama", kind="reward")
  model, params = hf.load(FIXTURES / "llama", kind="reward", num_heads=3, key=jax.random.key(7))
  assert "lm_head" not in params["backbone"]
  kernel = np.asarray(params["reward_head"]["kernel"])
  assert kernel.shape == (32, 3) and np.std(kernel) > 0.05
  again = hf.load(FIXTURES / "llama", kind="reward", num_heads=3, key=jax.random.key(7))[1]
  np.testing.assert_array_equal(kernel, np.asarray(again["reward_head"]["kernel"]))
  data = expected("llama")
  hidden = np.asarray(apply(policy, policy_params, data, return_hidden=True))
  rewards = np.asarray(apply(model, params, data))
  last = data["attention_mask"].sum(axis=1) - 1
  np.testing.assert_allclose(rewards, hidden[np.arange(2), last] @ kernel, atol=1e-5)


def test_policy_from_a_classifier_without_output_layer_is_an_error():
  with pytest.raises(hf.CheckpointError, match=r"missing tensor\(s\) \['lm_head.weight'\]"):
    hf.load(FIXTURES / "llama_reward")


def test_scanned_layers_load_to_the_same_logits():
  model, params = hf.load(FIXTURES / "llama3_gqa_tied", scan_layers=True)
  assert params["layers"]["attention"]["query"].shape == (2, 32, 4, 8)
  assert_logits_match(model, params, expected("llama3_gqa_tied"))


@pytest.mark.parametrize("kind", ["policy", "reward", "value"])
def test_abstract_parameters_traced_with_one_block_equal_the_full_trace(kind):
  from rlhf_jax.models.hf import loader  # pylint: disable=g-import-not-at-top
  config = models.get_preset("tiny", n_layers=3, attention_qkv_bias=True, norm="layer")
  model = {"policy": models.Transformer(config), "reward": models.RewardModel(config, num_heads=2),
           "value": models.ValueModel(config)}[kind]
  fast, full = loader._abstract_params(model), models.abstract_params(model)  # pylint: disable=protected-access
  assert jax.tree_util.tree_structure(fast) == jax.tree_util.tree_structure(full)
  assert jax.tree.leaves(fast) == jax.tree.leaves(full)
  assert nn.get_partition_spec(fast) == nn.get_partition_spec(full)


def test_new_parameters_have_logical_axis_names():
  """Every parameter of the variants carries names the sharding rules know."""
  allowed = {"vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers", None}
  for name in ("gpt2", "qwen2", "llama_linear_bias"):
    boxed = models.abstract_params(hf.model_for(FIXTURES / name))
    leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    for path, leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)
      assert set(leaf.names) <= allowed and len(leaf.names) == leaf.value.ndim, (path, leaf.names)


def test_unmapped_tensor_is_named(tmp_path):
  directory = copy_fixture("llama", tmp_path)
  tensors = load_file(directory / "model.safetensors")
  tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(8, np.float32)
  save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(hf.CheckpointError, match=r"map to no parameter.*model.layers.0.self_attn.q_norm.weight"):
    hf.load(directory)


def test_known_buffers_are_skipped(tmp_path):
  """rotary_emb.inv_freq (old Llama files) is a buffer, not a parameter."""
  directory = copy_fixture("llama", tmp_path)
  tensors = load_file(directory / "model.safetensors")
  tensors["model.layers.1.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
  save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
  model, params = hf.load(directory)
  assert_logits_match(model, params, expected("llama"))


def test_gpt2_checkpoint_without_prefix_and_with_mask_buffers(tmp_path):
  """The original GPT-2 files name tensors without "transformer." and hold causal-mask
  buffers (h.N.attn.bias, h.N.attn.masked_bias), which are skipped by name."""
  directory = copy_fixture("gpt2", tmp_path)
  tensors = {name[len("transformer."):]: value for name, value in load_file(directory / "model.safetensors").items()}
  tensors["h.0.attn.bias"] = np.tril(np.ones((64, 64), np.float32))[None, None]
  tensors["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
  save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
  model, params = hf.load(directory)
  assert_logits_match(model, params, expected("gpt2"))


def test_missing_tensor_is_named(tmp_path):
  directory = copy_fixture("gpt2", tmp_path)
  tensors = load_file(directory / "model.safetensors")
  del tensors["transformer.h.1.mlp.c_fc.bias"]
  save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(hf.CheckpointError, match=r"missing tensor\(s\) \['transformer.h.1.mlp.c_fc.bias'\]"):
    hf.load(directory)


def test_wrong_shape_is_named(tmp_path):
  directory = copy_fixture("qwen2", tmp_path)
  edit_config(directory, intermediate_size=64)
  with pytest.raises(hf.CheckpointError, match=r"model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' "
                                               r"has shape \[48, 32\], expected \[64, 32\] from config.json"):
    hf.load(directory)


MESH_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import AxisType
    from rlhf_jax import hf, models
    assert jax.device_count() == 4
    fixture = "tests/models/fixtures/hf/mistral"
    data = dict(np.load(fixture + "/expected.npz"))
    mesh = jax.make_mesh((1, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    model, params = hf.load(fixture, mesh=mesh)
    gate = params["layer_0"]["mlp"]["gate"]
    assert tuple(gate.sharding.spec) == ("fsdp", "tensor"), gate.sharding
    # Each device holds a quarter of the [32, 48] kernel, not a copy of it.
    assert {s.data.shape for s in gate.addressable_shards} == {(16, 24)}
    # The [32, 2, 8] key kernel: 2 kv heads split over tensor=2.
    assert tuple(params["layer_0"]["attention"]["key"].sharding.spec)[:2] == ("fsdp", "tensor")
    with jax.set_mesh(mesh), __import__("flax").linen.logical_axis_rules(models.logical_axis_rules()):
      logits = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m))(
          params, data["tokens"], data["attention_mask"])
    mask = data["attention_mask"]
    np.testing.assert_allclose(np.asarray(logits)[mask], data["logits"][mask], atol=1e-4, rtol=0)
    # On tensor=4 the 2 kv heads cannot be split: that dimension is replicated.
    narrow = jax.make_mesh((1, 1, 4), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    _, params4 = hf.load(fixture, mesh=narrow)
    assert tuple(params4["layer_0"]["attention"]["key"].sharding.spec)[1] is None
    assert tuple(params4["layer_0"]["attention"]["query"].sharding.spec)[1] == "tensor"
    # Explicit shardings (a function of the boxed abstract parameters) work the same.
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    model, params = hf.load(fixture, shardings=lambda boxed: jax.tree.map(
        lambda _: replicated, __import__("flax").linen.unbox(boxed)))
    assert params["embed"]["embedding"].sharding == replicated
    print("mesh ok")
""")


def test_load_onto_a_mesh_places_each_shard():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  repo = Path(__file__).resolve().parents[3]
  result = subprocess.run([sys.executable, "-c", MESH_SCRIPT], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "mesh ok" in result.stdout


@pytest.mark.parametrize("name", ["gpt2", "qwen2", "llama_linear_bias"])
def test_cached_decoding_of_the_variants_equals_the_full_forward(name):
  """Learned positions, LayerNorm, attention and MLP biases (the output bias too) and
  scaled RoPE on the KV-cache path: a prefill and then one token at a time give the
  full forward's logits (transformers' logits, by the tests above)."""
  model, params = hf.load(FIXTURES / name)
  data = expected(name)
  tokens, mask = data["tokens"], data["attention_mask"]
  step = jax.jit(lambda p, c, t, m: model.apply({"params": p, "cache": c}, t, m, decode=True,
                                                mutable=["cache"]))
  cache = models.init_cache(model, batch_size=2, max_length=10)
  pieces = []
  for start, stop in [(0, 4)] + [(t, t + 1) for t in range(4, 10)]:
    logits, updates = step(params, cache, tokens[:, start:stop], mask[:, start:stop])
    cache = updates["cache"]
    pieces.append(np.asarray(logits))
  decoded = np.concatenate(pieces, axis=1)
  np.testing.assert_allclose(decoded[mask], data["logits"][mask], atol=1e-4, rtol=0)
