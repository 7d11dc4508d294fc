"""Exporting a run's checkpoint (`rlhf_jax.train.export`, `scripts/export.py`): what is
written loads back with `hf.load` and gives the run's logits / rewards; a LoRA run
exports merged weights (= the adapter forward) or PEFT-named adapters whose product
W + (alpha / r) B A is the merged tensor; with transformers installed (slow), transformers
reads the export with the same logits."""

import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from rlhf_jax import hf, models
from rlhf_jax.models import lora
from rlhf_jax.train import export, loop

from train_testlib import tiny_config

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import numpy_transformer as ref  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "tests" / "models" / "fixtures" / "hf" / "tokenizer"
QUICK = dict(train__steps=2, train__batch_size=8, train__log_every=2, optim__warmup_steps=0, eval__every=0,
             checkpoint__every=0, data__toy__num_train=16, data__toy__num_eval=0)
TOKENS = np.array([[1, 5, 9, 12, 7, 2, 0, 0], [1, 20, 6, 6, 3, 11, 8, 2]], np.int32)
MASK = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8], bool)


def apply(model, params):
  return np.asarray(jax.jit(lambda p: model.apply({"params": p}, TOKENS, MASK))(params))


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("export_sft")
  return root, loop.train(tiny_config("sft", **QUICK), root)


def test_policy_export_loads_back_with_the_same_logits(sft_run, tmp_path):
  workdir, results = sft_run
  summary = export.export_run(workdir, tmp_path / "hf")
  assert summary["written"] == "weights" and summary["checkpoint_step"] == 2
  model, params = hf.load(tmp_path / "hf")
  ours, _, _, _ = export.load_run(workdir)
  np.testing.assert_allclose(apply(model, params), apply(ours, results["state"].params), atol=1e-5, rtol=0)
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert config["architectures"] == ["LlamaForCausalLM"]


def test_a_relative_workdir_reads_the_same_checkpoint(sft_run, monkeypatch):
  workdir, results = sft_run
  monkeypatch.chdir(workdir.parent)
  model, params, _, step = export.load_run(workdir.name)
  assert step == 2
  np.testing.assert_array_equal(apply(model, params), apply(model, results["state"].params))


def test_reward_model_export_drops_the_bias_explicitly(tmp_path):
  results = loop.train(tiny_config("reward_model", **QUICK), tmp_path / "rm")
  with pytest.raises(ValueError, match="nonzero bias"):
    export.export_run(tmp_path / "rm", tmp_path / "hf")
  export.export_run(tmp_path / "rm", tmp_path / "hf", drop_head_bias=True)
  model, params = hf.load(tmp_path / "hf", kind="reward")
  ours = results["state"].params
  trained, _, _, _ = export.load_run(tmp_path / "rm")
  expected = apply(trained, ours) - np.asarray(ours["reward_head"]["bias"])
  np.testing.assert_allclose(apply(model, params), expected, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="no policy model"):
    export.export_run(tmp_path / "rm", tmp_path / "x", part="policy")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("export_lora")
  arch = models.TransformerConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                                  max_len=64, norm_eps=1e-5)
  model = models.Transformer(arch)
  base = ref.random_params(nn.unbox(models.abstract_params(model)), seed=4)
  hf.save(root / "base", model, base, tokenizer=hf.load_tokenizer(TOKENIZER))
  config = tiny_config("dpo", **QUICK, data__max_length=16, data__max_prompt_length=8, optim__learning_rate=1e-2,
                       model__init_from=f"hf:{root / 'base'}", model__lora__rank=4,
                       model__lora__targets="query,value,up")
  return root, loop.train(config, root / "dpo")


def test_lora_merged_export_gives_the_adapter_forward(lora_run, tmp_path):
  root, results = lora_run
  summary = export.export_run(root / "dpo", tmp_path / "merged")
  assert summary["written"] == "merged weights" and 0 < summary["lora_parameters"] < summary["parameters"]
  assert (tmp_path / "merged" / "tokenizer.json").is_file()  # the pretrained checkpoint's tokenizer
  model, params = hf.load(tmp_path / "merged")
  trained, _, _, _ = export.load_run(root / "dpo")
  adapted = apply(trained, results["state"].params)
  np.testing.assert_allclose(apply(model, params), adapted, atol=2e-5, rtol=0)
  base_model, base_params = hf.load(root / "base")
  assert np.abs(apply(base_model, base_params) - adapted).max() > 1e-3  # the adapters were trained


def test_lora_peft_export_names_and_values(lora_run, tmp_path):
  root, results = lora_run
  export.export_run(root / "dpo", tmp_path / "peft", lora_format="peft")
  export.export_run(root / "dpo", tmp_path / "merged")
  tensors = load_file(tmp_path / "peft" / "adapter_model.safetensors")
  config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
  assert config["base_model_name_or_path"] == str(root / "base")
  assert sorted(config["target_modules"]) == ["q_proj", "up_proj", "v_proj"]
  modules = ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"]
  assert sorted(tensors) == sorted(f"base_model.model.model.layers.{i}.{m}.lora_{p}.weight"
                                   for i in range(2) for m in modules for p in "AB")
  base, merged = load_file(root / "base" / "model.safetensors"), load_file(tmp_path / "merged" / "model.safetensors")
  scale = config["lora_alpha"] / config["r"]
  for i in range(2):
    for m in modules:
      name = f"model.layers.{i}.{m}"
      delta = tensors[f"base_model.model.{name}.lora_B.weight"] @ tensors[f"base_model.model.{name}.lora_A.weight"]
      np.testing.assert_allclose(base[f"{name}.weight"] + scale * delta, merged[f"{name}.weight"], atol=1e-5)


def test_script_exports_and_reports_errors_in_one_line(sft_run, tmp_path):
  workdir, _ = sft_run
  command = [sys.executable, str(REPO / "scripts" / "export.py"), f"--workdir={workdir}"]
  env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
  missing = subprocess.run(command, capture_output=True, text=True, env=env)
  assert missing.returncode == 1 and missing.stderr.strip() == "export.py: error: --workdir and --output are required."
  bad = subprocess.run(command + [f"--output={tmp_path / 'x'}", "--part=value"], capture_output=True, text=True,
                       env=env)
  assert bad.returncode == 1 and "no value model" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
  done = subprocess.run(command + [f"--output={tmp_path / 'hf'}"], capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr
  assert (tmp_path / "hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_transformers_reads_the_merged_export(lora_run, tmp_path):
  torch = pytest.importorskip("torch", reason="transformers comparison needs torch (pip install -e '.[hf-test]')")
  transformers = pytest.importorskip("transformers", reason="needs transformers (pip install -e '.[hf-test]')")
  root, results = lora_run
  export.export_run(root / "dpo", tmp_path / "merged")
  reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", torch_dtype=torch.float32)
  with torch.no_grad():
    logits = reference(input_ids=torch.tensor(TOKENS[1:]), attention_mask=torch.tensor(MASK[1:])).logits.numpy()
  trained, _, _, _ = export.load_run(root / "dpo")
  np.testing.assert_allclose(logits, apply(trained, results["state"].params)[1:], atol=1e-4, rtol=0)
