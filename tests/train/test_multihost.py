"""Multi-process training and exact resume after SIGKILL, through `scripts/train.py`.

- Two local processes of two simulated CPU devices each (`jax.distributed` on
  127.0.0.1, gloo CPU collectives) train the tiny DPO preset on a (fsdp 2, tensor 2)
  mesh, so parameters, optimizer state and batches are split across the processes: the
  final state equals a one-process run on four devices with the same config.
- A run killed with SIGKILL after at least one checkpoint and started again with the same
  command ends with a state bitwise equal to an uninterrupted run (one process, and two
  processes), and its metrics.jsonl holds every step once.

Every run is a subprocess with a timeout; the states are read back from the runs' final
orbax checkpoints as NumPy arrays, so the comparison does not trust the trainer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = 16
CHECKPOINT_EVERY = 4
# Small and fast: 16 DPO steps of 8 pairs, a checkpoint every 4 steps, no evaluation set.
CONFIG_ARGS = (
    "--config=configs/dpo.py:preset=tiny", f"--config.train.steps={STEPS}", "--config.train.batch_size=8",
    "--config.train.log_every=1", "--config.train.progress_bar=false", "--config.optim.warmup_steps=2",
    "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
    "--config.data.toy.num_train=64", "--config.data.toy.num_eval=0", "--config.eval.every=0",
    f"--config.checkpoint.every={CHECKPOINT_EVERY}", "--config.checkpoint.keep=10",
)
RUN_TIMEOUT = 300

pytestmark = pytest.mark.slow  # each test starts two or three training processes (30-90 s)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _launch(workdir: Path, processes: int, extra: tuple[str, ...] = ()) -> list[subprocess.Popen]:
  """Starts `processes` train.py processes with 4 / `processes` CPU devices each
  (`extra`: more config flags)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(4 // processes),
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  command = [sys.executable, str(REPO / "scripts" / "train.py"), *CONFIG_ARGS, *extra, f"--workdir={workdir}"]
  if processes > 1:
    address = f"127.0.0.1:{_free_port()}"
    commands = [command + [f"--coordinator_address={address}", f"--num_processes={processes}",
                           f"--process_id={i}"] for i in range(processes)]
  else:
    commands = [command]
  launched = []
  try:
    for i, argv in enumerate(commands):
      log = open(workdir.parent / f"{workdir.name}.process{i}.log", "ab")  # pylint: disable=consider-using-with
      launched.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
      log.close()
  except BaseException:
    _kill(launched)
    raise
  return launched


def _kill(processes: list[subprocess.Popen]) -> None:
  for process in processes:
    if process.poll() is None:
      process.kill()
  for process in processes:
    try:
      process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      pass


def _logs(workdir: Path) -> str:
  return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}"
                   for p in sorted(workdir.parent.glob(f"{workdir.name}.process*.log")))


def _run(workdir: Path, processes: int, extra: tuple[str, ...] = ()) -> None:
  """Runs train.py to completion (all processes must exit 0 within the timeout)."""
  launched = _launch(workdir, processes, extra)
  deadline = time.time() + RUN_TIMEOUT
  try:
    for process in launched:
      process.wait(timeout=max(deadline - time.time(), 1))
  except subprocess.TimeoutExpired:
    _kill(launched)
    pytest.fail(f"train.py did not finish within {RUN_TIMEOUT} s.\n{_logs(workdir)}")
  finally:
    _kill(launched)
  codes = [p.returncode for p in launched]
  assert codes == [0] * processes, f"exit codes {codes}\n{_logs(workdir)}"


