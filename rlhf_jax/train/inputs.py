"""From `DataSettings` (a config's `data` section) to tokenized training and evaluation
sets (through `rlhf_jax.data`).

- `data.train == ""`: the synthetic toy set of the objective's layout (`data.toy_*`):
  no file, no tokenizer, no download.
- Otherwise the files are read with the `rlhf_jax.data` loaders (bad rows go to
  `<workdir>/rejects/*.jsonl`, counts in `run.json`), tokenized with `data.tokenizer`
  or with a sentencepiece model trained on the training texts into
  `<workdir>/tokenizer/`, and cached under `<workdir>/cache/`.
- `data.eval_fraction` (with `data.train` and no `data.eval`) holds out a share of the
  training file for evaluation (`split_by_prompt`: seeded, whole prompts on one side),
  before the tokenizer is trained, so no evaluation text shapes it; `run.json` records
  the split under `data.split`.

KTO data also gets mismatched pairs (`kl_*` arrays: the prompt of example i with the
completion of example i + 1) for its reference point; Crowd-BT with a reliability file
gets a per-pair `reliability` column.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from rlhf_jax import data as data_lib
from rlhf_jax.train import pretrained
from rlhf_jax.train import objectives as objectives_lib
from rlhf_jax.train import reference as reference_lib

__all__ = ["DataInfo", "DataSettings", "Datasets", "ToyDataSettings", "fixed_reliabilities", "load_datasets",
           "mismatched_pairs", "split_by_prompt", "uses_mismatched_pairs"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ToyDataSettings:
  """The synthetic toy data set (`data.toy` of a config, used when `data.train` is empty)."""

  num_train: int
  num_eval: int
  vocab_size: int
  max_length: int


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """The values of a config's `data` section that say what to read and how to tokenize
  it (defaults and comments live in `rlhf_jax/train/config.py`)."""

  train: str
  eval: str
  eval_fraction: float
  eval_split_seed: int
  format: str
  tokenizer: str
  tokenizer_vocab_size: int
  max_length: int
  max_prompt_length: int
  toy: ToyDataSettings
  # `model.init_from` when it is a pretrained checkpoint ("hf:..."): its tokenizer is the
  # default (no `tokenizer` file given).
  pretrained_tokenizer: str = ""


def fixed_reliabilities(objective: str, loss: Any) -> str | None:
  """The reliability file of a Crowd-BT reward model with given (not learned)
  reliabilities (`loss.reliabilities`), else None; `loss` the objective's settings."""
  if objective == "reward_model" and loss.name == "crowd_bt" and loss.reliabilities != "learn":
    return str(loss.reliabilities)
  return None


def uses_mismatched_pairs(loss: Any) -> bool:
  """KTO with the mismatched-pairs reference point (`loss.reference_point`)."""
  return getattr(loss, "reference_point", None) == "mismatched"


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


