r"""Aggregates a file of human annotations into labels with a confidence, and reports.

  python scripts/aggregate.py --config=configs/aggregate.py \
      --config.input=../shared/data/crowd/duck/answers.csv --config.format=crowd_csv \
      --config.method=dawid_skene --config.output_dir=/tmp/duck

Writes DIR/labels.csv, DIR/annotators.csv, DIR/rejects.jsonl, DIR/report.md (with PNG
plots) and DIR/summary.json, and prints a summary. For pairwise preferences (classes a, b,
tie) also the training file DIR/train.jsonl (texts, soft target, confidence as weight,
annotation ids; expert decisions included), which

  python scripts/train.py --config=configs/reward_model.py --config.data.train=DIR/train.jsonl

reads unchanged, DIR/awaiting_review.jsonl (items routed to expert review without a
decision yet) and DIR/train_rejects.jsonl (items the trainer would refuse, with the
reason): every item is in exactly one of the three. Every field of configs/aggregate.py
can be overridden with `--config.<field>=<value>`; an unknown field is an error.
`--config.classes=0,1` declares the classes: an answer outside them (a typo such as `O`
or `yes`) goes to rejects.jsonl with its line instead of becoming a class.

Streaming: `--follow=DIR` aggregates every batch file that appears in DIR as it arrives
(a long-lived job; killed and restarted it resumes from its checkpoint in
--config.output_dir), writing changes/, rejects/, annotators.csv and labels.csv:

  python scripts/aggregate.py --config=configs/aggregate.py --config.format=jsonl \
      --config.output_dir=runs/stream --follow=incoming/

Exit codes: 0 done; 2 a user mistake (unknown or invalid config field, missing or
unusable input), printed as one message without a traceback (`--traceback` shows it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

# Runnable from a checkout without installation.
sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from rlhf_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/aggregate.py.", lock_config=True)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of a user error.")
_FOLLOW = flags.DEFINE_string(
    "follow", None, "Stream: aggregate every batch file that appears in this folder, "
    "checkpointing in --config.output_dir (rlhf_jax/feedback/workflow/stream.py).")
_POLL_SECONDS = flags.DEFINE_float("poll_seconds", 2.0, "--follow: seconds between folder scans.")
_IDLE_EXIT = flags.DEFINE_float(
    "idle_exit_seconds", None, "--follow: exit once no new batch arrived for this long "
    "(default: run until killed).")

USAGE_ERROR = 2


def _fail(message: str) -> None:
  print(f"aggregate.py: error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def _follow() -> None:
  """--follow=DIR: the streaming aggregator (rlhf_jax/feedback/workflow/stream.py)."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from rlhf_jax.feedback.workflow import stream  # pylint: disable=g-import-not-at-top
  try:
    stream.run_follow(_CONFIG.value, _FOLLOW.value, poll_seconds=_POLL_SECONDS.value,
                      idle_exit_seconds=_IDLE_EXIT.value)
  except (ValueError, FileNotFoundError) as error:
    if _TRACEBACK.value:
      raise
    _fail(str(error))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; every setting is a --config.<field>=<value> flag.")
  if _CONFIG.value is None:
    _fail("--config is required, e.g. --config=configs/aggregate.py "
          "--config.input=answers.csv --config.output_dir=out")
  cli.enable_compilation_cache()  # a second run loads its compiled programs from disk
  if _FOLLOW.value:
    _follow()
    return

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news.
  from rlhf_jax.feedback.workflow import pipeline  # pylint: disable=g-import-not-at-top

  try:
    outputs = pipeline.run(_CONFIG.value)
  except pipeline.USER_ERRORS as error:
    if _TRACEBACK.value:
      raise
    _fail(str(error))
  print(outputs.summary_text())


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("aggregate.py", USAGE_ERROR))
