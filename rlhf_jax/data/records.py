"""Loaded data sets (text, before tokenization) and the loaders that build them.

`load_preference_data`, `load_sft_data` and `load_unpaired_data` read a local file with
`datasets` (see `sources.py`), parse every row with a format of `formats.py`, and return
a frozen data set whose row `i` is example `i` (the `example_index` of the batches).
Every example keeps where it came from (`sources[i]`, "file:line N" or "file:row N")
and its lineage ids, and the `report` says what was read, accepted and rejected.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rlhf_jax.data import formats
from rlhf_jax.data.sources import ReadReport, Row, load_records
from rlhf_jax.io import ingest

__all__ = [
    "PreferenceData",
    "SFTData",
    "UnpairedData",
    "load_preference_data",
    "load_sft_data",
    "load_unpaired_data",
]

PathLike = str | os.PathLike[str]


def _content_fingerprint(kind: str, columns: dict[str, Any]) -> str:
  """sha256 of the examples' content (strings and label arrays), independent of files."""
  digest = hashlib.sha256(kind.encode())
  for name in sorted(columns):
    value = columns[name]
    digest.update(name.encode())
    if isinstance(value, np.ndarray):
      digest.update(str(value.dtype).encode())
      digest.update(np.ascontiguousarray(value).tobytes())
    else:
      digest.update(json.dumps(value, ensure_ascii=False).encode())
  return digest.hexdigest()


