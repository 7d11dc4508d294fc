"""LoRA adapters in the PEFT layout (`models/hf/peft.py`): the files `save_adapters`
writes, read back and checked against hand-written expectations (tensor names and
shapes in PEFT's convention, every adapter_config.json field), and the merge PEFT
computes from them, W + (alpha / r) B A, against a NumPy merge of our own parameters
(einsums over the named head axes, independent of `lora.merge`)."""

import json

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from rlhf_jax import hf, models
from rlhf_jax.models import lora

from hf_testlib import FIXTURES

# tiny: D = 64, 4 query heads and 2 key/value heads of 16, feed-forward 128, 2 layers.
RANK, ALPHA = 3, 12.0  # PEFT's scale lora_alpha / r = 4
CONFIG = models.get_preset("tiny", lora_rank=RANK, lora_alpha=ALPHA, lora_dropout=0.1,
                           lora_targets=("query", "key", "out", "down"))
# Hugging Face module of each target, and its PEFT shapes: lora_A [r, in], lora_B [out, r].
EXPECTED_SHAPES = {"self_attn.q_proj": ((3, 64), (64, 3)), "self_attn.k_proj": ((3, 64), (32, 3)),
                   "self_attn.o_proj": ((3, 64), (64, 3)), "mlp.down_proj": ((3, 128), (64, 3))}
EXPECTED_NAMES = [
    "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight",
    "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
    "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
    "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
    "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight",
    "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight",
    "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight",
    "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight",
    "base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight",
    "base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight",
    "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
    "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
]
# Our projection behind each Hugging Face module.
OURS = {"self_attn.q_proj": ("attention", "query"), "self_attn.k_proj": ("attention", "key"),
        "self_attn.o_proj": ("attention", "out"), "mlp.down_proj": ("mlp", "down")}


def init(config=CONFIG, model_cls=models.Transformer, seed=0, **kwargs):
  """The model and random float32 NumPy parameters (B nonzero, unlike its initialisation)."""
  model = model_cls(config, **kwargs)
  rng = np.random.default_rng(seed)
  abstract = nn.unbox(models.abstract_params(model))
  params = jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(np.float32), abstract)
  return model, params


def numpy_merged_hf_weight(layer, module):
  """W + (alpha / r) A B of our parameters, merged over the named head axes in float64
  and laid out as the Hugging Face Linear weight [out, in]."""
  part, name = OURS[module]
  tree = PARAMS[f"layer_{layer}"][part]
  w, a, b = (np.asarray(tree[key], np.float64) for key in (name, f"{name}_lora_a", f"{name}_lora_b"))
  if name == "out":    # W [H, Dh, D], A [H, Dh, r], B [r, D]
    merged = w + ALPHA / RANK * np.einsum("hdr,re->hde", a, b)
    return merged.reshape(-1, merged.shape[-1]).T
  if b.ndim == 3:      # W [D, N, Dh], A [D, r], B [r, N, Dh]
    merged = w + ALPHA / RANK * np.einsum("er,rnd->end", a, b)
    return merged.reshape(merged.shape[0], -1).T
  return (w + ALPHA / RANK * a @ b).T  # W [F, D], A [F, r], B [r, D]


MODEL, PARAMS = init()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """The adapters in PEFT's layout and the base model as a Hugging Face checkpoint."""
  root = tmp_path_factory.mktemp("peft")
  hf.save_adapters(root / "adapter", MODEL, PARAMS, base_model_name_or_path="org/base-model")
  hf.save(root / "base", lora.base_model(MODEL), lora.base_params(PARAMS))
  return root


def test_tensor_names_and_shapes(written):
  tensors = load_file(written / "adapter" / "adapter_model.safetensors")
  assert sorted(tensors) == EXPECTED_NAMES == hf.peft_tensor_names(MODEL)
  for name, tensor in tensors.items():
    module = name.split(".", 5)[-1].rsplit(".", 2)[0]  # e.g. self_attn.q_proj
    a_shape, b_shape = EXPECTED_SHAPES[module]
    assert tensor.shape == (a_shape if ".lora_A." in name else b_shape), name
    assert tensor.dtype == np.float32
  with safe_open(written / "adapter" / "adapter_model.safetensors", "np") as opened:
    assert opened.metadata() == {"format": "pt"}  # PEFT's loader expects PyTorch-format files


def test_adapter_config_fields(written):
  assert json.loads((written / "adapter" / "adapter_config.json").read_text()) == {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "org/base-model",
      "r": 3, "lora_alpha": 12.0, "lora_dropout": 0.1,
      "target_modules": ["down_proj", "k_proj", "o_proj", "q_proj"],
      "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "inference_mode": True,
      "use_rslora": False, "use_dora": False, "auto_mapping": None, "revision": None}