def split_by_prompt(prompts: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded train/eval split of examples that keeps every prompt on one side.

  Pairs (or completions) that share a prompt go to the same side, so that evaluation
  never scores a prompt the model was trained on (with HH-RLHF-style data several pairs
  often continue one dialogue). Each distinct prompt gets the rank sha256(seed, prompt)
  (an example with an empty prompt is a group of its own, ranked by its position), and
  whole prompt groups are taken in rank order into the evaluation side until it holds at
  least floor(fraction * N + 1/2) examples (the target, N times the fraction rounded half
  up). The split therefore depends only on the texts and the seed (not on the order of
  the rows), and has exactly the target when no prompt repeats; a group that crosses the
  target is taken whole.

  Args:
    prompts: the N examples' prompts.
    fraction: share of the examples to hold out, in (0, 1).
    seed: seeds the ranks; another seed gives another split.

  Returns:
    (train indices, eval indices): sorted int64 arrays, disjoint, together 0..N-1.

  Raises:
    ValueError: `fraction` outside (0, 1), or a split with an empty side (too few
      examples or prompts for this fraction).
  """
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
    raise ValueError(f"data.eval_fraction must lie in (0, 1) (0 turns the split off), got {fraction!r}.")
  size = len(prompts)
  target = int(math.floor(fraction * size + 0.5))
  if target < 1:
    raise ValueError(f"data.eval_fraction {fraction} of {size} examples holds out none; use a larger fraction "
                     "or an evaluation file (data.eval).")
  groups: dict[str, list[int]] = {}
  for index, prompt in enumerate(prompts):
    groups.setdefault(prompt if prompt else f"\0example {index}", []).append(index)
  def rank(key: str) -> bytes:
    return hashlib.sha256(f"{int(seed)}\0{key}".encode("utf-8")).digest()
  held_out: list[int] = []
  for key in sorted(groups, key=rank):
    if len(held_out) >= target:
      break
    held_out.extend(groups[key])
  if len(held_out) == size:
    raise ValueError(f"data.eval_fraction {fraction}: the {size} examples share {len(groups)} prompt(s), and "
                     "holding out whole prompts leaves no training example; use a smaller fraction or an "
                     "evaluation file (data.eval).")
  eval_indices = np.sort(np.asarray(held_out, np.int64))
  train_indices = np.setdiff1d(np.arange(size, dtype=np.int64), eval_indices)
  return train_indices, eval_indices


def _prompt_groups(prompts: Sequence[str]) -> int:
  """Groups of `split_by_prompt`: distinct prompts, each empty prompt on its own."""
  return len({p for p in prompts if p}) + sum(1 for p in prompts if not p)


def _subset(records: Any, indices: np.ndarray) -> Any:
  """The examples `indices` of a loaded data set (`rlhf_jax.data` records), as the same
  type; annotator names and the file's read report are kept whole."""
  values = {}
  for field in dataclasses.fields(records):
    value = getattr(records, field.name)
    if field.name in ("annotator_names", "report"):
      values[field.name] = value
    elif isinstance(value, np.ndarray):
      values[field.name] = value[indices]
    else:
      values[field.name] = tuple(value[i] for i in indices)
  return type(records)(**values)


def _check_split(data: DataSettings) -> float:
  """`data.eval_fraction` as a float (0: no split), refused where it cannot apply."""
  fraction = data.eval_fraction
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
    raise ValueError(f"data.eval_fraction must be a number in (0, 1) or 0 (off), got {fraction!r}.")
  if fraction == 0:
    return 0.0
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"data.eval_fraction must lie in (0, 1) (0 turns the split off), got {fraction!r}.")
  if data.eval:
    raise ValueError(f"data.eval ({data.eval}) and data.eval_fraction ({fraction}) are both set; give "
                     "an evaluation file or a share of data.train to hold out, not both.")
  if not data.train:
    raise ValueError("data.eval_fraction holds out a share of data.train, which is empty (the synthetic toy "
                     "data sets its evaluation size with data.toy.num_eval).")
  return float(fraction)


def _toy(kind: str, toy: ToyDataSettings, *, num: int, seed: int):
  maker = {"pairs": data_lib.toy_preference_data, "sequences": data_lib.toy_sft_data,
           "unpaired": data_lib.toy_unpaired_data}[kind]
  return maker(num, seed=seed, vocab_size=int(toy.vocab_size), max_length=int(toy.max_length))


def _load_records(kind: str, path: str, data_format: str, rejects_path: Path):
  if kind == "pairs":
    return data_lib.load_preference_data(path, format=data_format, rejects_path=rejects_path)
  if kind == "sequences":
    return data_lib.load_sft_data(path, format=data_format, rejects_path=rejects_path)
  if data_format not in ("auto", "unpaired"):
    raise ValueError(f"data.format {data_format!r}: KTO data has one format; use 'auto'.")
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


def _tokenizer(data: DataSettings, workdir: Path, train_records) -> data_lib.Tokenizer:
  if data.tokenizer:
    return data_lib.Tokenizer.load(data.tokenizer)
  if data.pretrained_tokenizer:
    # A pretrained model reads the ids of its own tokenizer.
    return pretrained.tokenizer(data.pretrained_tokenizer)
  prefix = workdir / "tokenizer" / "spm"
  model_path = prefix.with_suffix(".model")
  if not model_path.is_file():
    if jax.process_index() == 0:
      _log.info("training a %d-piece sentencepiece tokenizer on %s", data.tokenizer_vocab_size, data.train)
      data_lib.train_tokenizer(None, prefix, vocab_size=int(data.tokenizer_vocab_size),
                               texts=_texts(train_records))
    _sync("tokenizer")
  return data_lib.Tokenizer.load(model_path)


def _tokenize(kind: str, records, tokenizer, data: DataSettings, cache_dir: Path, rejects_path: Path):
  function = {"pairs": data_lib.tokenize_pairs, "sequences": data_lib.tokenize_sft,
              "unpaired": data_lib.tokenize_unpaired}[kind]
  return function(records, tokenizer, max_length=int(data.max_length),
                  max_prompt_length=int(data.max_prompt_length), cache_dir=cache_dir,
                  rejects_path=rejects_path)


def _report(report) -> dict[str, Any]:
  if report is None:
    return {}
  return {k: getattr(report, k) for k in ("path", "format", "fingerprint", "read", "accepted", "rejected",
                                          "rejects_path") if hasattr(report, k)}


