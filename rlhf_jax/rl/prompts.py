"""The prompts an online run samples from: a data file's prompts or the toy prompts.

    prompts = load_prompts(PromptSettings(...), workdir)
    prompts.tokens, prompts.mask      # int32 / bool [M, P], left-padded: [pad ..] [bos] prompt
    prompts.texts[i]                  # what reward functions and reward models read
    prompts.completion_text(ids)      # a sampled completion as text

Files: any local file the data layer reads (`rlhf_jax.data.sources`: JSON Lines, Parquet,
CSV) whose records have a prompt: preference pairs (`data.PREFERENCE_FORMATS`, e.g.
HH-RLHF, whose prompt is the dialogue up to the last "\\n\\nAssistant:"), SFT records
(`prompt_completion`, `messages`), KTO records (`unpaired`), or bare `{"prompt": ...}`
records (format "prompts"). The prompt is split from its completion exactly as the
trainer splits it, so the policy is asked what the reward model was trained to judge.
Unusable records go to `<workdir>/rejects/prompts.jsonl` with the reason (read =
accepted + rejected); a prompt that appears several times (HH-RLHF holds several pairs
per dialogue) is kept once.

Tokens: [bos] + the prompt's tokens, cut from the left to `max_prompt_length` (the bos
stays, the oldest tokens go: the data layer's truncation policy), left-padded to the
longest of them (at most `max_prompt_length` slots) so that every row's completion
starts at the same slot.

Toy prompts (no file): `toy_prompts` draws prompts of filler words of the toy data
(`rlhf_jax.data.toy`); their texts, and the texts of completions, are the token ids
written as decimal numbers separated by spaces ("7 12 5"; `train.sampling.ToyIds`, the
text `scripts/sample.py` reads and writes for toy runs), so a reward function can read
them without a tokenizer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlhf_jax import data as data_lib
from rlhf_jax.data import formats as formats_lib
from rlhf_jax.data import sources as sources_lib
from rlhf_jax.io import ingest
from rlhf_jax.train.sampling import ToyIds

__all__ = ["PROMPT_FORMATS", "PromptSettings", "Prompts", "load_prompts", "toy_prompts"]

_log = logging.getLogger(__name__)

# `data.format` of an online run: "auto", any preference or SFT format, "unpaired"
# (KTO records) or "prompts" (records with a "prompt" string).
PROMPT_FORMATS = tuple(dict.fromkeys(
    ("auto",) + data_lib.PREFERENCE_FORMATS[1:] + tuple(f for f in data_lib.SFT_FORMATS[1:] if f != "text")
    + ("unpaired", "prompts")))


@dataclasses.dataclass(frozen=True)
class PromptSettings:
  """Plain values of `config.data` for prompts (see `rlhf_jax/train/config.py`)."""

  train: str = ""
  format: str = "auto"
  tokenizer: str = ""
  tokenizer_vocab_size: int = 512
  max_prompt_length: int = 64
  toy_num_prompts: int = 1024
  toy_vocab_size: int = 32
  toy_max_prompt_words: int = 6
  seed: int = 0


@dataclasses.dataclass
class Prompts:
  """Tokenized prompts and what is needed to turn completions back into text.

  Attributes:
    tokens: int32 [M, P] left-padded prompts ([bos] first), P the longest prompt.
    mask: bool [M, P], true on real tokens.
    texts: the M prompt texts.
    tokenizer: the sentencepiece tokenizer, or `ToyIds` for toy prompts (ids as text).
    vocab_size, pad_id, bos_id, eos_id: the token ids.
    provenance: for run.json (file, format, fingerprint, counts, tokenizer).
  """

  tokens: np.ndarray
  mask: np.ndarray
  texts: list[str]
  tokenizer: data_lib.Tokenizer | ToyIds
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  provenance: dict[str, Any]

  def __len__(self) -> int:
    return len(self.texts)

  @property
  def prompt_length(self) -> int:
    return int(self.tokens.shape[1])

  @property
  def toy(self) -> bool:
    """The toy prompts (token ids as text, no sentencepiece tokenizer)."""
    return isinstance(self.tokenizer, ToyIds)

  def completion_text(self, ids: Sequence[int]) -> str:
    """The text of a completion's tokens (pad, bos and eos decode to nothing)."""
    return self.tokenizer.decode([int(i) for i in ids])


