r"""Scores a data file with a trained reward model: one JSON line of scores per record.

  python scripts/score.py --workdir=runs/rm --input=test.jsonl.gz --output=scores.jsonl

`--workdir` is a reward-model run of scripts/train.py trained on a data file (its
config.json, tokenizer and newest checkpoint are used; texts are tokenized as the
trainer tokenized them). `--input` holds preference pairs (any pair format of
`rlhf_jax.data`: hh_rlhf, explicit, messages, feedback_labels) or (prompt, completion)
records (prompt+completion, text, or messages); `--kind` and `--format` choose
explicitly. Pairs print the pairwise accuracy against their labels (ties left out).
Unusable records go to `--rejects` (default: the output's name with `.rejects.jsonl`)
with the line, field and reason; read = scored + rejected.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import sys
from pathlib import Path

from absl import app, flags, logging

from rlhf_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of a trained reward model (scripts/train.py).")
_INPUT = flags.DEFINE_string("input", None, "Records to score: JSON Lines, Parquet or CSV.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON Lines file of scores, one line per scored record.")
_REJECTS = flags.DEFINE_string("rejects", None, "Unusable records with their reasons (default: "
                               "<output without .jsonl>.rejects.jsonl).")
_KIND = flags.DEFINE_enum("kind", "auto", ["auto", "pairs", "completions"],
                          "What the records are; auto decides from the first record's fields.")
_FORMAT = flags.DEFINE_string("format", "auto", "Record format of that kind (rlhf_jax.data formats), or auto.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Rows per forward pass; 0 uses the run's eval.batch_size.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of a user error.")


def _default_rejects(output: str) -> str:
  path = Path(output)
  stem = path.name[:-len(".jsonl")] if path.name.endswith(".jsonl") else path.name
  return os.fspath(path.with_name(f"{stem}.rejects.jsonl"))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not (_WORKDIR.value and _INPUT.value and _OUTPUT.value):
    raise app.UsageError("--workdir, --input and --output are required.")
  if _BATCH_SIZE.value < 0:
    raise app.UsageError(f"--batch_size must be >= 0, got {_BATCH_SIZE.value}.")
  sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  py_logging.getLogger("rlhf_jax").setLevel(py_logging.WARNING)

  from rlhf_jax import data  # pylint: disable=g-import-not-at-top
  from rlhf_jax.train import score  # pylint: disable=g-import-not-at-top

  rejects = _REJECTS.value or _default_rejects(_OUTPUT.value)
  try:
    scorer = score.load_reward_model(_WORKDIR.value, batch_size=_BATCH_SIZE.value or None)
    summary = score.score_file(scorer, _INPUT.value, _OUTPUT.value, rejects_path=rejects, kind=_KIND.value,
                               format=_FORMAT.value)
  except (data.DataError, score.ScoreError, FileNotFoundError, ValueError) as error:
    if _TRACEBACK.value:
      raise
    print(f"score.py: error: {error}", file=sys.stderr)
    sys.exit(1)
  line = (f"scored {summary['scored']} of {summary['read']} records of {summary['input']} ({summary['kind']}, "
          f"{summary['format']}) with {summary['workdir']} at step {summary['checkpoint_step']} into "
          f"{summary['output']}")
  if summary["rejected"]:
    line += (f"; {summary['rejected']} rejected, reasons in {summary['rejects']} (first: "
             f"{summary['first_reject']})")
  print(line + ".")
  if summary["kind"] == "pairs":
    accuracy = summary["accuracy"]
    print(f"pairwise accuracy {'-' if accuracy is None else f'{accuracy:.4f}'} on {summary['decided_pairs']} "
          f"labelled pairs ({summary['ties']} ties left out).")
  print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("score.py", 1))
