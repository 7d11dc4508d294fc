"""Tokenizers and data sets: from local preference/SFT/KTO files to fixed-shape batches.

  tokenizer = data.Tokenizer.load("tok.model")        # or data.train_tokenizer(...)
  pairs = data.load_preference_data("train.jsonl.gz", rejects_path="run/rejects.jsonl")
  tokenized = data.tokenize_pairs(pairs, tokenizer, max_length=512, max_prompt_length=256,
                                  cache_dir="run/cache")
  batches = data.BatchIterator(tokenized, batch_size=32, seed=0)
  batch = batches.next()   # dict of NumPy arrays, see `tokenization.PAIR_KEYS`

Token convention: [bos] prompt completion [eos] [pad...]; `loss_mask` is True on the
completion tokens and the eos (see `tokenization.py`). Formats: `formats.py`. Bad rows:
a `DataError` naming file, line, field and reason, or a rejects JSONL when
`rejects_path` is given; `report.read == report.accepted + report.rejected`.
"""

from rlhf_jax.data.batching import BatchIterator, epoch_permutation
from rlhf_jax.data.formats import (
    ASSISTANT_MARKER,
    MESSAGE_TEMPLATE,
    PREFERENCE_FORMATS,
    SFT_FORMATS,
    render_messages,
    split_hh_dialogue,
)
from rlhf_jax.data.records import (
    PreferenceData,
    SFTData,
    UnpairedData,
    load_preference_data,
    load_sft_data,
    load_unpaired_data,
)
from rlhf_jax.data.sources import DataError, ReadReport, fingerprint
from rlhf_jax.data.tokenization import (
    PAIR_KEYS,
    SEQUENCE_KEYS,
    UNPAIRED_KEYS,
    TokenizedData,
    TokenizedPairs,
    TokenizedSequences,
    TokenizedUnpaired,
    TokenizeReport,
    tokenize_pairs,
    tokenize_sft,
    tokenize_unpaired,
)
from rlhf_jax.data.tokenizer import SPECIAL_IDS, Tokenizer, train_tokenizer
from rlhf_jax.data.toy import (
    TOY_BAD,
    TOY_BOS,
    TOY_EOS,
    TOY_GOOD,
    TOY_PAD,
    toy_preference_data,
    toy_sft_data,
    toy_unpaired_data,
)

__all__ = [
    "ASSISTANT_MARKER",
    "BatchIterator",
    "DataError",
    "MESSAGE_TEMPLATE",
    "PAIR_KEYS",
    "PREFERENCE_FORMATS",
    "PreferenceData",
    "ReadReport",
    "SEQUENCE_KEYS",
    "SFTData",
    "SFT_FORMATS",
    "SPECIAL_IDS",
    "TOY_BAD",
    "TOY_BOS",
    "TOY_EOS",
    "TOY_GOOD",
    "TOY_PAD",
    "TokenizeReport",
    "TokenizedData",
    "TokenizedPairs",
    "TokenizedSequences",
    "TokenizedUnpaired",
    "Tokenizer",
    "UNPAIRED_KEYS",
    "UnpairedData",
    "epoch_permutation",
    "fingerprint",
    "load_preference_data",
    "load_sft_data",
    "load_unpaired_data",
    "render_messages",
    "split_hh_dialogue",
    "tokenize_pairs",
    "tokenize_sft",
    "tokenize_unpaired",
    "toy_preference_data",
    "toy_sft_data",
    "toy_unpaired_data",
    "train_tokenizer",
]
