"""sentencepiece tokenizers: training one from a corpus, loading one, special tokens.

A tokenizer trained here has fixed special ids: pad 0, unk 1, bos 2, eos 3 (pieces
"<pad>", "<unk>", "<s>", "</s>"). Text is not normalised (identity rule, whitespace
kept, no dummy prefix) and unknown characters fall back to bytes, so
`decode(encode(text)) == text` for any text, and `encode(prompt) + encode(completion)`
decodes to `prompt + completion` (prompt and completion are encoded separately so the
boundary between them is exact). Kudo & Richardson 2018, "SentencePiece" (arXiv
1808.06226).

`encode` never adds bos/eos; the tokenization layer places them (see `tokenization.py`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from rlhf_jax.data.formats import ROLE_NAMES, render_messages
from rlhf_jax.data.sources import DataError, read_rows

__all__ = ["SPECIAL_IDS", "Tokenizer", "corpus_texts", "train_tokenizer"]

_log = logging.getLogger(__name__)

# Ids and pieces of the special tokens of a tokenizer trained by `train_tokenizer`.
SPECIAL_IDS = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
SPECIAL_PIECES = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
_TEXT_SUFFIXES = (".txt", ".txt.gz")
PathLike = str | os.PathLike[str]


class Tokenizer:
  """A sentencepiece model with explicit pad, bos and eos ids.

  Build with `Tokenizer.load(path)` or `Tokenizer(model_bytes)`. `fingerprint` is the
  sha256 of the model bytes (part of tokenization cache keys).
  """

  def __init__(self, model_proto: bytes, *, name: str = "<memory>", pad_id: int | None = None):
    self._proto = bytes(model_proto)
    self.name = name
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self.vocab_size: int = self._sp.vocab_size()
    self.bos_id: int = self._sp.bos_id()
    self.eos_id: int = self._sp.eos_id()
    self.unk_id: int = self._sp.unk_id()
    self.pad_id: int = self._sp.pad_id() if pad_id is None else int(pad_id)
    for special in ("pad", "bos", "eos"):
      value = getattr(self, f"{special}_id")
      if not 0 <= value < self.vocab_size:
        hint = " (pass pad_id=... to choose one)" if special == "pad" else ""
        raise DataError(f"tokenizer {name}: it defines no {special} token{hint}; got id {value}.")
    if len({self.pad_id, self.bos_id, self.eos_id}) != 3:
      raise DataError(
          f"tokenizer {name}: pad {self.pad_id}, bos {self.bos_id} and eos {self.eos_id} "
          "must be distinct.")
    self.fingerprint: str = hashlib.sha256(self._proto).hexdigest()

  @classmethod
  def load(cls, model_path: PathLike, *, pad_id: int | None = None) -> Tokenizer:
    """Loads a sentencepiece `.model` file (the model's own pad id unless `pad_id`)."""
    path = Path(model_path)
    if not path.is_file():
      raise DataError(f"{path}: no such tokenizer model file.")
    try:
      return cls(path.read_bytes(), name=os.fspath(path), pad_id=pad_id)
    except RuntimeError as e:
      raise DataError(f"{path}: not a sentencepiece model ({e}).") from e

  @property
  def model_proto(self) -> bytes:
    return self._proto

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos."""
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of many texts at once (one C++ call)."""
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; pad, bos and eos decode to nothing."""
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, token_id: int) -> str:
    return self._sp.id_to_piece(int(token_id))

  def __repr__(self) -> str:
    return (f"Tokenizer({self.name}, vocab_size={self.vocab_size}, pad={self.pad_id}, "
            f"bos={self.bos_id}, eos={self.eos_id})")


def corpus_texts(path: PathLike) -> Iterator[str]:
  """Texts of a corpus file for tokenizer training.

  `.txt` (optionally `.gz`): one text per line. Data files (JSON Lines, Parquet, CSV):
  every string field of every row, and chat message lists rendered with
  `formats.render_messages`. Unreadable rows are skipped with a logged warning.
  """
  path = Path(path)
  if path.name.lower().endswith(_TEXT_SUFFIXES):
    import gzip  # pylint: disable=g-import-not-at-top
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
      for line in f:
        line = line.rstrip("\n")
        if line:
          yield line
    return
  skipped = []
  for row in read_rows(path):
    if row.record is None:
      skipped.append(row)
      continue
    for value in row.record.values():
      if isinstance(value, str) and value:
        yield value
      elif (isinstance(value, list) and value and all(
          isinstance(m, dict) and m.get("role") in ROLE_NAMES and isinstance(m.get("content"), str)
          for m in value)):
        yield render_messages(value)
  if skipped:
    first = skipped[0]
    _log.warning("%s: skipped %d unreadable rows for the tokenizer corpus (first: %s %d: %s).",
                 path, len(skipped), first.location, first.number, first.error.reason)


def train_tokenizer(
    files: PathLike | Sequence[PathLike] | None,
    model_prefix: PathLike,
    *,
    vocab_size: int,
    texts: Iterable[str] = (),
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    byte_fallback: bool = True,
    user_defined_symbols: Sequence[str] = (),
    max_sentence_length: int = 1 << 16,
    num_threads: int = 1,
) -> Path:
  """Trains a sentencepiece tokenizer and writes `{model_prefix}.model` and `.vocab`.

  Special ids are fixed (`SPECIAL_IDS`: pad 0, unk 1, bos 2, eos 3); text is kept
  exactly (no normalisation, whitespace preserved, no dummy prefix) with byte fallback,
  so every text round-trips. With `byte_fallback` the vocabulary must hold the 256 byte
  pieces plus the required characters, so `vocab_size` of a few hundred is the minimum.

  Args:
    files: corpus files (see `corpus_texts`), or None when only `texts` are given.
    model_prefix: output path without suffix; parent folders are created.
    vocab_size: number of pieces, special tokens included.
    texts: further training texts, e.g. an in-memory corpus.
    model_type: "bpe" or "unigram" (sentencepiece's algorithms).
    character_coverage: share of characters covered by pieces (the rest fall back).
    byte_fallback: encode unknown characters as UTF-8 bytes instead of unk.
    user_defined_symbols: pieces that are never split (e.g. role markers).
    max_sentence_length: longest text (bytes) kept for training; longer are skipped.
    num_threads: trainer threads (1 keeps training deterministic).

  Returns:
    The path of the `.model` file.
  """
  if files is None:
    files = []
  elif isinstance(files, (str, os.PathLike)):
    files = [files]
  for f in files:
    if not Path(f).is_file():
      raise DataError(f"{f}: no such corpus file.")

  def corpus() -> Iterator[str]:
    for f in files:
      yield from corpus_texts(f)
    yield from texts

  model_prefix = Path(model_prefix)
  model_prefix.parent.mkdir(parents=True, exist_ok=True)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=corpus(),
        model_prefix=os.fspath(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        user_defined_symbols=list(user_defined_symbols),
        pad_id=SPECIAL_IDS["pad"], unk_id=SPECIAL_IDS["unk"],
        bos_id=SPECIAL_IDS["bos"], eos_id=SPECIAL_IDS["eos"],
        pad_piece=SPECIAL_PIECES["pad"], unk_piece=SPECIAL_PIECES["unk"],
        bos_piece=SPECIAL_PIECES["bos"], eos_piece=SPECIAL_PIECES["eos"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=max_sentence_length,
        num_threads=num_threads,
        minloglevel=2,
    )
  except RuntimeError as e:
    raise DataError(f"sentencepiece training for {model_prefix} failed: {e}") from e
  return model_prefix.with_name(model_prefix.name + ".model")
