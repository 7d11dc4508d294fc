"""Checkpoints of online runs are sampled like offline ones (`train.sampling.load_policy`,
`scripts/sample.py`): the policy of a PPO run (stored under "policy" beside its critic),
and a LoRA GRPO run from a pretrained checkpoint (adapters only in its checkpoint, the
base read again from model.init_from), whose base stays frozen while the adapters train."""

import json
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from rlhf_jax import hf, models
from rlhf_jax.rl import loop as rl_loop
from rlhf_jax.train import sampling

from rl_testlib import tiny_online_config

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import numpy_transformer as ref  # noqa: E402

TOKENIZER = Path(__file__).parents[1] / "models" / "fixtures" / "hf" / "tokenizer"


def flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def assert_same(a, b):
  a, b = flat(a), flat(b)
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def sample_toy(workdir, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "5 6 7"}\n{"prompt": "9 10"}\n')
  policy = sampling.load_policy(workdir)
  summary = sampling.sample_file(policy, prompts, tmp_path / "out.jsonl", rejects_path=tmp_path / "rejects.jsonl",
                                 config=policy.sampling_config(max_new_tokens=4, temperature=0.0), seed=0)
  lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert summary["sampled"] == 2 and len(lines) == 2 and all(line["num_tokens"] >= 1 for line in lines)
  return policy


@pytest.mark.slow
def test_ppo_run_policy_is_sampled(tmp_path):
  config = tiny_online_config("ppo", train__steps=1, rollout__prompts=4, rollout__epochs=1, rollout__minibatches=1)
  results = rl_loop.train(config, tmp_path / "ppo")
  policy = sample_toy(tmp_path / "ppo", tmp_path)
  assert_same(policy._params, results["state"].train.params["policy"])
  assert policy.default_new_tokens == config.rollout.max_new_tokens


@pytest.mark.slow
def test_lora_grpo_from_a_pretrained_checkpoint(tmp_path):
  arch = models.TransformerConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                                  max_len=64, norm_eps=1e-5)
  model = models.Transformer(arch)
  base = ref.random_params(nn.unbox(models.abstract_params(model)), seed=5)
  hf.save(tmp_path / "base", model, base, tokenizer=hf.load_tokenizer(TOKENIZER))
  config = tiny_online_config("grpo", train__steps=2, rollout__prompts=4, optim__learning_rate=1e-2,
                              model__init_from=f"hf:{tmp_path / 'base'}", model__lora__rank=2,
                              model__lora__targets="query,value")
  results = rl_loop.train(config, tmp_path / "grpo")
  params = flat(results["state"].train.params)
  expected = flat(base)
  for name, value in params.items():
    if "_lora_" not in name:
      np.testing.assert_array_equal(value, expected[name], err_msg=name)
  assert any(np.abs(v).max() > 0 for k, v in params.items() if "_lora_b" in k)
  policy = sample_toy(tmp_path / "grpo", tmp_path)
  assert_same(policy._params, results["state"].train.params)


@pytest.mark.slow
def test_lora_ppo_trains_adapters_of_policy_and_critic(tmp_path):
  """PPO with LoRA: the critic starts from the policy (adapters included); only the
  adapters and the value head change, and the checkpoint samples back."""
  arch = models.TransformerConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                                  max_len=64, norm_eps=1e-5)
  model = models.Transformer(arch)
  base = ref.random_params(nn.unbox(models.abstract_params(model)), seed=6)
  hf.save(tmp_path / "base", model, base, tokenizer=hf.load_tokenizer(TOKENIZER))
  config = tiny_online_config("ppo", train__steps=1, rollout__prompts=4, rollout__epochs=1, rollout__minibatches=1,
                              optim__learning_rate=1e-2, model__init_from=f"hf:{tmp_path / 'base'}",
                              model__lora__rank=2)
  results = rl_loop.train(config, tmp_path / "ppo")
  params = flat(results["state"].train.params)
  expected = flat(base)
  for name, value in params.items():
    if "_lora_" in name or "value_head" in name:
      continue
    key = name.replace("['policy']", "").replace("['value']['backbone']", "")
    np.testing.assert_array_equal(value, expected[key], err_msg=name)
  assert any(np.abs(v).max() > 0 for k, v in params.items() if "['value']" in k and "_lora_b" in k)
  policy = sample_toy(tmp_path / "ppo", tmp_path)
  assert_same(policy._params, results["state"].train.params["policy"])
