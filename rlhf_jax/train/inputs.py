"""From `config.data` to tokenized training and evaluation sets (through `rlhf_jax.data`).

- `data.train == ""`: the synthetic toy set of the objective's layout (`data.toy_*`):
  no file, no tokenizer, no download.
- Otherwise the files are read with the `rlhf_jax.data` loaders (bad rows go to
  `<workdir>/rejects/*.jsonl`, counts in `run.json`), tokenized with `data.tokenizer`
  or with a sentencepiece model trained on the training texts into
  `<workdir>/tokenizer/`, and cached under `<workdir>/cache/`.

KTO data also gets mismatched pairs (`kl_*` arrays: the prompt of example i with the
completion of example i + 1) for its reference point; Crowd-BT with a reliability file
gets a per-pair `reliability` column.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from rlhf_jax import data as data_lib
from rlhf_jax.train import objectives as objectives_lib
from rlhf_jax.train import reference as reference_lib

__all__ = ["DataInfo", "Datasets", "load_datasets", "mismatched_pairs"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the model and the steps need to know about the data.

  Attributes:
    kind: batch layout ("pairs", "sequences", "unpaired").
    vocab_size: number of token ids the data uses (tokenizer or toy vocabulary).
    pad_id: the padding id.
    max_length: sequence length T of every batch.
    num_annotators: distinct single annotators (Crowd-BT), 0 when unknown.
    annotator_names: annotator index -> id.
  """

  kind: str
  vocab_size: int
  pad_id: int
  max_length: int
  num_annotators: int = 0
  annotator_names: tuple[str, ...] = ()

  def get(self, name: str, default: Any = None) -> Any:
    return getattr(self, name, default)


@dataclasses.dataclass
class Datasets:
  """Tokenized arrays of the training and (optional) evaluation sets."""

  train: dict[str, np.ndarray]
  eval: dict[str, np.ndarray] | None
  info: DataInfo
  # For run.json: file fingerprints (sha256), tokenizer, read/reject/truncation counts.
  provenance: dict[str, Any]


