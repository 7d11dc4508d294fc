r"""Plans the next batch of annotation tasks: adaptive redundancy, golden items, hard items to
skilled annotators under a load cap, prices, guideline version (rlhf_jax/feedback/workflow/plan.py).

  python scripts/plan_tasks.py --config=configs/plan_tasks.py \
      --config.labels=runs/labels/labels.csv --config.annotators=runs/labels/annotators.csv \
      --config.annotations=prefs.jsonl --config.budget=500 --config.guideline_version=v2 \
      --config.output_dir=runs/plan1

Writes tasks.jsonl, tasks_label_studio.json (Label Studio import), unassigned.jsonl and
plan.json to the output folder. Exit code 2 on a user mistake, one line on stderr.
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
    "config", None, "Config file, e.g. configs/plan_tasks.py.", lock_config=True)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of a user error.")
USAGE_ERROR = 2


def main(argv: list[str]) -> None:
  if len(argv) > 1 or _CONFIG.value is None:
    print("plan_tasks.py: error: --config is required and every setting is a "
          "--config.<field>=<value> flag.", file=sys.stderr)
    sys.exit(USAGE_ERROR)
  config = _CONFIG.value
  missing = [f for f in ("labels", "annotators", "output_dir", "guideline_version")
             if not config[f]]
  if missing or not config.budget > 0:
    print(f"plan_tasks.py: error: set --config.{(missing or ['budget'])[0]} "
          "(labels, annotators, output_dir, guideline_version and a budget > 0 are required).",
          file=sys.stderr)
    sys.exit(USAGE_ERROR)
  cli.enable_compilation_cache()
  from rlhf_jax.feedback.workflow import plan  # pylint: disable=g-import-not-at-top
  from rlhf_jax import feedback  # pylint: disable=g-import-not-at-top
  try:
    summary = plan.run(config)
  except (ValueError, FileNotFoundError, feedback.FeedbackInputError) as error:
    if _TRACEBACK.value:
      raise
    print(f"plan_tasks.py: error: {error}", file=sys.stderr)
    sys.exit(USAGE_ERROR)
  shown = {k: summary[k] for k in ("num_tasks", "by_kind", "by_reason", "spent", "budget",
                                   "num_unfunded", "num_unassigned", "num_annotators",
                                   "max_load", "num_hard", "guideline_version")}
  print(json.dumps(shown, indent=1))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("plan_tasks.py", USAGE_ERROR))
