"""Helper of test_train_sharded.py, run in a subprocess with 4 simulated CPU devices.

Trains 2 SimPO steps of the tiny language model (its log-probs come from vocabulary-split
logits on the sharded mesh) on the same batches on a one-device mesh and on a (data 1,
fsdp 2, tensor 2) mesh, and writes the parameters and metrics of both to an .npz.
"""

import json
import os
import sys

import jax
import numpy as np

from rlhf_jax.train import components, mesh as mesh_lib
from rlhf_jax.train import config as config_lib

from train_testlib import load_datasets, tiny_config


def main(output: str) -> None:
  assert jax.device_count() == 4, jax.devices()
  config = tiny_config("simpo", train__batch_size=8, optim__warmup_steps=0, data__toy__num_train=64,
                       data__toy__num_eval=0)
  datasets = load_datasets(config, os.path.dirname(output))  # toy data: nothing is written
  layout = components.device_batch_layout(config_lib.build_settings(config), datasets.info)
  arrays, specs, metrics = {}, {}, {}
  for name, sizes, devices in (("single", dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
                               ("sharded", dict(data=1, fsdp=2, tensor=2), jax.devices())):
    mesh = mesh_lib.make_mesh(sizes, devices)
    parts = components.build(config_lib.build_settings(config), mesh, datasets.info)
    init_key, train_key = jax.random.split(jax.random.key(0))
    state = parts.init_state(init_key, train_key)
    initial = jax.device_get(state.params)
    key = jax.random.key_data(train_key)
    history = []
    for step in range(2):
      rows = np.arange(step * 8, step * 8 + 8)
      batch = mesh_lib.shard_batch({k: datasets.train[k][rows] for k in layout}, mesh)
      state, step_metrics = parts.train_step(state, batch, key)
      history.append({k: float(v) for k, v in jax.device_get(step_metrics).items()})
    metrics[name] = history
    specs[name] = {
        "lm_head": str(state.params["lm_head"].sharding.spec),
        "lm_head_shard": list(state.params["lm_head"].addressable_shards[0].data.shape),
    }
    for path, value in jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]:
      arrays[f"{name}/final/{jax.tree_util.keystr(path)}"] = np.asarray(value)
    for path, value in jax.tree_util.tree_flatten_with_path(initial)[0]:
      arrays[f"{name}/initial/{jax.tree_util.keystr(path)}"] = np.asarray(value)
  np.savez(output, **arrays)
  print(json.dumps({"specs": specs, "metrics": metrics}))


if __name__ == "__main__":
  main(sys.argv[1])
