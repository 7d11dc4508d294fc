"""Trains a sentencepiece tokenizer with explicit pad/unk/bos/eos ids (0/1/2/3).

  python scripts/train_tokenizer.py \
      --input=../shared/data/hh-rlhf/harmless-base-test-head1500.jsonl.gz \
      --model_prefix=/tmp/tok/hh --vocab_size=8000

writes /tmp/tok/hh.model and /tmp/tok/hh.vocab. Inputs are text files (one text per
line) or data files (JSON Lines, Parquet, CSV: every string field, chat messages
rendered); see `rlhf_jax.data.tokenizer`.
"""

import sys

from absl import app, flags

from rlhf_jax import data

_INPUT = flags.DEFINE_list("input", None, "Corpus files, comma-separated.", required=True)
_MODEL_PREFIX = flags.DEFINE_string(
    "model_prefix", None, "Output path without suffix (.model and .vocab are written).",
    required=True)
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", None, "Number of pieces, specials included.",
                                   required=True)
_MODEL_TYPE = flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "sentencepiece algorithm.")
_CHARACTER_COVERAGE = flags.DEFINE_float(
    "character_coverage", 0.9995, "Share of characters covered by pieces (rest: byte fallback).")


def main(argv):
  del argv
  try:
    path = data.train_tokenizer(
        _INPUT.value, _MODEL_PREFIX.value, vocab_size=_VOCAB_SIZE.value,
        model_type=_MODEL_TYPE.value, character_coverage=_CHARACTER_COVERAGE.value)
    tokenizer = data.Tokenizer.load(path)
  except data.DataError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {path}: {tokenizer}")
  print(f"fingerprint {tokenizer.fingerprint}")


if __name__ == "__main__":
  app.run(main)
