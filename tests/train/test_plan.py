"""Ahead-of-time plans (`rlhf_jax.train.plan`, `scripts/plan.py`): per-device memory and
FLOPs from XLA, checked against bytes computed here from shapes and shardings."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_jax.train import plan as plan_lib

from train_testlib import tiny_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _helper(mode: str, devices: int, timeout: int = 600) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
             PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, str(HERE / "plan_run.py"), mode], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_parse_mesh():
  assert plan_lib.parse_mesh("data=2,fsdp=64,tensor=4") == {"data": 2, "fsdp": 64, "tensor": 4}
  assert plan_lib.parse_mesh("fsdp=64, tensor=4") == {"data": 1, "fsdp": 64, "tensor": 4}
  assert plan_lib.parse_mesh("tensor=8") == {"data": 1, "fsdp": 1, "tensor": 8}
  for bad, message in (("fsdp=0", "positive int"), ("fsdp=x", "positive int"), ("pipeline=2", "axis one of"),
                       ("fsdp", "axis=size"), ("fsdp=2,fsdp=4", "given twice")):
    with pytest.raises(ValueError, match=message):
      plan_lib.parse_mesh(bad)


def _shard_bytes(leaves, mesh):
  """Σ elements x itemsize / (product of the mesh axes each dimension is split over)."""
  total = 0
  for leaf in leaves:
    factor = 1
    for axes in leaf["spec"]:
      for axis in ([axes] if isinstance(axes, str) else axes or []):
        factor *= mesh[axis]
    itemsize = {"float32": 4, "int32": 4, "uint32": 4, "bfloat16": 2, "bool": 1}[leaf["dtype"]]
    assert math.prod(leaf["shape"]) % factor == 0
    total += math.prod(leaf["shape"]) * itemsize // factor
  return total


def test_tiny_plan_bytes_match_shapes_and_shardings():
  report = _helper("bytes", 4)
  plan, mesh = report["plan"], report["mesh"]
  assert mesh == {"data": 1, "fsdp": 2, "tensor": 2} and plan["devices"] == 4
  params = report["params"]
  # Every parameter is float32 (4 bytes); the big matrices really are split.
  assert {leaf["dtype"] for leaf in params} == {"float32"}
  assert any(leaf["spec"] and any(leaf["spec"]) for leaf in params)
  expected_params = sum(math.prod(leaf["shape"]) * 4 // math.prod(
      mesh[a] for axes in leaf["spec"] for a in ([axes] if isinstance(axes, str) else axes or []))
      for leaf in params)
  assert plan["parameter_bytes"] == expected_params
  assert plan["parameter_count"] == sum(math.prod(leaf["shape"]) for leaf in params)
  # Unsharded, the tiny DPO policy (vocab 512, d 64, 2 layers) holds 139,584 float32 numbers.
  assert plan["parameter_count"] == 512 * 64 * 2 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64) + 64
  assert plan["parameter_bytes"] < plan["parameter_count"] * 4 / 2  # sharded over >= 2 devices
  # AdamW: two moments per parameter, laid out like it, plus a few replicated counters.
  assert plan["optimizer_bytes"] == _shard_bytes(report["opt_state"], mesh)
  assert 2 * plan["parameter_bytes"] <= plan["optimizer_bytes"] <= 2 * plan["parameter_bytes"] + 256
  # XLA's own buffer assignment agrees: arguments = state + batch + key (8 bytes), and
  # the donated state is aliased into the outputs.
  state_and_batch = plan["parameter_bytes"] + plan["optimizer_bytes"] + plan["batch_bytes"] + 8
  assert abs(plan["argument_bytes"] - state_and_batch) <= 0.001 * state_and_batch
  assert plan["alias_bytes"] >= 0.99 * (plan["parameter_bytes"] + plan["optimizer_bytes"])
  assert plan["temp_bytes"] > 0
  # Batch: 16 pairs x 2 sequences x 3 arrays of 128 (int32 tokens, bool masks) + 4 per-pair
  # scalars + 2 reference log-probs, split over fsdp=2.
  assert plan["batch_bytes"] == 16 * (2 * 128 * (4 + 1 + 1) + 4 + 4 + 1 + 4 + 2 * 4) // 2
  assert plan["flops"] == plan["xla_flops"] > 0


@pytest.mark.slow
def test_scanned_layer_flops_equal_the_unrolled_count():
  """XLA counts a while-loop body once; the plan's correction must give the FLOPs XLA
  counts for the same 4-layer model unrolled (an independent compile)."""
  report = _helper("scan_flops", 4)
  scanned, unrolled = report["scanned"], report["unrolled"]
  assert scanned["scan_layers"] and not unrolled["scan_layers"]
  assert scanned["xla_flops"] < 0.5 * unrolled["xla_flops"]  # the raw count misses layers
  assert scanned["flops"] == pytest.approx(unrolled["xla_flops"], rel=1e-3)
  assert scanned["parameter_bytes"] == unrolled["parameter_bytes"]


@pytest.mark.slow
def test_7b_plan_on_256_devices():
  report = _helper("7b", 256, timeout=900)
  assert report["mesh"] == {"data": 1, "fsdp": 64, "tensor": 4}
  # Llama 2 7B shapes with a 32k vocabulary: 6.74e9 parameters, float32, split 256 ways.
  assert report["parameter_count"] == pytest.approx(6.74e9, rel=0.01)
  assert report["parameter_bytes"] == pytest.approx(report["parameter_count"] * 4 / 256, rel=0.01)
  assert report["optimizer_bytes"] == pytest.approx(2 * report["parameter_bytes"], rel=1e-3)
  # FLOPs of a step, all devices: at least 6 N per token (forward + backward); remat adds
  # one forward (8 N), attention adds a little.
  total = report["flops"] * 256
  assert 6 * report["parameter_count"] * report["tokens_per_step"] < total
  assert total < 10 * report["parameter_count"] * report["tokens_per_step"]


def test_plan_script_rejects_a_bad_mesh():
  result = subprocess.run([sys.executable, str(REPO / "scripts" / "plan.py"), "--config=configs/dpo.py:preset=tiny",
                           "--mesh=fsdp=2,pipeline=2"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "pipeline=2" in result.stderr and "Traceback" not in result.stderr


def test_padding_free_plans_say_they_are_an_upper_bound():
  plan = plan_lib.Plan(mesh={"data": 1}, devices=1, parameter_count=1, parameter_bytes=4, optimizer_bytes=8,
                       batch_bytes=4, argument_bytes=16, output_bytes=16, alias_bytes=12, temp_bytes=0,
                       flops=1.0, xla_flops=1.0, tokens_per_step=1, layers=1, scan_layers=False,
                       compile_seconds=0.0)
  assert "padding-free" not in plan_lib.format_plan(plan, tiny_config("dpo"))
  text = plan_lib.format_plan(plan, tiny_config("dpo", data__padding_free=True, data__buckets_per_octave=4))
  assert "planned with the padded two-row layout" in text and "plus at most 1/4 rounding" in text
