r"""Runs an ablation: a grid of config overrides times seeds, resumable.

  python scripts/ablate.py --config=experiments/redundancy/config.py [--seeds=5] [--workers=1]

Writes experiments/NAME/results.jsonl (one line per cell and seed), the plots and
README.md (table of means with 95% t-intervals, paired differences against the baseline,
the command and runtime; the author's conclusion is kept). Finished cells are not rerun;
`--fresh` deletes results.jsonl first. The seeds of a cell whose function is a
`rlhf_jax.ablate.SeedProgram` run as one vmapped program where their shapes agree
(`--novectorize`: seed after seed). Exit codes: 0 every cell finished, 1 some cell
failed (shown as FAILED in the table), 2 a user mistake (printed as one line).
"""

import os
import shlex
import sys
from pathlib import Path

from absl import app, flags

# Runnable from a checkout without installation.
sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from rlhf_jax import ablate, cli  # pylint: disable=g-import-not-at-top,wrong-import-position

USER_ERROR = 2
flags.DEFINE_string("config", None, "The experiment's config file, experiments/NAME/config.py.", required=True)
flags.DEFINE_integer("seeds", None, "Number of seeds (default: the config's `seeds`).")
flags.DEFINE_integer("workers", 1, "Cells run in this many processes.")
flags.DEFINE_string("output_dir", None, "Where results.jsonl, the plots and README.md go (default: the config's folder).")
flags.DEFINE_bool("fresh", False, "Delete results.jsonl first (rerun every cell).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("vectorize", True, "Run the seeds of a cell in one vmapped program where their shapes agree "
                  "(--novectorize: seed after seed, to time or check the difference).")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail("ablate.py", f"unexpected arguments {argv[1:]}.", USER_ERROR)
  config_path = Path(FLAGS.config)
  output_dir = Path(FLAGS.output_dir) if FLAGS.output_dir else config_path.parent
  try:
    config = cli.load_config_file(config_path)
    if FLAGS.fresh:
      (output_dir / ablate.runner.RESULTS_FILE).unlink(missing_ok=True)
    command = "python scripts/ablate.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:] if not a.startswith(("--fresh", "--workers", "--noprogress", "--vectorize", "--novectorize")))
    summary = ablate.run(config, output_dir, seeds=FLAGS.seeds, workers=FLAGS.workers, progress=FLAGS.progress,
                         command=command, vectorize=FLAGS.vectorize)
  except (ValueError, KeyError, FileNotFoundError) as error:
    cli.fail("ablate.py", error, USER_ERROR)
  print(summary.table)
  print(f"{summary.ran} cells run, {summary.skipped} already finished; {summary.seconds:.0f} s. "
        f"Written to {output_dir}.")
  if summary.failed:
    print(f"{len(summary.failed)} cell(s) FAILED: {', '.join(summary.failed)}")
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("ablate.py", USER_ERROR))