def _left_pad(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, row in enumerate(rows):
    tokens[i, width - len(row):] = row
    mask[i, width - len(row):] = True
  return tokens, mask


def _prompt_ids(prompt_ids: Sequence[int], bos_id: int, max_prompt_length: int) -> list[int]:
  """[bos] + the prompt, cut from the left to `max_prompt_length` tokens (as the data layer)."""
  kept = list(prompt_ids)[max(0, len(prompt_ids) - (max_prompt_length - 1)):]
  return [bos_id] + kept


def toy_prompts(num_prompts: int, *, seed: int, vocab_size: int, max_words: int,
                max_prompt_length: int) -> Prompts:
  """`num_prompts` prompts of 2 to `max_words` filler words of the toy vocabulary."""
  if vocab_size <= data_lib.toy.TOY_FIRST_WORD:
    raise ValueError(f"data.toy.vocab_size must exceed {data_lib.toy.TOY_FIRST_WORD}, got {vocab_size}.")
  if not 2 <= max_words <= max_prompt_length - 1:
    raise ValueError(f"data.toy.max_prompt_words must lie in [2, data.max_prompt_length - 1 = "
                     f"{max_prompt_length - 1}], got {max_words}.")
  if num_prompts < 1:
    raise ValueError(f"data.toy.num_prompts must be >= 1, got {num_prompts}.")
  rng = np.random.default_rng(seed)
  words = [rng.integers(data_lib.toy.TOY_FIRST_WORD, vocab_size, size=int(rng.integers(2, max_words + 1))).tolist()
           for _ in range(num_prompts)]
  width = 1 + max(len(w) for w in words)
  tokens, mask = _left_pad([[data_lib.TOY_BOS] + w for w in words], width, data_lib.TOY_PAD)
  toy_ids = ToyIds(vocab_size)
  return Prompts(tokens=tokens, mask=mask, texts=[toy_ids.decode(w) for w in words], tokenizer=toy_ids,
                 vocab_size=vocab_size, pad_id=data_lib.TOY_PAD, bos_id=data_lib.TOY_BOS,
                 eos_id=data_lib.TOY_EOS,
                 provenance={"train": "toy", "num_prompts": num_prompts, "vocab_size": vocab_size,
                             "max_prompt_words": max_words, "seed": seed})


class _PromptOnly:
  """Parser of format "prompts": a record with a non-empty "prompt" string."""

  def __call__(self, record: dict[str, Any]) -> formats_lib.SequenceExample:
    return formats_lib.SequenceExample(ingest.read_string(record, "prompt", required=True), "", None)


def _parser(format_name: str):
  if format_name == "prompts":
    return _PromptOnly()
  if format_name == "unpaired":
    return formats_lib.parse_unpaired
  if format_name in data_lib.PREFERENCE_FORMATS:
    return formats_lib.preference_parser(format_name)
  return formats_lib.sft_parser(format_name)


def _detect(path: str):
  def detect(rows):
    for detector in (formats_lib.detect_preference_format, _detect_unpaired, formats_lib.detect_sft_format,
                     _detect_prompts):
      try:
        name = detector(rows, path)
      except data_lib.DataError:
        continue
      if name != "text":  # a text record has no prompt
        return name, _parser(name)
    record = next((r.record for r in rows if r.record is not None), None) or {}
    raise data_lib.DataError(
        f"{path}: cannot find prompts in records with the fields {sorted(record)}; expected preference pairs "
        "(chosen+rejected, prompt+chosen+rejected, prompt+response_a+response_b+label), SFT or KTO records "
        "(prompt+completion, messages) or prompt records ({\"prompt\": ...}). Set data.format explicitly.")
  return detect


def _first_keys(rows) -> set[str]:
  record = next((r.record for r in rows if r.record is not None), None) or {}
  return {k for k, v in record.items() if v is not None}


def _detect_unpaired(rows, path: str) -> str:
  if {"prompt", "completion", "label"} <= _first_keys(rows):
    return "unpaired"
  raise data_lib.DataError(f"{path}: not KTO records")


def _detect_prompts(rows, path: str) -> str:
  if "prompt" in _first_keys(rows):
    return "prompts"
  raise data_lib.DataError(f"{path}: not prompt records")


def _tokenizer(settings: PromptSettings, workdir: Path, texts: list[str],
               fallback: data_lib.Tokenizer | None) -> data_lib.Tokenizer:
  """`data.tokenizer`, else the `fallback` run's tokenizer (the starting policy's or the
  reward model's), else one trained on the prompts into `<workdir>/tokenizer/`."""
  if settings.tokenizer:
    return data_lib.Tokenizer.load(settings.tokenizer)
  if fallback is not None:
    _log.info("using the tokenizer %s", fallback.name)
    return fallback
  prefix = workdir / "tokenizer" / "spm"
  model_path = prefix.with_suffix(".model")
  if not model_path.is_file():
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      _log.info("training a %d-piece sentencepiece tokenizer on the prompts of %s", settings.tokenizer_vocab_size,
                settings.train)
      data_lib.train_tokenizer(None, prefix, vocab_size=int(settings.tokenizer_vocab_size), texts=texts)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("prompt tokenizer")
  return data_lib.Tokenizer.load(model_path)


def load_prompts(settings: PromptSettings, workdir: str | os.PathLike[str], *,
                 tokenizer_fallback: data_lib.Tokenizer | None = None) -> Prompts:
  """The prompts of `settings.train` (tokenized), or the toy prompts when it is empty.

  Args:
    settings: the config's data fields.
    workdir: the run directory (rejects and a trained tokenizer go there).
    tokenizer_fallback: the tokenizer to use when `settings.tokenizer` is empty
      (the trainer passes the starting policy's or the reward model's tokenizer).

  Raises:
    DataError: the file is unreadable, holds no usable prompt, or its format is unknown
      (naming the file, line, field and reason).
  """
  if settings.max_prompt_length < 2:
    raise ValueError(f"data.max_prompt_length must be >= 2 (bos and one token), got {settings.max_prompt_length}.")
  if not settings.train:
    return toy_prompts(settings.toy_num_prompts, seed=settings.seed, vocab_size=settings.toy_vocab_size,
                       max_words=settings.toy_max_prompt_words, max_prompt_length=settings.max_prompt_length)
  if settings.format not in PROMPT_FORMATS:
    raise ValueError(f"data.format {settings.format!r} is not a format with prompts; expected one of "
                     f"{', '.join(PROMPT_FORMATS)}.")
  workdir = Path(workdir)
  rejects_path = workdir / "rejects" / "prompts.jsonl"
  rejects_path.parent.mkdir(parents=True, exist_ok=True)
  detect = _detect(settings.train) if settings.format == "auto" else None
  accepted, report = sources_lib.load_records(
      settings.train, _parser(settings.format) if detect is None else None, format_name=settings.format,
      detect=detect, rejects_path=rejects_path)
  texts, empty = [], []
  for row, example in accepted:
    if example.prompt.strip():
      texts.append(example.prompt)
    else:
      empty.append(ingest.Reject(
          file=settings.train, location=row.location, number=row.number, field="prompt", code="empty_prompt",
          reason="the prompt is empty (nothing to complete)", record=row.record))
  if empty:
    ingest.append_rejects(rejects_path, empty)
  if not texts:
    raise data_lib.DataError(f"{settings.train}: none of the {report.read} records has a non-empty prompt; see "
                             f"{rejects_path}.")
  distinct = list(dict.fromkeys(texts))
  tokenizer = _tokenizer(settings, workdir, distinct, tokenizer_fallback)
  rows = [_prompt_ids(ids, tokenizer.bos_id, settings.max_prompt_length)
          for ids in tokenizer.encode_batch(distinct)]
  cut = sum(1 + len(ids) > settings.max_prompt_length for ids in tokenizer.encode_batch(distinct))
  tokens, mask = _left_pad(rows, max(len(row) for row in rows), tokenizer.pad_id)
  provenance = {
      "train": {"path": settings.train, "format": report.format, "fingerprint": report.fingerprint,
                "read": report.read, "accepted": report.accepted - len(empty),
                "rejected": report.rejected + len(empty),
                "rejects_path": os.fspath(rejects_path) if report.rejected or empty else None},
      "prompts": {"distinct": len(distinct), "duplicates_dropped": len(texts) - len(distinct),
                  "truncated": cut, "max_prompt_length": settings.max_prompt_length,
                  "prompt_slots": int(tokens.shape[1])},
      "tokenizer": {"path": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                    "fingerprint": tokenizer.fingerprint},
  }
  _log.info("%s: %d distinct prompts (%d read, %d rejected, %d cut to %d tokens)", settings.train, len(distinct),
            report.read, report.rejected + len(empty), cut, settings.max_prompt_length)
  return Prompts(tokens=tokens, mask=mask, texts=distinct, tokenizer=tokenizer, vocab_size=tokenizer.vocab_size,
                 pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, provenance=provenance)