def load_datasets(data: DataSettings, workdir: str | os.PathLike[str], *, objective: str, loss: Any,
                  seed: int) -> Datasets:
  """Reads, tokenizes and augments the training and evaluation sets of `data`.

  Args:
    data: what to read (`DataSettings`).
    workdir: the run directory (rejects, tokenizer and tokenization cache go there).
    objective: the objective's name; its data kind sets the layout.
    loss: the objective's settings (KTO's reference point and Crowd-BT's reliability
      file add arrays).
    seed: the run's seed (the toy data's).

  Raises `rlhf_jax.data.DataError` (naming file, line, field and reason) for unusable
  files; unusable rows go to the rejects files under `<workdir>/rejects/`.
  """
  kind = objectives_lib.get(objective).data
  workdir = Path(workdir)
  provenance: dict[str, Any] = {}
  annotator_names: tuple[str, ...] = ()
  eval_fraction = _check_split(data)
  if not data.train:
    if data.eval:
      raise ValueError("data.eval is set but data.train is empty; give both files (or neither "
                       "for the synthetic toy data).")
    train = _toy(kind, data.toy, num=int(data.toy.num_train), seed=int(seed))
    # Another seed: evaluation prompts and completions differ from the training ones.
    evaluation = (_toy(kind, data.toy, num=int(data.toy.num_eval), seed=int(seed) + 1_000_003)
                  if int(data.toy.num_eval) > 0 else None)
    vocab_size, pad_id = int(data.toy.vocab_size), int(train.pad_id)
    provenance["data"] = {"train": "toy", "eval": "toy" if evaluation is not None else None,
                          **dataclasses.asdict(data.toy)}
  else:
    rejects = workdir / "rejects"
    rejects.mkdir(parents=True, exist_ok=True)
    cache_dir = workdir / "cache" / "tokenized"
    train_records = _load_records(kind, data.train, data.format, rejects / "train.jsonl")
    eval_records = (_load_records(kind, data.eval, data.format, rejects / "eval.jsonl")
                    if data.eval else None)
    split = None
    if eval_fraction:
      split_seed = int(data.eval_split_seed)
      train_index, eval_index = split_by_prompt(train_records.prompts, eval_fraction, split_seed)
      whole = train_records
      train_records, eval_records = _subset(whole, train_index), _subset(whole, eval_index)
      split = {
          "eval_fraction": eval_fraction, "seed": split_seed, "grouped_by": "prompt",
          "file": data.train, "file_fingerprint": whole.report.fingerprint,
          "examples": {"train": len(train_index), "eval": len(eval_index)},
          "prompts": {"train": _prompt_groups(train_records.prompts), "eval": _prompt_groups(eval_records.prompts)},
          # Content fingerprints of the two sides (as the tokenization cache keys them).
          "fingerprints": {"train": train_records.fingerprint, "eval": eval_records.fingerprint},
      }
      _log.info("held out %d of %d examples of %s for evaluation (data.eval_fraction %g, seed %d, whole "
                "prompts)", len(eval_index), len(whole), data.train, eval_fraction, split_seed)
    tokenizer = _tokenizer(data, workdir, train_records)
    train = _tokenize(kind, train_records, tokenizer, data, cache_dir, rejects / "train_tokenize.jsonl")
    evaluation = (_tokenize(kind, eval_records, tokenizer, data, cache_dir, rejects / "eval_tokenize.jsonl")
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
    if split is not None:
      # The evaluation side is part of the training file: its read report is the file's.
      provenance["data"]["eval"] = {"split_of": data.train, "examples": split["examples"]["eval"]}
      provenance["data"]["split"] = split
    for name, report in (("train", train.report), ("eval", evaluation.report if evaluation else None)):
      if report is not None:
        _log.info("%s: %s", name, report.summary())
    if eval_records is not None and getattr(eval_records, "annotator_names", ()) != annotator_names:
      if objective == "reward_model" and loss.name == "crowd_bt":
        raise ValueError("crowd_bt: the evaluation file's annotators differ from the training file's; "
                         "annotator ids must index the same reliabilities.")

  train_arrays = dict(train.arrays)
  eval_arrays = dict(evaluation.arrays) if evaluation is not None else None
  if kind == "unpaired" and uses_mismatched_pairs(loss):
    train_arrays.update(mismatched_pairs(train_arrays, pad_id))
    if eval_arrays is not None:
      eval_arrays.update(mismatched_pairs(eval_arrays, pad_id))
  reliabilities = fixed_reliabilities(objective, loss)
  if reliabilities is not None:
    table = objectives_lib.reliability_table(reliabilities, annotator_names)
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
