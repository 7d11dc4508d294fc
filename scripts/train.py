r"""Trains an RLHF objective from a config file: one command from data to checkpoints.

  python scripts/train.py --config=configs/dpo.py:preset=tiny --workdir=/tmp/dpo
  python scripts/train.py --config=configs/ppo.py:preset=tiny --workdir=/tmp/ppo
  python scripts/train.py --config=configs/reward_model.py:preset=125m --workdir=runs/rm \
      --config.data.train=train.jsonl.gz --config.data.eval=test.jsonl.gz \
      --config.optim.learning_rate=5e-6

Offline objectives (sft, reward_model, the DPO family, kto) train with
`rlhf_jax.train.train`, online ones (ppo, grpo, rloo, online_dpo) with `rlhf_jax.rl.train`
(the objective's `online` flag decides); both keep the run directory the same way.

`--config.<field>=<value>` overrides any field; an unknown field is an error (the config
is locked). Rerunning with the same workdir resumes from its newest checkpoint, when the
workdir's config.json holds the same config: a different one is refused with the fields
that differ (old -> new), except the fields that may change on resume
(`rlhf_jax.train.MAY_CHANGE_ON_RESUME`: train.steps, logging, evaluation and checkpoint
cadence, the mesh and other layouts). `--force_new` starts afresh, moving the earlier
run's files to <workdir>/superseded/<time>/. SIGTERM saves a checkpoint at the next
step and stops; after a kill, metrics.jsonl keeps each step once.

Exit codes: 0 finished; 75 stopped with a checkpoint (SIGTERM or --stop_at_step), rerun
the same command to resume; 1 a user mistake (config, workdir, data), printed as one
line without a traceback (`--traceback` shows it).

Multi-process (one process per host): pass `--coordinator_address=host:port
--num_processes=N --process_id=i`, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID, or run under a cluster JAX detects itself (SLURM, Open MPI, TPU pods).
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from rlhf_jax import cli, host_memory

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/dpo.py:preset=tiny.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, config).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_STOP_AT_STEP = flags.DEFINE_integer(
    "stop_at_step", None, "Stop (with a checkpoint) at this step, as a preemption would.")
_FORCE_NEW = flags.DEFINE_bool(
    "force_new", False, "Start afresh in a workdir holding a run: its files are moved to "
    "<workdir>/superseded/<time>/ (instead of resuming, or refusing another config).")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of a user error.")
_KEEP_FREED_MEMORY = flags.DEFINE_bool(
    "keep_freed_memory", True,
    "Let glibc malloc keep freed memory for the next step instead of returning it to the "
    "kernel (rlhf_jax.host_memory): XLA:CPU steps then stop page-faulting their buffers.")

USER_ERROR = 1

# Cluster environments that `jax.distributed.initialize()` detects by itself.
_CLUSTER_VARIABLES = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def _initialize_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  given = [_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value]
  if any(v is not None for v in given):
    if any(v is None for v in given):
      raise app.UsageError(
          "multi-process runs need all of --coordinator_address, --num_processes, --process_id.")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        os.environ["JAX_COORDINATOR_ADDRESS"],
        int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ else None,
        int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None)
  elif any(v in os.environ for v in _CLUSTER_VARIABLES):
    try:
      jax.distributed.initialize()
    except (RuntimeError, ValueError) as error:
      logging.warning("no multi-process cluster detected (%s); running as one process.", error)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required.")
  sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))
  # Our progress messages at INFO; the libraries' (orbax is chatty) at WARNING unless
  # --verbosity asks for more.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  py_logging.getLogger("rlhf_jax").setLevel(py_logging.INFO)
  if _KEEP_FREED_MEMORY.value:  # before any thread of XLA or jax.distributed allocates
    logging.info("host memory: %s", host_memory.keep_freed_memory())
  _initialize_distributed()

  from rlhf_jax import data, rl, train  # pylint: disable=g-import-not-at-top

  user_errors = (data.DataError, train.TrainingError, FileNotFoundError, ValueError, KeyError)
  try:
    run = rl.train if train.objectives.get(_CONFIG.value.objective).online else train.train
    results = run(_CONFIG.value, _WORKDIR.value, stop_at_step=_STOP_AT_STEP.value, force_new=_FORCE_NEW.value)
  except user_errors as error:
    if _TRACEBACK.value:
      raise
    cli.fail("train.py", error, USER_ERROR)
  results.pop("state", None)
  import jax  # pylint: disable=g-import-not-at-top
  from rlhf_jax.train import rundir  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(rundir.dumps({k: v for k, v in results.items() if v is None or isinstance(v, (int, float, bool, str))},
                       sort_keys=True))
    if results.get("preempted"):
      print(f"stopped at step {results['step']} with a checkpoint in {_WORKDIR.value}; rerun the "
            f"same command to resume (exit code {cli.EXIT_STOPPED}).", file=sys.stderr)
  if results.get("preempted"):
    sys.exit(cli.EXIT_STOPPED)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main, flags_parser=cli.flags_parser("train.py", USER_ERROR))