def _checkpoints(workdir: Path) -> list[int]:
  """Committed checkpoint steps (orbax renames a step's folder to its number when done)."""
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _run_and_kill(workdir: Path, processes: int) -> int:
  """Starts a run, SIGKILLs every process once a checkpoint exists; returns that step."""
  launched = _launch(workdir, processes)
  deadline = time.time() + RUN_TIMEOUT
  try:
    while not _checkpoints(workdir):
      if time.time() > deadline:
        pytest.fail(f"no checkpoint within {RUN_TIMEOUT} s.\n{_logs(workdir)}")
      if any(p.poll() is not None for p in launched):
        pytest.fail(f"a process exited before the first checkpoint.\n{_logs(workdir)}")
      time.sleep(0.02)
    for process in launched:
      os.kill(process.pid, signal.SIGKILL)
  finally:
    _kill(launched)
  assert [p.returncode for p in launched] == [-signal.SIGKILL] * processes, _logs(workdir)
  saved = _checkpoints(workdir)[-1]
  assert CHECKPOINT_EVERY <= saved < STEPS, f"killed too late: checkpoints {_checkpoints(workdir)}"
  return saved


def _final_state(workdir: Path) -> dict[str, np.ndarray]:
  """{path: array} of the TrainState in the run's checkpoint of step STEPS, as NumPy."""
  assert _checkpoints(workdir)[-1] == STEPS, _checkpoints(workdir)
  path = workdir / "checkpoints" / str(STEPS) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path).item_metadata
  metadata = getattr(metadata, "tree", metadata)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Uninterrupted runs: one process with 4 devices, two processes with 2 devices each."""
  root = tmp_path_factory.mktemp("multihost")
  _run(root / "one_process", 1)
  _run(root / "two_processes", 2)
  return {"root": root, "one": _final_state(root / "one_process"), "two": _final_state(root / "two_processes")}


def _assert_bitwise_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
  assert sorted(actual) == sorted(expected)
  for name in expected:
    np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_two_processes_equal_one_process(runs):
  one, two = runs["one"], runs["two"]
  assert sorted(one) == sorted(two)
  params = [name for name in one if name.startswith("['params']")]
  assert len(params) > 10
  assert int(two["['step']"]) == int(one["['step']"]) == STEPS
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-6, atol=1e-7, err_msg=name)
  # Both runs logged the same losses step by step (process 0 writes metrics.jsonl).
  def losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["split"] == "train"]

  one_losses, two_losses = losses(runs["root"] / "one_process"), losses(runs["root"] / "two_processes")
  assert [s for s, _ in one_losses] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([l for _, l in two_losses], [l for _, l in one_losses], rtol=1e-6)
  # Training moved the parameters: the runs are not two untouched initialisations.
  assert one_losses[-1][1] < one_losses[0][1] - 0.01


@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_then_resume_is_bitwise_equal(runs, processes):
  workdir = runs["root"] / f"killed_{processes}"
  saved = _run_and_kill(workdir, processes)
  _run(workdir, processes)
  log = _logs(workdir)
  assert f"resumed from {workdir / 'checkpoints'} step {saved}" in log, log
  expected = runs["one"] if processes == 1 else runs["two"]
  _assert_bitwise_equal(_final_state(workdir), expected)
  # The steps logged after the checkpoint and before the kill were dropped on resume:
  # metrics.jsonl holds every step once.
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, STEPS + 1))


def test_padding_free_two_processes_equal_one_process_and_the_two_row_run(runs):
  # Every process packs the same global batch; the on-the-fly reference of a batch packed
  # in two microbatches is put back in batch order (padding_free.batch_order).
  extra = ("--config.data.padding_free=true", "--config.data.share_prompt=true",
           "--config.reference.mode=on_the_fly", "--config.train.microbatches=2")
  root = runs["root"]
  _run(root / "padding_free_1", 1, extra)
  _run(root / "padding_free_2", 2, extra)
  one, two = _final_state(root / "padding_free_1"), _final_state(root / "padding_free_2")
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-6, atol=1e-7, err_msg=name)
  # Same log-probs as the padded two-row run, up to float rounding: the same training.
  for name in one:
    if name.startswith("['params']"):
      np.testing.assert_allclose(one[name], runs["one"][name], rtol=1e-3, atol=1e-5, err_msg=name)
