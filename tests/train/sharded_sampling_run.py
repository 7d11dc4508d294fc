"""Samples with `sampling.make_sampler` on 2 simulated devices (data, fsdp and tensor meshes)
and with `models.sample` on one device; prints a JSON report (run by test_sampling.py
with XLA_FLAGS=--xla_force_host_platform_device_count=2)."""

import json

import flax.linen as nn
import jax
import numpy as np

from rlhf_jax import models
from rlhf_jax.train import components, sampling
from rlhf_jax.train import mesh as mesh_lib


def main() -> None:
  assert jax.device_count() == 2, jax.devices()
  config = models.get_preset("tiny")
  model = models.Transformer(config)
  boxed = models.abstract_params(model)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: (rng.standard_normal(a.shape) / np.sqrt(a.shape[0])).astype(np.float32),
                        nn.unbox(boxed))
  # Four ragged prompts (two of them left padded), two samples each.
  lengths = np.array([5, 8, 2, 6])
  tokens = rng.integers(5, config.vocab_size, size=(4, 8)).astype(np.int32)
  mask = np.arange(8)[None, :] < lengths[:, None]
  mask[1:3] = mask[1:3, ::-1]
  tokens = np.where(mask, tokens, 0).astype(np.int32)
  ids = np.array([10, 11, 12, 13], np.int32)
  settings = models.SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=100, num_samples=2, eos_id=7)
  key = jax.random.key(3)

  single = jax.jit(models.sample, static_argnames=("model", "config"),
                   compiler_options=components.FAST_COMPILE_OPTIONS)(model, params, tokens, mask, key, settings, ids)
  report = {"single": {"tokens": np.asarray(single.completion_tokens).tolist()}, "sharded": {}}
  for name in ("data", "fsdp", "tensor"):
    mesh = mesh_lib.make_mesh({name: 2})
    shardings = mesh_lib.param_shardings(boxed, mesh, components.axis_rules(mesh))
    sampler = sampling.make_sampler(model, settings, mesh, shardings,
                                    compiler_options=components.FAST_COMPILE_OPTIONS)
    batch = mesh_lib.shard_batch({"tokens": tokens, "mask": mask, "ids": ids}, mesh)
    placed = jax.device_put(params, shardings)
    samples = sampler(placed, batch["tokens"], batch["mask"], key, batch["ids"])
    report["sharded"][name] = {
        "tokens": np.asarray(samples.completion_tokens).tolist(),
        "logprobs_diff": float(np.max(np.abs(np.asarray(samples.logprobs) - np.asarray(single.logprobs)))),
        "policy_logprobs_diff": float(np.max(np.abs(np.asarray(samples.policy_logprobs)
                                                    - np.asarray(single.policy_logprobs)))),
        "lengths_equal": bool(np.array_equal(samples.lengths, single.lengths)),
        "stopped_equal": bool(np.array_equal(samples.stopped, single.stopped)),
        "lm_head_shards": [list(s.data.shape) for s in placed["lm_head"].addressable_shards],
        "tokens_spec": str(samples.tokens.sharding.spec),
        "tokens_shard_rows": [int(s.data.shape[0]) for s in samples.tokens.addressable_shards],
    }
  print(json.dumps(report))


if __name__ == "__main__":
  main()
