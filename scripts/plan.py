r"""Plans a run: per-device memory and FLOPs of the train step on a mesh, compiled ahead of
time with abstract shapes on simulated CPU devices (nothing is allocated).

  python scripts/plan.py --config=configs/dpo.py:preset=7b --mesh=fsdp=64,tensor=4
  python scripts/plan.py --config=configs/reward_model.py:preset=1b --mesh=data=2,fsdp=8 \
      --config.train.batch_size=32 --config.data.max_length=2048

`--mesh` gives the axis sizes (data, fsdp, tensor; unspecified axes are 1); the script
simulates that many CPU devices. The data shapes are those of a run on files:
`data.max_length` tokens per sequence, a `data.tokenizer_vocab_size` vocabulary (or
`model.vocab_size`). See `rlhf_jax/train/plan.py` for what each number means.

Measured on this 2-core CPU: the 7b DPO plan on 256 devices takes 2 minutes (three
compiles: the step, and 1- and 2-layer steps that correct XLA's FLOP count of the scanned
layers), 35 s with `--exact_flops=false`. The 7b preset scans its layers (`scan_layers`),
so XLA compiles one layer body instead of 32.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/dpo.py:preset=7b.", lock_config=True)
_MESH = flags.DEFINE_string("mesh", None, "Mesh axis sizes, e.g. data=2,fsdp=64,tensor=4 (unset axes: 1).")
_EXACT_FLOPS = flags.DEFINE_bool(
    "exact_flops", True, "For scanned layers, compile 1- and 2-layer steps to count every layer's "
    "FLOPs (XLA counts a loop body once); false: XLA's raw count, one compile.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or not _MESH.value:
    raise app.UsageError("--config and --mesh are required.")
  from rlhf_jax.train import plan as plan_lib  # pylint: disable=g-import-not-at-top
  try:
    sizes = plan_lib.parse_mesh(_MESH.value)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  devices = math.prod(sizes.values())

  import jax  # pylint: disable=g-import-not-at-top
  # Before JAX creates its CPU backend: simulate one CPU device per mesh position.
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", devices)
  if jax.device_count() != devices:
    raise app.UsageError(f"could not simulate {devices} CPU devices (got {jax.device_count()}); "
                         "unset XLA_FLAGS=--xla_force_host_platform_device_count.")
  from rlhf_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  try:
    result = plan_lib.plan(config, mesh_lib.make_mesh(sizes), correct_scan_flops=_EXACT_FLOPS.value)
  except ValueError as error:
    print(f"plan.py: error: {error}", file=sys.stderr)
    sys.exit(1)
  print(plan_lib.format_plan(result, config))


if __name__ == "__main__":
  app.run(main)
