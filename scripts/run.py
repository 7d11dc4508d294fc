r"""The end-to-end job behind `make pipeline`: feedback -> labels -> reward model and DPO.

(`make run` compares the feedback methods on the graded world: scripts/run_world.py.)

  python scripts/run.py                                   # configs/pipeline.py, runs/pipeline
  python scripts/run.py --config.aggregate.method=mace --workdir=/tmp/run
  python scripts/run.py --demo_losses                     # only the objectives table

The workdir knows what it is: rerunning with the config of the run it holds resumes it
(finished training stages report their recorded numbers); another config is refused
before any work, with the fields that differ (old -> new), except the fields that may
change on resume (`experiments.pipeline.MAY_CHANGE_ON_RESUME`: a training stage's steps,
cadences and layout). `--force_new` moves the earlier run's files to
<workdir>/superseded/<time>/ and runs every stage afresh; or choose another --workdir.

Exit codes: 0 finished; 75 a training stage was stopped by SIGTERM with a checkpoint
(no summary is written), rerun the same command to resume; 2 a user mistake (config
field, annotator shares, workdir, input), printed as one line without a traceback
(`--traceback` shows it).
"""

import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

# Runnable from a checkout without installation.
sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from experiments import demo, pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from rlhf_jax import cli, host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline.py"
USER_ERROR = 2
config_flags.DEFINE_config_file("config", None, f"Pipeline config file (default {DEFAULT_CONFIG}).",
                                lock_config=True)
flags.DEFINE_string("workdir", "runs/pipeline", "Directory for every stage's outputs.")
flags.DEFINE_bool("force_new", False, "Start afresh in a workdir holding a run: its files are moved to "
                  "<workdir>/superseded/<time>/ (instead of resuming, or refusing another config).")
flags.DEFINE_bool("demo_losses", False, "Only evaluate every objective on a small batch.")
flags.DEFINE_bool("keep_freed_memory", True,
                  "Let glibc malloc keep freed memory for the next step (rlhf_jax.host_memory).")
flags.DEFINE_bool("traceback", False, "Show the traceback of a user error.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail("run.py", f"unexpected arguments {argv[1:]}; every setting is a --config.<field>=<value> flag.",
             USER_ERROR)
  if FLAGS.keep_freed_memory:  # before XLA starts its threads
    host_memory.keep_freed_memory()
  if FLAGS.demo_losses:
    demo.main()
    return
  # Checkpoint libraries log every save at INFO; the job prints its own summary.
  logging.set_verbosity(logging.WARNING)
  try:
    summary = pipeline.run(FLAGS.config, FLAGS.workdir, force_new=FLAGS.force_new)
  except pipeline.USER_ERRORS as error:
    if FLAGS.traceback:
      raise
    cli.fail("run.py", error, USER_ERROR)
  print(pipeline.format_summary(summary))
  if summary.get("stopped"):
    sys.exit(cli.EXIT_STOPPED)


if __name__ == "__main__":
  # The default config goes in as a flag so that overrides of it are parsed like any other.
  if not any(arg == "--config" or arg.startswith("--config=") for arg in sys.argv[1:]):
    sys.argv.insert(1, f"--config={DEFAULT_CONFIG}")
  app.run(main, flags_parser=cli.flags_parser("run.py", USER_ERROR))
