"""Tokenizing data sets into fixed-shape arrays, with an explicit truncation policy and a cache.

Token convention (every kind of data):

  tokens     = [bos] [prompt tokens] [completion tokens] [eos] [pad ...]   length max_length
  attention  = True on every non-pad position
  loss_mask  = True on completion tokens and the eos

The log-prob of token t comes from the logits at position t - 1, so a trainer computes
`losses.sequence_logprobs(logits[:, :-1], tokens[:, 1:], loss_mask[:, 1:])`.

Truncation policy, applied per example:
  1. The prompt segment (bos + prompt tokens) is cut from the LEFT to at most
     `max_prompt_length` tokens: the bos stays first and the oldest prompt tokens go,
     since the end of a dialogue matters most for the reply.
  2. The completion (+ eos) is cut from the RIGHT to fit the remaining
     `max_length - len(prompt segment)` tokens. A cut completion has no eos (the reply
     did not end there, so the model must not learn to stop).
  3. An example left with no completion token (the eos aside) is rejected with its
     reason. This happens when the prompt segment fills all `max_length` positions
     (possible only with `max_prompt_length == max_length`) or when a completion
     encodes to no token at all.
For pairs, chosen and rejected share the prompt, so its cut is counted once per pair;
cut chosen and cut rejected completions are counted separately.

Results are cached as `.npz` (never pickle) under `cache_dir`, keyed by the sha256 of
the data content (`data.fingerprint`), the tokenizer model bytes
(`tokenizer.fingerprint`) and the settings; a changed file or tokenizer misses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rlhf_jax.data.records import PreferenceData, SFTData, UnpairedData
from rlhf_jax.data.sources import DataError
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.io import ingest

__all__ = [
    "PAIR_KEYS",
    "SEQUENCE_KEYS",
    "UNPAIRED_KEYS",
    "TokenizeReport",
    "TokenizedData",
    "TokenizedPairs",
    "TokenizedSequences",
    "TokenizedUnpaired",
    "encode_example",
    "tokenize_pairs",
    "tokenize_sft",
    "tokenize_unpaired",
]

_log = logging.getLogger(__name__)
# Bump when the tokenization logic changes, so old cache files miss.
_CACHE_VERSION = 1

PAIR_KEYS = (
    "chosen_tokens", "chosen_attention_mask", "chosen_loss_mask",
    "rejected_tokens", "rejected_attention_mask", "rejected_loss_mask",
    "target_prob", "weight", "is_tie", "annotator", "example_index")
SEQUENCE_KEYS = ("tokens", "attention_mask", "loss_mask", "example_index")
UNPAIRED_KEYS = ("tokens", "attention_mask", "loss_mask", "is_desirable", "example_index")


@dataclasses.dataclass(frozen=True)
class TokenizeReport:
  """Counts of a tokenization: `examples == accepted + rejected`.

  Attributes:
    examples: examples given.
    accepted: examples kept.
    rejected: examples dropped because a completion was empty after truncation; each
      listed in `rejects` (example_index, source, field, reason).
    truncated: how many prompts / completions were cut, by part ("prompt", and
      "chosen"/"rejected" for pairs or "completion" otherwise).
    max_length, max_prompt_length: the settings.
    cache: "hit", "miss" (computed and written) or "off" (no cache_dir).
  """

  examples: int
  accepted: int
  rejected: int
  truncated: Mapping[str, int]
  max_length: int
  max_prompt_length: int
  rejects: tuple[Mapping[str, Any], ...] = ()
  cache: str = "off"

  def summary(self) -> str:
    cut = ", ".join(f"{part} {n}" for part, n in self.truncated.items())
    return (f"tokenized {self.examples}: accepted {self.accepted}, rejected {self.rejected}; "
            f"truncated {cut} (max_length {self.max_length}, max_prompt_length "
            f"{self.max_prompt_length}); cache {self.cache}")


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedData:
  """Fixed-shape arrays, one row per accepted example (`arrays[k][i]`).

  `batch(indices)` gives the batch dict the trainers take; `example_index` maps each
  row back to the untokenized data set.
  """

  arrays: Mapping[str, np.ndarray]
  report: TokenizeReport
  pad_id: int
  KEYS: ClassVar[tuple[str, ...]] = ()

  def __post_init__(self):
    missing = [k for k in self.KEYS if k not in self.arrays]
    if missing:
      raise ValueError(f"{type(self).__name__}: missing arrays {missing}.")
    sizes = {k: v.shape[0] for k, v in self.arrays.items()}
    if len(set(sizes.values())) > 1:
      raise ValueError(f"{type(self).__name__}: arrays differ in length: {sizes}.")

  def __len__(self) -> int:
    return int(next(iter(self.arrays.values())).shape[0])

  def __getitem__(self, key: str) -> np.ndarray:
    return self.arrays[key]

  @property
  def max_length(self) -> int:
    return int(self.arrays[self.KEYS[0]].shape[1])

  def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    return {k: v[indices] for k, v in self.arrays.items()}


class TokenizedPairs(TokenizedData):
  """Pairwise batches: `PAIR_KEYS` ([N, T] tokens and masks, [N] labels)."""

  KEYS = PAIR_KEYS


class TokenizedSequences(TokenizedData):
  """SFT batches: `SEQUENCE_KEYS`."""

  KEYS = SEQUENCE_KEYS


class TokenizedUnpaired(TokenizedData):
  """KTO batches: `UNPAIRED_KEYS`."""

  KEYS = UNPAIRED_KEYS


def encode_example(
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
    max_prompt_length: int,
) -> tuple[list[int], int, bool, bool]:
  """Applies the truncation policy to one example.

  Returns:
    (tokens, prompt_segment_length, prompt_was_cut, completion_was_cut); tokens is
    [bos] + prompt + completion (+ eos when the completion is whole), unpadded. The
    caller rejects the example when no completion token (eos aside) remains.
  """
  prompt_was_cut = 1 + len(prompt_ids) > max_prompt_length
  kept_prompt = list(prompt_ids)
  if prompt_was_cut:
    kept_prompt = kept_prompt[len(kept_prompt) - (max_prompt_length - 1):]
  segment = [bos_id] + kept_prompt
  room = max_length - len(segment)
  completion = list(completion_ids) + [eos_id]
  completion_was_cut = len(completion) > room
  if completion_was_cut:
    completion = list(completion_ids[:max(room, 0)])
  return segment + completion, len(segment), prompt_was_cut, completion_was_cut


def _fill(rows: Sequence[tuple[list[int], int]], max_length: int, pad_id: int):
  """Pads (tokens, prompt_length) rows into tokens, attention_mask and loss_mask arrays."""
  n = len(rows)
  tokens = np.full((n, max_length), pad_id, np.int32)
  lengths = np.zeros(n, np.int64)
  starts = np.zeros(n, np.int64)
  for i, (ids, prompt_length) in enumerate(rows):
    tokens[i, :len(ids)] = ids
    lengths[i] = len(ids)
    starts[i] = prompt_length
  positions = np.arange(max_length)[None, :]
  attention_mask = positions < lengths[:, None]
  loss_mask = attention_mask & (positions >= starts[:, None])
  return tokens, attention_mask, loss_mask


def _check_settings(max_length: int, max_prompt_length: int) -> None:
  if not isinstance(max_length, int) or max_length < 2:
    raise ValueError(f"`max_length` must be an integer >= 2, got {max_length!r}.")
  if not isinstance(max_prompt_length, int) or not 1 <= max_prompt_length <= max_length:
    raise ValueError(
        f"`max_prompt_length` must be an integer in [1, max_length={max_length}] (it counts "
        f"the bos), got {max_prompt_length!r}.")


def _cache_path(cache_dir, kind: str, data_fingerprint: str, tokenizer: Tokenizer,
                settings: dict[str, Any]) -> tuple[Path, str]:
  key_source = json.dumps({
      "version": _CACHE_VERSION, "kind": kind, "data": data_fingerprint,
      "tokenizer": tokenizer.fingerprint, "pad": tokenizer.pad_id, "bos": tokenizer.bos_id,
      "eos": tokenizer.eos_id, **settings}, sort_keys=True)
  key = hashlib.sha256(key_source.encode()).hexdigest()
  return Path(cache_dir) / f"tokenized-{kind}-{key[:32]}.npz", key


def _save_cache(path: Path, key: str, arrays: Mapping[str, np.ndarray], counts: dict[str, int],
                rejects: list[dict[str, Any]]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = {f"array/{k}": v for k, v in arrays.items()}
  payload["meta/key"] = np.array(key)
  payload["meta/count_names"] = np.array(sorted(counts), dtype=str)
  payload["meta/count_values"] = np.array([counts[k] for k in sorted(counts)], np.int64)
  payload["meta/reject_index"] = np.array([r["example_index"] for r in rejects], np.int64)
  payload["meta/reject_field"] = np.array([r["field"] for r in rejects], dtype=str)
  payload["meta/reject_reason"] = np.array([r["reason"] for r in rejects], dtype=str)
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  with open(tmp, "wb") as f:
    np.savez(f, **payload)
  os.replace(tmp, path)


def _load_cache(path: Path, key: str):
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      if str(npz["meta/key"]) != key:
        return None
      arrays = {name[len("array/"):]: npz[name] for name in npz.files if name.startswith("array/")}
      counts = dict(zip(npz["meta/count_names"].tolist(), npz["meta/count_values"].tolist()))
      rejects = [
          {"example_index": int(i), "field": str(f), "reason": str(r)}
          for i, f, r in zip(
              npz["meta/reject_index"], npz["meta/reject_field"], npz["meta/reject_reason"])]
  except (OSError, KeyError, ValueError) as e:
    _log.warning("%s: unreadable tokenization cache (%s); recomputing.", path, e)
    return None
  return arrays, counts, rejects


def _tokenize(kind, data, tokenizer, completions_by_part, extra_arrays, *, max_length,
              max_prompt_length, cache_dir, rejects_path, result_type):
  """Shared body: prompts + one or two completions per example -> arrays."""
  _check_settings(max_length, max_prompt_length)
  settings = {"max_length": max_length, "max_prompt_length": max_prompt_length}
  cache = "off"
  cached = None
  if cache_dir is not None:
    path, key = _cache_path(cache_dir, kind, data.fingerprint, tokenizer, settings)
    cached = _load_cache(path, key)
    cache = "hit" if cached is not None else "miss"
  if cached is not None:
    arrays, counts, rejects = cached
    truncated = {part: counts[f"truncated_{part}"] for part in ("prompt", *completions_by_part)}
  else:
    prompt_ids = tokenizer.encode_batch(data.prompts)
    completion_ids = {
        part: tokenizer.encode_batch(texts) for part, texts in completions_by_part.items()}
    truncated = {part: 0 for part in ("prompt", *completions_by_part)}
    rows = {part: [] for part in completions_by_part}
    kept, rejects = [], []
    for i in range(len(data)):
      encoded = {}
      prompt_cut = False
      empty = None
      for part in completions_by_part:
        ids, start, prompt_cut, completion_cut = encode_example(
            prompt_ids[i], completion_ids[part][i], bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id, max_length=max_length, max_prompt_length=max_prompt_length)
        encoded[part] = (ids, start, completion_cut)
        # Completion tokens kept, the eos not counted: an eos alone teaches nothing.
        if len(ids) - start - (0 if completion_cut else 1) <= 0 and empty is None:
          empty = part
      if empty is not None:
        rejects.append({
            "example_index": i, "field": empty,
            "reason": (f"{empty} completion is empty after truncation (prompt segment "
                       f"{encoded[empty][1]} of max_length {max_length} tokens)")})
        continue
      kept.append(i)
      truncated["prompt"] += int(prompt_cut)
      for part, (ids, start, completion_cut) in encoded.items():
        truncated[part] += int(completion_cut)
        rows[part].append((ids, start))
    kept = np.array(kept, np.int64)
    arrays = {}
    for part, part_rows in rows.items():
      prefix = "" if kind != "pairs" else f"{part}_"
      tokens, attention_mask, loss_mask = _fill(part_rows, max_length, tokenizer.pad_id)
      arrays[f"{prefix}tokens"] = tokens
      arrays[f"{prefix}attention_mask"] = attention_mask
      arrays[f"{prefix}loss_mask"] = loss_mask
    for name, values in extra_arrays.items():
      arrays[name] = values[kept]
    arrays["example_index"] = kept
    if cache_dir is not None:
      counts = {f"truncated_{part}": n for part, n in truncated.items()}
      _save_cache(path, key, arrays, counts, rejects)
  for reject in rejects:
    reject["source"] = data.sources[reject["example_index"]]
  report = TokenizeReport(
      examples=len(data), accepted=len(data) - len(rejects), rejected=len(rejects),
      truncated=truncated, max_length=max_length, max_prompt_length=max_prompt_length,
      rejects=tuple(rejects), cache=cache)
  if rejects:
    if rejects_path is not None:
      ingest.write_json_lines(rejects_path, [{**reject, "code": "empty_after_truncation"} for reject in rejects])
    _log.warning("%s%s", report.summary(), f"; rejects in {rejects_path}" if rejects_path else "")
  if report.accepted == 0:
    raise DataError(f"no example survives truncation: {report.summary()}.")
  return result_type(arrays=arrays, report=report, pad_id=tokenizer.pad_id)


def tokenize_pairs(
    data: PreferenceData,
    tokenizer: Tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    cache_dir: str | os.PathLike[str] | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
) -> TokenizedPairs:
  """Tokenizes preference pairs into `PAIR_KEYS` arrays (see the module docstring).

  Args:
    data: the pairs (`load_preference_data` or `PreferenceData.from_lists`).
    tokenizer: gives the ids and the bos/eos/pad tokens.
    max_length: length T of every sequence (prompt segment + completion + eos).
    max_prompt_length: longest prompt segment, bos included (cut from the left).
    cache_dir: where `.npz` caches live; None disables caching.
    rejects_path: optional JSONL file for the examples rejected after truncation (they
      are always listed in `report.rejects`).

  Returns:
    `TokenizedPairs`; `example_index` [N] are rows of `data`; `report` has the counts.
  """
  return _tokenize(
      "pairs", data, tokenizer, {"chosen": data.chosen, "rejected": data.rejected},
      {"target_prob": data.target_prob.astype(np.float32), "weight": data.weight.astype(np.float32),
       "is_tie": data.is_tie.astype(bool), "annotator": data.annotator.astype(np.int32)},
      max_length=max_length, max_prompt_length=max_prompt_length, cache_dir=cache_dir,
      rejects_path=rejects_path, result_type=TokenizedPairs)


def tokenize_sft(
    data: SFTData,
    tokenizer: Tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    cache_dir: str | os.PathLike[str] | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
) -> TokenizedSequences:
  """Tokenizes SFT examples into `SEQUENCE_KEYS` arrays (arguments as `tokenize_pairs`)."""
  return _tokenize(
      "sft", data, tokenizer, {"completion": data.completions}, {},
      max_length=max_length, max_prompt_length=max_prompt_length, cache_dir=cache_dir,
      rejects_path=rejects_path, result_type=TokenizedSequences)


def tokenize_unpaired(
    data: UnpairedData,
    tokenizer: Tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    cache_dir: str | os.PathLike[str] | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
) -> TokenizedUnpaired:
  """Tokenizes KTO examples into `UNPAIRED_KEYS` arrays (arguments as `tokenize_pairs`)."""
  return _tokenize(
      "unpaired", data, tokenizer, {"completion": data.completions},
      {"is_desirable": data.is_desirable.astype(bool)},
      max_length=max_length, max_prompt_length=max_prompt_length, cache_dir=cache_dir,
      rejects_path=rejects_path, result_type=TokenizedUnpaired)
