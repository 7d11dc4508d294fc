r"""Writes a run's checkpoint as a Hugging Face checkpoint (safetensors, config, tokenizer).

  python scripts/export.py --workdir=runs/dpo --output=exports/dpo
  python scripts/export.py --workdir=runs/rm --output=exports/rm --drop_head_bias
  python scripts/export.py --workdir=runs/ppo --output=exports/critic --part=value
  python scripts/export.py --workdir=runs/lora_dpo --output=exports/adapter --lora_format=peft

`--workdir` is a run of scripts/train.py (offline or online): its config.json, tokenizer
and newest checkpoint are read. A policy is written as `*ForCausalLM`, a reward model or
PPO critic as `*ForSequenceClassification`; `transformers` and `rlhf_jax.hf.load` read
it back with the same logits. A LoRA run writes the adapters merged into its base
(default) or, with `--lora_format=peft`, the adapters alone in PEFT's layout
(adapter_config.json, adapter_model.safetensors) for the base of its model.init_from.
The library side is `rlhf_jax/train/export.py`.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
from pathlib import Path

from absl import app, flags, logging

from rlhf_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (scripts/train.py).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory of the Hugging Face checkpoint to write.")
_PART = flags.DEFINE_enum("part", "auto", ["auto", "policy", "reward", "value"],
                          "Which model: auto (the run's own; the policy of a PPO run), or policy / reward / value "
                          "(the critic of a PPO run).")
_LORA_FORMAT = flags.DEFINE_enum("lora_format", "merged", ["merged", "peft"],
                                 "LoRA runs: merged weights, or the adapters alone in the PEFT layout.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Tensor dtype (default: the parameters').")
_PAD_TOKEN_ID = flags.DEFINE_integer("pad_token_id", None, "pad_token_id of config.json (default: the tokenizer's).")
_DROP_HEAD_BIAS = flags.DEFINE_bool("drop_head_bias", False, "Write a reward / value head with a nonzero bias "
                                    "without it (Hugging Face's score head has none).")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of a user error.")
USER_ERROR = 1


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail("export.py", f"unexpected arguments: {argv[1:]}", USER_ERROR)
  if not (_WORKDIR.value and _OUTPUT.value):
    cli.fail("export.py", "--workdir and --output are required.", USER_ERROR)
  sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  py_logging.getLogger("rlhf_jax").setLevel(py_logging.WARNING)

  from rlhf_jax import data  # pylint: disable=g-import-not-at-top
  from rlhf_jax.train import export, rundir  # pylint: disable=g-import-not-at-top

  try:
    summary = export.export_run(_WORKDIR.value, _OUTPUT.value, part=_PART.value, lora_format=_LORA_FORMAT.value,
                                dtype=_DTYPE.value, pad_token_id=_PAD_TOKEN_ID.value,
                                drop_head_bias=_DROP_HEAD_BIAS.value)
  except (data.DataError, FileNotFoundError, ValueError) as error:
    if _TRACEBACK.value:
      raise
    cli.fail("export.py", error, USER_ERROR)
  print(f"wrote the {summary['written']} of {summary['kind']} ({summary['parameters']} parameters) of "
        f"{summary['workdir']} at step {summary['checkpoint_step']} to {summary['output']}.")
  print(rundir.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("export.py", USER_ERROR))
