"""Helper of test_loop.py, run in a subprocess with 1 or 2 simulated CPU devices.

Trains 3 PPO iterations of the tiny toy task with the mesh's "fsdp" axis over every
device (parameters, optimizer state, rollouts and minibatches split), and writes the
final parameters to an .npz and a JSON report (devices, mesh, a parameter's sharding,
metrics of every iteration) to stdout.
"""

import json
import sys

import jax
import numpy as np

from rlhf_jax import rl

from rl_testlib import tiny_online_config


def main(output: str, workdir: str) -> None:
  config = tiny_online_config("ppo", train__steps=3, train__log_every=1, train__samples_every=0, mesh__data=1,
                              mesh__fsdp=-1)
  results = rl.train(config, workdir)
  lm_head = results["state"].train.params["policy"]["lm_head"]
  sharding = {"spec": str(lm_head.sharding.spec), "shard": list(lm_head.addressable_shards[0].data.shape)}
  params = jax.device_get(results["state"].train.params)
  arrays = {jax.tree_util.keystr(path): np.asarray(value)
            for path, value in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(output, **arrays)
  metrics = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  mesh = json.load(open(f"{workdir}/run.json"))["mesh"]
  print(json.dumps({"devices": jax.device_count(), "mesh": mesh, "lm_head": sharding, "metrics": metrics}))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
