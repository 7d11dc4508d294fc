r"""The job behind `make run`: feedback methods compared on the graded world.

  python scripts/run_world.py [--seeds=3] [--num_pairs=1000]

Prints label accuracy (majority vote, Dawid-Skene, Crowd-BT) and reward-model accuracy
(hard vs confidence-weighted labels, and the gold ceiling), each a mean with a 95%
t-interval over seeds, and a one-line reading of each paired comparison
(`rlhf_jax.worlds.compare`). The end-to-end pipeline on the keyword task (records,
aggregation report, transformer reward model and DPO) is `python scripts/run.py`.
"""

import os
import sys
from pathlib import Path

from absl import app, flags, logging

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from rlhf_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from rlhf_jax.worlds import compare  # pylint: disable=g-import-not-at-top,wrong-import-position

USER_ERROR = 2
flags.DEFINE_integer("seeds", 3, "Seeds (world, pairs and crowd change with each).", lower_bound=2)
flags.DEFINE_integer("num_pairs", 1000, "Pairs labelled per seed.", lower_bound=10)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail("run_world.py", f"unexpected arguments {argv[1:]}.", USER_ERROR)
  logging.set_verbosity(logging.WARNING)
  print(compare.format_report(compare.compare(num_seeds=FLAGS.seeds, num_pairs=FLAGS.num_pairs)))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("run_world.py", USER_ERROR))
