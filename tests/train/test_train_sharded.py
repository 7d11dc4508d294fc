"""Sharded (4 simulated CPU devices, fsdp x tensor) training equals one-device training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def test_sharded_steps_equal_unsharded(tmp_path):
  output = tmp_path / "params.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
             PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, str(HERE / "sharded_run.py"), str(output)], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  # The parameters really are split: lm_head [64, 32] is ('fsdp', 'tensor') -> [32, 16] shards.
  assert report["specs"]["sharded"]["lm_head"] == "P('fsdp', 'tensor')"
  assert report["specs"]["sharded"]["lm_head_shard"] == [32, 16]
  assert report["specs"]["single"]["lm_head_shard"] == [64, 32]
  with np.load(output) as stored:
    names = sorted(k[len("single/final/"):] for k in stored if k.startswith("single/final/"))
    assert len(names) > 10
    for name in names:
      # Initialisation does not depend on the layout (partitionable threefry).
      np.testing.assert_array_equal(stored[f"sharded/initial/{name}"], stored[f"single/initial/{name}"])
      np.testing.assert_allclose(stored[f"sharded/final/{name}"], stored[f"single/final/{name}"],
                                 rtol=1e-4, atol=2e-5, err_msg=name)
  for single, sharded in zip(report["metrics"]["single"], report["metrics"]["sharded"]):
    for name in ("loss", "grad_norm", "margin"):
      np.testing.assert_allclose(sharded[name], single[name], rtol=1e-4, atol=1e-6, err_msg=name)
