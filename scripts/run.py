r"""The main job behind `make run`: feedback -> labels -> reward model and DPO, end to end.

  python scripts/run.py                                   # configs/pipeline.py, runs/pipeline
  python scripts/run.py --config.aggregate.method=mace --workdir=/tmp/run
  python scripts/run.py --demo_losses                     # only the objectives table
"""

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from rlhf_jax import cli, demo, host_memory, pipeline

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline.py"
config_flags.DEFINE_config_file("config", None, f"Pipeline config file (default {DEFAULT_CONFIG}).",
                                lock_config=True)
flags.DEFINE_string("workdir", "runs/pipeline", "Directory for every stage's outputs.")
flags.DEFINE_bool("demo_losses", False, "Only evaluate every objective on a small batch.")
flags.DEFINE_bool("keep_freed_memory", True,
                  "Let glibc malloc keep freed memory for the next step (rlhf_jax.host_memory).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.keep_freed_memory:  # before XLA starts its threads
    host_memory.keep_freed_memory()
  if FLAGS.demo_losses:
    demo.main()
    return
  # Checkpoint libraries log every save at INFO; the job prints its own summary.
  logging.set_verbosity(logging.WARNING)
  summary = pipeline.run(FLAGS.config, FLAGS.workdir)
  print(pipeline.format_summary(summary))


if __name__ == "__main__":
  # The default config goes in as a flag so that overrides of it are parsed like any other.
  if not any(arg == "--config" or arg.startswith("--config=") for arg in sys.argv[1:]):
    sys.argv.insert(1, f"--config={DEFAULT_CONFIG}")
  app.run(main, flags_parser=cli.flags_parser("run.py", 2))