def test_a_and_b_are_ours_flattened_and_transposed(written):
  """lora_A [r, in] = A [*in, r] flattened and transposed; lora_B [out, r] likewise."""
  tensors = load_file(written / "adapter" / "adapter_model.safetensors")
  attention = PARAMS["layer_1"]["attention"]
  prefix = "base_model.model.model.layers.1.self_attn"
  np.testing.assert_array_equal(tensors[f"{prefix}.q_proj.lora_A.weight"], attention["query_lora_a"].T)
  np.testing.assert_array_equal(tensors[f"{prefix}.q_proj.lora_B.weight"],
                                attention["query_lora_b"].reshape(3, 4 * 16).T)
  np.testing.assert_array_equal(tensors[f"{prefix}.o_proj.lora_A.weight"],
                                attention["out_lora_a"].reshape(4 * 16, 3).T)


def test_peft_merge_of_the_files_equals_the_numpy_merge(written):
  """What PEFT computes from the two checkpoints, W_hf + (lora_alpha / r) lora_B lora_A,
  equals W + (alpha / r) A B merged by NumPy from our parameters, in HF's layout."""
  tensors = load_file(written / "adapter" / "adapter_model.safetensors")
  base = load_file(written / "base" / "model.safetensors")
  config = json.loads((written / "adapter" / "adapter_config.json").read_text())
  scale = config["lora_alpha"] / config["r"]
  for layer in range(2):
    for module in EXPECTED_SHAPES:
      name = f"model.layers.{layer}.{module}"
      lora_a = tensors[f"base_model.model.{name}.lora_A.weight"].astype(np.float64)
      lora_b = tensors[f"base_model.model.{name}.lora_B.weight"].astype(np.float64)
      peft_merged = base[f"{name}.weight"] + scale * lora_b @ lora_a
      np.testing.assert_allclose(peft_merged, numpy_merged_hf_weight(layer, module), rtol=1e-6, atol=1e-6,
                                 err_msg=name)


def test_scanned_layers_write_the_same_files(tmp_path, written):
  """A scanned model (a leading layer axis on every leaf) writes the same tensors."""
  layers = [PARAMS[f"layer_{i}"] for i in range(2)]
  stacked = {k: v for k, v in PARAMS.items() if not k.startswith("layer_")}
  stacked["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  hf.save_adapters(tmp_path, models.Transformer(CONFIG.replace(scan_layers=True)), stacked,
                   base_model_name_or_path="org/base-model")
  expected = load_file(written / "adapter" / "adapter_model.safetensors")
  got = load_file(tmp_path / "adapter_model.safetensors")
  assert sorted(got) == sorted(expected)
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_bfloat16_tensors_are_the_rounded_float32_ones(tmp_path, written):
  hf.save_adapters(tmp_path, MODEL, PARAMS, dtype="bfloat16")
  expected = load_file(written / "adapter" / "adapter_model.safetensors")
  got = load_file(tmp_path / "adapter_model.safetensors")
  for name in expected:
    assert got[name].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got[name], expected[name].astype(ml_dtypes.bfloat16), err_msg=name)


def test_reward_model_writes_the_score_head_as_modules_to_save(tmp_path):
  """The reward head trains in full: PEFT's `modules_to_save` "score", [labels, D]."""
  model, params = init(models.get_preset("tiny", lora_rank=2), model_cls=models.RewardModel, num_heads=2)
  hf.save_adapters(tmp_path, model, params)
  tensors = load_file(tmp_path / "adapter_model.safetensors")
  assert sorted(tensors) == sorted(
      [f"base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_{p}.weight"
       for i in range(2) for m in "qv" for p in "AB"] + ["base_model.model.score.weight"])
  assert tensors["base_model.model.score.weight"].shape == (2, 64)
  np.testing.assert_array_equal(tensors["base_model.model.score.weight"], params["reward_head"]["kernel"].T)
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  assert (config["task_type"], config["modules_to_save"], config["target_modules"]) == (
      "SEQ_CLS", ["score"], ["q_proj", "v_proj"])
  assert config["base_model_name_or_path"] is None


def test_what_cannot_be_written_is_refused(tmp_path):
  with pytest.raises(ValueError, match="no LoRA adapters"):
    hf.save_adapters(tmp_path, lora.base_model(MODEL), lora.base_params(PARAMS))
  with pytest.raises(ValueError, match="dtype must be 'float32' or 'bfloat16'; got 'float16'"):
    hf.save_adapters(tmp_path, MODEL, PARAMS, dtype="float16")
  gpt2, _ = hf.load(FIXTURES / "gpt2")
  with pytest.raises(hf.CheckpointError, match="GPT-2 fuses q, k and v"):
    hf.save_adapters(tmp_path, gpt2.clone(config=gpt2.config.replace(lora_rank=2)), {})
  with pytest.raises(TypeError, match="expected a Transformer, RewardModel or ValueModel"):
    hf.save_adapters(tmp_path, nn.Dense(3), {})
  assert not list(tmp_path.iterdir())  # nothing half-written
