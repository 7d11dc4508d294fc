r"""Audits labels against a reward model: the labels it disputes most confidently with the
annotators behind each, annotator report cards (CSV + a PNG per group), dataset balance
with rebalancing weights (rlhf_jax/feedback/workflow/audit.py).

  python scripts/audit_labels.py --config=configs/audit_labels.py \
      --config.annotations=prefs.jsonl --config.labels=runs/labels/labels.csv \
      --config.reward_model=runs/rm --config.output_dir=runs/audit

`--config.scores=FILE` takes model probabilities from a file instead of a reward model.
Exit code 2 on a user mistake, one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from rlhf_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/audit_labels.py.", lock_config=True)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of a user error.")
USAGE_ERROR = 2


def main(argv: list[str]) -> None:
  config = _CONFIG.value
  missing = ([] if config is None else
             [f for f in ("annotations", "labels", "output_dir") if not config[f]])
  if len(argv) > 1 or config is None or missing:
    print("audit_labels.py: error: --config plus --config.annotations, --config.labels and "
          "--config.output_dir are required.", file=sys.stderr)
    sys.exit(USAGE_ERROR)
  cli.enable_compilation_cache()
  from rlhf_jax import feedback  # pylint: disable=g-import-not-at-top
  from rlhf_jax.feedback.workflow import audit  # pylint: disable=g-import-not-at-top
  try:
    summary = audit.run(config)
  except (ValueError, FileNotFoundError, feedback.FeedbackInputError) as error:
    if _TRACEBACK.value:
      raise
    print(f"audit_labels.py: error: {error}", file=sys.stderr)
    sys.exit(USAGE_ERROR)
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("audit_labels.py", USAGE_ERROR))
