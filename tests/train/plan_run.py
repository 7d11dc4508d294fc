"""Helper of test_plan.py, run in a subprocess with N simulated CPU devices.

  python plan_run.py bytes       tiny DPO plan on a (data 1, fsdp 2, tensor 2) mesh: the
                                 plan and every parameter / optimizer leaf's shape, dtype
                                 and partition spec, as JSON on the last line
  python plan_run.py scan_flops  tiny DPO with 4 layers: the plan's FLOPs of the scanned
                                 model (corrected) and XLA's count of the unrolled one
  python plan_run.py 7b          the 7b DPO plan on fsdp=64, tensor=4 (256 devices)
"""

import dataclasses
import json
import sys

import jax

from rlhf_jax.train import config as config_lib
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import plan as plan_lib

from train_testlib import tiny_config


def _leaves(tree):
  return [{"name": jax.tree_util.keystr(path), "shape": list(leaf.shape), "dtype": str(leaf.dtype),
           "spec": [list(a) if isinstance(a, tuple) else a for a in leaf.sharding.spec]}
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def main(mode: str) -> None:
  if mode == "7b":
    config = config_lib.base_config("dpo", "7b")
    result = plan_lib.plan(config, mesh_lib.make_mesh(plan_lib.parse_mesh("fsdp=64,tensor=4")))
    print(json.dumps(dataclasses.asdict(result)))
    return
  config = tiny_config("dpo")
  mesh = mesh_lib.make_mesh(plan_lib.parse_mesh("fsdp=2,tensor=2"))
  info = plan_lib.planning_data_info(config)
  if mode == "bytes":
    from rlhf_jax.train import components  # pylint: disable=g-import-not-at-top
    result = plan_lib.plan(config, mesh, info)
    state = components.build(config_lib.build_settings(config), mesh, info).abstract_state
    print(json.dumps({"plan": dataclasses.asdict(result), "params": _leaves(state.params),
                      "opt_state": _leaves(state.opt_state), "mesh": dict(mesh.shape)}))
  elif mode == "scan_flops":
    scanned = plan_lib.plan(config, mesh, info, n_layers=4, scan_layers=True)
    unrolled = plan_lib.plan(config, mesh, info, n_layers=4, scan_layers=False)
    print(json.dumps({"scanned": dataclasses.asdict(scanned), "unrolled": dataclasses.asdict(unrolled)}))
  else:
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
  main(sys.argv[1])