def mismatched_pairs(arrays: Mapping[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
  """KTO's mismatched sequences: row i = prompt of i + completion of (i + 1) mod N.

  Ethayarajh et al. 2024 (arXiv 2402.01306, Sec. 4.1) estimate the reference point
  from such pairs; TRL shifts completions by one inside each batch, here the shift is
  over the data set so the pairs are fixed and their reference log-probs cacheable.
  Prompts (bos + prompt) end where the loss mask starts; a pair longer than T loses the
  end of its completion. Returns `kl_tokens`, `kl_attention_mask`, `kl_loss_mask`.
  """
  tokens = np.asarray(arrays["tokens"])
  attention = np.asarray(arrays["attention_mask"], bool)
  loss_mask = np.asarray(arrays["loss_mask"], bool)
  size, length = tokens.shape
  lengths = attention.sum(axis=1)
  starts = np.where(loss_mask.any(axis=1), loss_mask.argmax(axis=1), lengths)
  kl_tokens = np.full_like(tokens, pad_id)
  kl_attention = np.zeros_like(attention)
  kl_loss = np.zeros_like(loss_mask)
  for i in range(size):
    j = (i + 1) % size
    prompt = tokens[i, :starts[i]]
    completion = tokens[j, starts[j]:lengths[j]]
    sequence = np.concatenate([prompt, completion])[:length]
    kl_tokens[i, :len(sequence)] = sequence
    kl_attention[i, :len(sequence)] = True
    kl_loss[i, len(prompt):len(sequence)] = True
  return {"kl_tokens": kl_tokens, "kl_attention_mask": kl_attention, "kl_loss_mask": kl_loss}


def _toy(kind: str, config: Any, *, num: int, seed: int):
  toy = config.data.toy
  maker = {"pairs": data_lib.toy_preference_data, "sequences": data_lib.toy_sft_data,
           "unpaired": data_lib.toy_unpaired_data}[kind]
  return maker(num, seed=seed, vocab_size=int(toy.vocab_size), max_length=int(toy.max_length))


def _load_records(kind: str, path: str, config: Any, rejects_path: Path):
  if kind == "pairs":
    return data_lib.load_preference_data(path, format=config.data.format, rejects_path=rejects_path)
  if kind == "sequences":
    return data_lib.load_sft_data(path, format=config.data.format, rejects_path=rejects_path)
  if config.data.format not in ("auto", "unpaired"):
    raise ValueError(f"data.format {config.data.format!r}: KTO data has one format; use 'auto'.")
  return data_lib.load_unpaired_data(path, rejects_path=rejects_path)


def _texts(records) -> list[str]:
  texts = list(records.prompts)
  for name in ("chosen", "rejected", "completions"):
    texts.extend(getattr(records, name, ()))
  return [t for t in texts if t]


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _tokenizer(config: Any, workdir: Path, train_records) -> data_lib.Tokenizer:
  if config.data.tokenizer:
    return data_lib.Tokenizer.load(config.data.tokenizer)
  prefix = workdir / "tokenizer" / "spm"
  model_path = prefix.with_suffix(".model")
  if not model_path.is_file():
    if jax.process_index() == 0:
      _log.info("training a %d-piece sentencepiece tokenizer on %s", config.data.tokenizer_vocab_size,
                config.data.train)
      data_lib.train_tokenizer(None, prefix, vocab_size=int(config.data.tokenizer_vocab_size),
                               texts=_texts(train_records))
    _sync("tokenizer")
  return data_lib.Tokenizer.load(model_path)


def _tokenize(kind: str, records, tokenizer, config: Any, cache_dir: Path, rejects_path: Path):
  function = {"pairs": data_lib.tokenize_pairs, "sequences": data_lib.tokenize_sft,
              "unpaired": data_lib.tokenize_unpaired}[kind]
  return function(records, tokenizer, max_length=int(config.data.max_length),
                  max_prompt_length=int(config.data.max_prompt_length), cache_dir=cache_dir,
                  rejects_path=rejects_path)


def _report(report) -> dict[str, Any]:
  if report is None:
    return {}
  return {k: getattr(report, k) for k in ("path", "format", "fingerprint", "read", "accepted", "rejected",
                                          "rejects_path") if hasattr(report, k)}


def load_datasets(config: Any, workdir: str | os.PathLike[str]) -> Datasets:
  """Reads, tokenizes and augments the training and evaluation sets of `config`.

  Raises `rlhf_jax.data.DataError` (naming file, line, field and reason) for unusable
  files; unusable rows go to the rejects files under `<workdir>/rejects/`.
  """
  objective = objectives_lib.get(config.objective)
  kind = objective.data
  workdir = Path(workdir)
  provenance: dict[str, Any] = {}
  annotator_names: tuple[str, ...] = ()
  if not config.data.train:
    if config.data.eval:
      raise ValueError("data.eval is set but data.train is empty; give both files (or neither "
                       "for the synthetic toy data).")
    train = _toy(kind, config, num=int(config.data.toy.num_train), seed=int(config.seed))
    # Another seed: evaluation prompts and completions differ from the training ones.
    evaluation = (_toy(kind, config, num=int(config.data.toy.num_eval), seed=int(config.seed) + 1_000_003)
                  if int(config.data.toy.num_eval) > 0 else None)
    vocab_size, pad_id = int(config.data.toy.vocab_size), int(train.pad_id)
    provenance["data"] = {"train": "toy", "eval": "toy" if evaluation is not None else None,
                          **config.data.toy.to_dict()}
  else:
    rejects = workdir / "rejects"
    rejects.mkdir(parents=True, exist_ok=True)
    cache_dir = workdir / "cache" / "tokenized"
    train_records = _load_records(kind, config.data.train, config, rejects / "train.jsonl")
    eval_records = (_load_records(kind, config.data.eval, config, rejects / "eval.jsonl")
                    if config.data.eval else None)
    tokenizer = _tokenizer(config, workdir, train_records)
    train = _tokenize(kind, train_records, tokenizer, config, cache_dir, rejects / "train_tokenize.jsonl")
    evaluation = (_tokenize(kind, eval_records, tokenizer, config, cache_dir, rejects / "eval_tokenize.jsonl")
                  if eval_records is not None else None)
    vocab_size, pad_id = tokenizer.vocab_size, tokenizer.pad_id
    annotator_names = tuple(getattr(train_records, "annotator_names", ()))
    provenance["data"] = {
        "train": _report(train_records.report),
        "eval": _report(eval_records.report) if eval_records is not None else None,
        "tokenizer": {"path": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                      "fingerprint": getattr(tokenizer, "fingerprint", None)},
        "tokenized": {"train": train.report.summary(),
                      "eval": evaluation.report.summary() if evaluation is not None else None},
    }
    for name, report in (("train", train.report), ("eval", evaluation.report if evaluation else None)):
      if report is not None:
        _log.info("%s: %s", name, report.summary())
    if eval_records is not None and getattr(eval_records, "annotator_names", ()) != annotator_names:
      if config.objective == "reward_model" and config.loss.get("name") == "crowd_bt":
        raise ValueError("crowd_bt: the evaluation file's annotators differ from the training file's; "
                         "annotator ids must index the same reliabilities.")

  train_arrays = dict(train.arrays)
  eval_arrays = dict(evaluation.arrays) if evaluation is not None else None
  if kind == "unpaired" and config.loss.get("reference_point") == "mismatched":
    train_arrays.update(mismatched_pairs(train_arrays, pad_id))
    if eval_arrays is not None:
      eval_arrays.update(mismatched_pairs(eval_arrays, pad_id))
  if (config.objective == "reward_model" and config.loss.get("name") == "crowd_bt"
      and config.loss.reliabilities != "learn"):
    table = objectives_lib.reliability_table(config.loss.reliabilities, annotator_names)
    for arrays in (train_arrays, eval_arrays):
      if arrays is not None:
        index = np.asarray(arrays["annotator"], np.int64)
        known = index >= 0
        # Labels without a single known annotator use loss.unknown_reliability (in the loss).
        reliability = np.ones(index.shape, np.float32)
        reliability[known] = table[index[known]]
        arrays["reliability"] = reliability
  provenance["arrays_sha256"] = {
      name: reference_lib.arrays_fingerprint(arrays, sorted(arrays))
      for name, arrays in (("train", train_arrays), ("eval", eval_arrays)) if arrays is not None}
  max_length = int(train_arrays[next(k for k in train_arrays if k.endswith("tokens"))].shape[1])
  info = DataInfo(kind=kind, vocab_size=int(vocab_size), pad_id=int(pad_id), max_length=max_length,
                  num_annotators=len(annotator_names), annotator_names=annotator_names)
  return Datasets(train=train_arrays, eval=eval_arrays, info=info, provenance=provenance)
