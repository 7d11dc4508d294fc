"""Online training over two processes (`jax.distributed` on 127.0.0.1, gloo CPU
collectives) equals one process on as many devices.

PPO on the toy task, `scripts/train.py`, FSDP over 2 devices: one process with 2 CPU
devices, and two processes with one each, so the rollouts, the completions gathered for
the host-side reward, the critic and the minibatches are split across processes. The
final states are read back from the runs' orbax checkpoints as NumPy arrays.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
CONFIG_ARGS = ("--config=configs/ppo.py:preset=tiny", f"--config.train.steps={STEPS}", "--config.train.log_every=1",
               "--config.train.progress_bar=false", "--config.rollout.max_new_tokens=8", "--config.mesh.data=1",
               "--config.mesh.fsdp=-1")

pytestmark = pytest.mark.slow  # three training processes, each compiling (1-2 minutes)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _run(workdir: Path, processes: int) -> None:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(2 // processes), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  command = [sys.executable, str(REPO / "scripts" / "train.py"), *CONFIG_ARGS, f"--workdir={workdir}"]
  address = f"127.0.0.1:{_free_port()}"
  commands = [command] if processes == 1 else [
      command + [f"--coordinator_address={address}", f"--num_processes={processes}", f"--process_id={i}"]
      for i in range(processes)]
  launched = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for argv in commands]
  outputs = []
  try:
    for process in launched:
      outputs.append(process.communicate(timeout=900)[0])
  finally:
    for process in launched:
      if process.poll() is None:
        process.kill()
  codes = [p.returncode for p in launched]
  assert codes == [0] * processes, f"exit codes {codes}\n" + "\n".join(o[-3000:] for o in outputs)


def _final_state(workdir: Path) -> dict[str, np.ndarray]:
  path = workdir / "checkpoints" / str(STEPS) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path).item_metadata
  metadata = getattr(metadata, "tree", metadata)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}


def test_two_processes_equal_one_process(tmp_path):
  _run(tmp_path / "one", 1)
  _run(tmp_path / "two", 2)
  one, two = _final_state(tmp_path / "one"), _final_state(tmp_path / "two")
  assert sorted(one) == sorted(two) and len([n for n in one if n.startswith("['params']['value']")]) > 5
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=2e-5, err_msg=name)
  records = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
             for name in ("one", "two")}
  assert [r["step"] for r in records["two"]] == list(range(1, STEPS + 1))
  for a, b in zip(records["one"], records["two"]):
    assert a["reward_mean"] == b["reward_mean"]  # the same completions, scored on every process
    np.testing.assert_allclose(b["kl"], a["kl"], rtol=1e-3, atol=1e-5)
  assert json.loads((tmp_path / "two" / "run.json").read_text())["devices"]["processes"] == 2
