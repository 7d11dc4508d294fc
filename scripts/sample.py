r"""Samples completions of a file of prompts from a trained policy: one JSON line per completion.

  python scripts/sample.py --workdir=runs/sft --input=prompts.jsonl --output=completions.jsonl \
      --temperature=0.7 --top_p=0.9 --num_samples=4 --max_new_tokens=64

`--workdir` is a run of scripts/train.py that trains a language model (sft, dpo, simpo,
orpo, kto): its config.json, tokenizer and newest checkpoint are used, and prompts are
tokenized as the trainer tokenized them ([bos] prompt, cut from the left to the run's
data.max_prompt_length). A run on the synthetic toy data has no tokenizer: its prompts
and completions are token ids separated by spaces ("5 17 9").

`--input` holds prompts: JSON Lines, Parquet or CSV records with a "prompt" field (and
an optional "id"), or a text file (.txt) with one prompt per line. Each output line has
the prompt's line (or row), id, prompt, sample index, completion, num_tokens (the stop
token included), finished (ended with the end-of-sequence or a --stop_ids token),
logprob (summed policy log-probs) and sampling_logprob (summed under the sampling
distribution). Unusable prompts go to `--rejects` (default: the output's name with
`.rejects.jsonl`) with the line, field and reason; read = sampled + rejected. The
sampling itself is `rlhf_jax.models.generate` (rlhf_jax/train/sampling.py).
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
from pathlib import Path

from absl import app, flags, logging

from rlhf_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of a trained policy (scripts/train.py).")
_INPUT = flags.DEFINE_string("input", None, "Prompts: JSON Lines / Parquet / CSV with a 'prompt' field, or .txt.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON Lines file of completions, one line per completion.")
_REJECTS = flags.DEFINE_string("rejects", None, "Unusable prompts with their reasons (default: "
                               "<output without .jsonl>.rejects.jsonl).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 0, "Tokens to draw per completion (the stop token "
                                       "included); 0: the run's data.max_length - data.max_prompt_length.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Divides the logits; 0 is greedy decoding.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most probable tokens; 0: all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the most probable tokens up to this mass; 1: off.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Completions per prompt.")
_STOP_IDS = flags.DEFINE_list("stop_ids", [], "Token ids that end a completion besides the end-of-sequence id.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed; a prompt's completions depend on it and its line number.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Prompts per sampler call; 0 uses the run's eval.batch_size.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of a user error.")
# Exit code of a user mistake (one line on stderr), as scripts/train.py and score.py.
USER_ERROR = 1


def _default_rejects(output: str) -> str:
  path = Path(output)
  stem = path.name[:-len(".jsonl")] if path.name.endswith(".jsonl") else path.name
  return os.fspath(path.with_name(f"{stem}.rejects.jsonl"))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail("sample.py", f"unexpected arguments: {argv[1:]}", USER_ERROR)
  if not (_WORKDIR.value and _INPUT.value and _OUTPUT.value):
    cli.fail("sample.py", "--workdir, --input and --output are required.", USER_ERROR)
  for flag in (_BATCH_SIZE, _MAX_NEW_TOKENS):
    if flag.value < 0:
      cli.fail("sample.py", f"--{flag.name} must be >= 0, got {flag.value}.", USER_ERROR)
  try:
    stop_ids = [int(value) for value in _STOP_IDS.value]
  except ValueError:
    cli.fail("sample.py", f"--stop_ids must be token ids (ints), got {','.join(_STOP_IDS.value)}.", USER_ERROR)
  sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  py_logging.getLogger("rlhf_jax").setLevel(py_logging.WARNING)

  from rlhf_jax import data  # pylint: disable=g-import-not-at-top
  from rlhf_jax.train import rundir, sampling  # pylint: disable=g-import-not-at-top

  rejects = _REJECTS.value or _default_rejects(_OUTPUT.value)
  try:
    policy = sampling.load_policy(_WORKDIR.value, batch_size=_BATCH_SIZE.value or None)
    config = policy.sampling_config(
        max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
        top_p=_TOP_P.value, num_samples=_NUM_SAMPLES.value, stop_ids=stop_ids)
    summary = sampling.sample_file(policy, _INPUT.value, _OUTPUT.value, rejects_path=rejects, config=config,
                                   seed=_SEED.value)
  except (data.DataError, FileNotFoundError, ValueError) as error:
    if _TRACEBACK.value:
      raise
    cli.fail("sample.py", error, USER_ERROR)
  line = (f"sampled {summary['completions']} completions of {summary['sampled']} of {summary['read']} prompts of "
          f"{summary['input']} with {summary['workdir']} at step {summary['checkpoint_step']} into "
          f"{summary['output']}; {100 * summary['finished_fraction']:.0f}% finished, "
          f"{summary['mean_tokens']:.1f} tokens on average")
  if summary["rejected"]:
    line += f"; {summary['rejected']} rejected, reasons in {summary['rejects']} (first: {summary['first_reject']})"
  print(line + ".")
  print(rundir.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("sample.py", USER_ERROR))
