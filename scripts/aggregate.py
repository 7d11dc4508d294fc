r"""Aggregates a file of human annotations into labels with a confidence, and reports.

  python scripts/aggregate.py --config=configs/aggregate.py \
      --config.input=../shared/data/crowd/duck/answers.csv --config.format=crowd_csv \
      --config.method=dawid_skene --config.output_dir=/tmp/duck

Writes DIR/labels.csv, DIR/annotators.csv, DIR/rejects.jsonl, DIR/report.md (with PNG
plots) and DIR/summary.json, and prints a summary. Every field of configs/aggregate.py
can be overridden with `--config.<field>=<value>`; an unknown field is an error.

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

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/aggregate.py.", lock_config=True)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of a user error.")

USAGE_ERROR = 2


def _fail(message: str) -> None:
  print(f"aggregate.py: error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def _config_typo(argv: list[str]) -> str | None:
  """Explains the first `--config.<path>=...` naming a field that does not exist."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  try:
    import importlib.util  # pylint: disable=g-import-not-at-top
    module_spec = importlib.util.spec_from_file_location("_aggregate_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
  except Exception:  # pylint: disable=broad-except
    return None
  for item in argv:
    if not item.startswith("--config."):
      continue
    field = item[len("--config."):].split("=", 1)[0]
    node, walked = config, []
    for part in field.split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        where = "config" + "".join(f".{w}" for w in walked)
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
        return (f"unknown config field {field!r} in {item!r}: {where} has no field {part!r}. "
                f"Valid fields of {where}: {valid}.")
      node = node[part]
      walked.append(part)
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as error:
    _fail(_config_typo(argv) or f"invalid config override: {error}")
  except flags.Error as error:
    message = str(error)
    if "Traceback (most recent call last)" in message:
      # The config file's own error: keep the flag and the final exception line.
      lines = [line for line in message.splitlines() if line.strip()]
      message = f"{lines[0]} {lines[-1]}"
    _fail(f"{message} (pass --helpfull to see the flags)")
  return []


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; every setting is a --config.<field>=<value> flag.")
  if _CONFIG.value is None:
    _fail("--config is required, e.g. --config=configs/aggregate.py "
          "--config.input=answers.csv --config.output_dir=out")

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news.
  from rlhf_jax.feedback import pipeline  # pylint: disable=g-import-not-at-top

  try:
    outputs = pipeline.run(_CONFIG.value)
  except pipeline.USER_ERRORS as error:
    if _TRACEBACK.value:
      raise
    _fail(str(error))
  print(outputs.summary_text())


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