def _lineage(accepted: Sequence[tuple[Row, Any]], report: ReadReport
             ) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(example_ids, sources) of accepted rows: each row's "file:line N" source, and its
  id from the file (`example_id`) or else that source."""
  sources = tuple(ingest.source(report.path, row.location, row.number) for row, _ in accepted)
  return tuple(example.example_id or s for (_, example), s in zip(accepted, sources)), sources


def _memory_sources(n: int) -> tuple[str, ...]:
  """The sources of examples built in memory (no file behind them): "memory:i"."""
  return tuple(f"memory:{i}" for i in range(n))


class _Examples:
  """What every loaded data set shares: one entry per example, `prompts` among them."""

  prompts: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.prompts)


@dataclasses.dataclass(frozen=True, eq=False)
class PreferenceData(_Examples):
  """Preference pairs as text, one entry per example (all sequences have length N).

  Attributes:
    prompts, chosen, rejected: the prompt and the two completions (prompt + completion
      is the full text; the completion usually starts with a space).
    target_prob: float32 [N], P(chosen preferred); 1.0 for hard labels.
    weight: float32 [N], per-example weight (a label's confidence); 1.0 by default.
    is_tie: bool [N], the label is a tie (then target_prob is usually 0.5).
    annotator: int32 [N], index into `annotator_names` when exactly one annotator is
      behind the label (as Crowd-BT needs), else -1.
    annotator_names: annotator index -> id.
    annotator_ids: per example, every annotator id behind the label.
    annotation_ids: per example, the ids of the annotations behind the label (lineage).
    example_ids: per example, the id given in the file (`id`/`item`), else its source.
    sources: per example, "file:line N" / "file:row N" (or "memory:N").
    report: what the loader read (None for data built in memory).
  """

  prompts: tuple[str, ...]
  chosen: tuple[str, ...]
  rejected: tuple[str, ...]
  target_prob: np.ndarray
  weight: np.ndarray
  is_tie: np.ndarray
  annotator: np.ndarray
  annotator_names: tuple[str, ...]
  annotator_ids: tuple[tuple[str, ...], ...]
  annotation_ids: tuple[tuple[str, ...], ...]
  example_ids: tuple[str, ...]
  sources: tuple[str, ...]
  report: ReadReport | None = None

  def __post_init__(self):
    n = len(self.prompts)
    for name in ("chosen", "rejected", "target_prob", "weight", "is_tie", "annotator",
                 "annotator_ids", "annotation_ids", "example_ids", "sources"):
      if len(getattr(self, name)) != n:
        raise ValueError(
            f"PreferenceData: `{name}` has {len(getattr(self, name))} entries, `prompts` has {n}.")


  @functools.cached_property
  def fingerprint(self) -> str:
    """sha256 of the content, the data part of the tokenization cache key."""
    return _content_fingerprint("preference", {
        "prompts": list(self.prompts), "chosen": list(self.chosen), "rejected": list(self.rejected),
        "target_prob": self.target_prob, "weight": self.weight, "is_tie": self.is_tie,
        "annotator": self.annotator})

  @classmethod
  def from_examples(
      cls,
      examples: Sequence[formats.PreferenceExample],
      sources: Sequence[str] | None = None,
      report: ReadReport | None = None,
  ) -> PreferenceData:
    """Builds the data set from parsed examples (`sources` default to "memory:i")."""
    if sources is None:
      sources = _memory_sources(len(examples))
    sources = tuple(sources)
    annotator_names: dict[str, int] = {}
    annotator = np.full(len(examples), -1, np.int32)
    for i, example in enumerate(examples):
      if len(example.annotator_ids) == 1:
        annotator[i] = annotator_names.setdefault(example.annotator_ids[0], len(annotator_names))
    return cls(
        prompts=tuple(e.prompt for e in examples),
        chosen=tuple(e.chosen for e in examples),
        rejected=tuple(e.rejected for e in examples),
        target_prob=np.array([e.target_prob for e in examples], np.float32),
        weight=np.array([e.weight for e in examples], np.float32),
        is_tie=np.array([e.is_tie for e in examples], bool),
        annotator=annotator,
        annotator_names=tuple(annotator_names),
        annotator_ids=tuple(tuple(e.annotator_ids) for e in examples),
        annotation_ids=tuple(tuple(e.annotation_ids) for e in examples),
        example_ids=tuple(e.example_id or s for e, s in zip(examples, sources)),
        sources=sources,
        report=report)

  @classmethod
  def from_lists(
      cls,
      prompts: Sequence[str],
      chosen: Sequence[str],
      rejected: Sequence[str],
      *,
      target_prob: Sequence[float] | None = None,
      weight: Sequence[float] | None = None,
      is_tie: Sequence[bool] | None = None,
  ) -> PreferenceData:
    """Builds a data set in memory (for tests and programmatic use)."""
    n = len(prompts)
    target_prob = [1.0] * n if target_prob is None else target_prob
    weight = [1.0] * n if weight is None else weight
    is_tie = [False] * n if is_tie is None else is_tie
    examples = [
        formats.PreferenceExample(p, c, r, float(t), float(w), bool(s))
        for p, c, r, t, w, s in zip(
            prompts, chosen, rejected, target_prob, weight, is_tie, strict=True)]
    return cls.from_examples(examples)


@dataclasses.dataclass(frozen=True)
class SFTData(_Examples):
  """Supervised fine-tuning examples: the loss covers the completion only."""

  prompts: tuple[str, ...]
  completions: tuple[str, ...]
  example_ids: tuple[str, ...]
  sources: tuple[str, ...]
  report: ReadReport | None = None


  @functools.cached_property
  def fingerprint(self) -> str:
    return _content_fingerprint(
        "sft", {"prompts": list(self.prompts), "completions": list(self.completions)})

  @classmethod
  def from_lists(cls, prompts: Sequence[str], completions: Sequence[str]) -> SFTData:
    if len(prompts) != len(completions):
      raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
    sources = _memory_sources(len(prompts))
    return cls(tuple(prompts), tuple(completions), sources, sources)


@dataclasses.dataclass(frozen=True, eq=False)
class UnpairedData(_Examples):
  """Unpaired examples for KTO: a completion and whether it is desirable."""

  prompts: tuple[str, ...]
  completions: tuple[str, ...]
  is_desirable: np.ndarray  # bool [N]
  example_ids: tuple[str, ...]
  sources: tuple[str, ...]
  report: ReadReport | None = None


  @functools.cached_property
  def fingerprint(self) -> str:
    return _content_fingerprint("unpaired", {
        "prompts": list(self.prompts), "completions": list(self.completions),
        "is_desirable": self.is_desirable})

  @classmethod
  def from_lists(cls, prompts: Sequence[str], completions: Sequence[str],
                 is_desirable: Sequence[bool]) -> UnpairedData:
    if not len(prompts) == len(completions) == len(is_desirable):
      raise ValueError("prompts, completions and is_desirable must have the same length.")
    sources = _memory_sources(len(prompts))
    return cls(tuple(prompts), tuple(completions), np.asarray(is_desirable, bool), sources, sources)


def _load_in_format(
    path: PathLike,
    format: str,  # pylint: disable=redefined-builtin
    *,
    kind: str,
    names: Sequence[str],
    detect_format: Callable[[list[Row], str], str],
    parser: Callable[[str], Callable[[dict[str, Any]], Any]],
    rejects_path: PathLike | None,
    cache_dir: PathLike | None,
) -> tuple[list[tuple[Row, Any]], ReadReport]:
  """`load_records` with the parser of `format`, or ("auto") of the format detected from
  the first readable record; `kind` names the data for an unknown format's error."""
  if format not in names:
    raise ValueError(f"unknown {kind} format {format!r}; expected one of {list(names)}")
  detect = None
  if format == "auto":
    def detect(rows):
      name = detect_format(rows, os.fspath(path))
      return name, parser(name)
  return load_records(path, None if format == "auto" else parser(format), format_name=format, detect=detect,
                      rejects_path=rejects_path, cache_dir=cache_dir)


def load_preference_data(
    path: PathLike,
    *,
    format: str = "auto",  # pylint: disable=redefined-builtin
    rejects_path: PathLike | None = None,
    cache_dir: PathLike | None = None,
) -> PreferenceData:
  """Reads preference pairs from a local JSON Lines, Parquet or CSV file.

  Args:
    path: the data file.
    format: "auto" (from the first record's fields), "hh_rlhf", "explicit", "messages"
      or "feedback_labels"; see `rlhf_jax.data.formats` for each layout.
    rejects_path: where rows that cannot be used are written (JSON Lines with file,
      line/row, field, code and reason). When None, any unusable row raises `DataError`.
    cache_dir: where the temporary `datasets` Arrow cache of this read is created
      (None: the system temporary directory); it is removed after reading.

  Returns:
    The accepted pairs; `.report` has the counts (read = accepted + rejected).

  Raises:
    DataError: the file is missing or unreadable, has no usable rows, or (without
      `rejects_path`) has an unusable row.
  """
  accepted, report = _load_in_format(
      path, format, kind="preference", names=formats.PREFERENCE_FORMATS,
      detect_format=formats.detect_preference_format, parser=formats.preference_parser,
      rejects_path=rejects_path, cache_dir=cache_dir)
  return PreferenceData.from_examples(
      [example for _, example in accepted], sources=_lineage(accepted, report)[1], report=report)


def load_sft_data(
    path: PathLike,
    *,
    format: str = "auto",  # pylint: disable=redefined-builtin
    rejects_path: PathLike | None = None,
    cache_dir: PathLike | None = None,
) -> SFTData:
  """Reads SFT examples: `text`, or `prompt` + `completion`, or chat `messages`.

  Arguments and errors as for `load_preference_data`; `format` is "auto", "text",
  "prompt_completion" or "messages".
  """
  accepted, report = _load_in_format(
      path, format, kind="SFT", names=formats.SFT_FORMATS, detect_format=formats.detect_sft_format,
      parser=formats.sft_parser, rejects_path=rejects_path, cache_dir=cache_dir)
  example_ids, sources = _lineage(accepted, report)
  return SFTData(
      prompts=tuple(e.prompt for _, e in accepted),
      completions=tuple(e.completion for _, e in accepted),
      example_ids=example_ids, sources=sources, report=report)


def load_unpaired_data(
    path: PathLike,
    *,
    rejects_path: PathLike | None = None,
    cache_dir: PathLike | None = None,
) -> UnpairedData:
  """Reads unpaired (KTO) examples: `prompt`, `completion`, `label` (true = desirable).

  Arguments and errors as for `load_preference_data`.
  """
  accepted, report = load_records(
      path, formats.parse_unpaired, format_name="unpaired", rejects_path=rejects_path,
      cache_dir=cache_dir)
  example_ids, sources = _lineage(accepted, report)
  return UnpairedData(
      prompts=tuple(e.prompt for _, e in accepted),
      completions=tuple(e.completion for _, e in accepted),
      is_desirable=np.array([e.is_desirable for _, e in accepted], bool),
      example_ids=example_ids, sources=sources, report=report)
