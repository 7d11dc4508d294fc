"""A semi-real world: the HH-RLHF pairs in ../shared/data, truth = the data set's own label.

The pairs are Anthropic's harmless-base test dialogues (Bai et al. 2022, arXiv:2204.05862;
see ../shared/data/README.md): two dialogues sharing a prefix, the `chosen` one preferred
by the data set's annotator. Here a pair is the two final assistant turns. For each seed
the chosen response is put on side a or b at random; the truth is the data set's label.

Text: lower-cased words (runs of letters, digits and apostrophes) hashed into
`vocab_size - FIRST_WORD` buckets (CRC-32, stable across runs and machines), truncated to
`max_length` words, so the same small learners as the graded world (`worlds.models`) apply.

Simulated annotators (`worlds.annotate`) need a gold difference; the data set gives only
its sign. Each pair gets a hidden margin |d| ~ Exponential(mean `margin_mean`) drawn from
the seed, in the units of the graded world (spread 1), and d = +|d| when a is the chosen
response, -|d| otherwise. Which pairs are close calls is therefore random, not a property
of the text: the world tests aggregation and training on real text against a real label,
not the realism of annotator difficulty.

The file is read line by line by `rlhf_jax.io.ingest` (gzip, UTF-8 and JSON per line,
the reasons worded there). Rows that cannot be used (not UTF-8, not a JSON object, a
field missing or not a string, no assistant turn, the two final turns identical) are
returned as rejects with the line number and reason; accepted + rejected = non-blank
lines read.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from pathlib import Path

import numpy as np

from rlhf_jax.io import ingest
from rlhf_jax.worlds.graded import FIRST_WORD, PAD, Pairs

__all__ = ["DEFAULT_PATH", "HHData", "load", "to_pairs"]

DEFAULT_PATH = (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf"
                / "harmless-base-test-head1500.jsonl.gz")
_WORD = re.compile(r"[a-z0-9']+")
_ASSISTANT = "\n\nAssistant:"


@dataclasses.dataclass(frozen=True)
class HHData:
  """Tokenized final turns: chosen, rejected int32 [P, L]; lengths int32 [P, 2]
  (chosen, rejected); rejects: (line, reason) of the unusable rows."""

  chosen: np.ndarray
  rejected: np.ndarray
  lengths: np.ndarray
  rejects: tuple[tuple[int, str], ...]
  lines_read: int  # non-blank lines

  def __len__(self) -> int:
    return int(self.chosen.shape[0])


def _final_turn(dialogue: str) -> str | None:
  at = dialogue.rfind(_ASSISTANT)
  return None if at < 0 else dialogue[at + len(_ASSISTANT):].strip()


def _tokens(text: str, vocab_size: int, max_length: int) -> list[int]:
  words = _WORD.findall(text.lower())[:max_length]
  return [FIRST_WORD + zlib.crc32(w.encode()) % (vocab_size - FIRST_WORD) for w in words] or [PAD]


def _final_turns(row: ingest.Row) -> tuple[str, str]:
  """The final assistant turns of a row's chosen and rejected dialogues; an unusable row
  raises `ingest.RecordError` (its read error, a field missing or not a string, no
  assistant turn, or the same final turn twice)."""
  if row.error is not None:
    raise row.error
  chosen, rejected = (_final_turn(ingest.read_string(row.record, side, required=True))
                      for side in ("chosen", "rejected"))
  if chosen is None or rejected is None:
    raise ingest.RecordError("no_assistant_turn", None, "no assistant turn")
  if chosen == rejected:
    raise ingest.RecordError("identical_final_turns", None, "identical final turns (no preference to learn)")
  return chosen, rejected


def load(path: str | Path = DEFAULT_PATH, *, vocab_size: int = 4096, max_length: int = 64) -> HHData:
  """Reads and tokenizes the pairs (see the module docstring); raises FileNotFoundError
  naming the file when it is absent."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: HH-RLHF pairs not found (expected ../shared/data beside the checkout; "
                            "see ../shared/data/README.md).")
  chosen, rejected, lengths, rejects = [], [], [], []
  lines = 0
  for row in ingest.json_line_rows(ingest.read_bytes(path)):
    lines += 1
    try:
      turns = _final_turns(row)
    except ingest.RecordError as error:
      rejects.append((row.number, error.reason if error.field is None else f"field '{error.field}': {error.reason}"))
      continue
    pair = [_tokens(t, vocab_size, max_length) for t in turns]
    rows = np.full((2, max_length), PAD, np.int32)
    for side, toks in enumerate(pair):
      rows[side, :len(toks)] = toks
    chosen.append(rows[0])
    rejected.append(rows[1])
    lengths.append([len(pair[0]), len(pair[1])])
  return HHData(chosen=np.asarray(chosen, np.int32).reshape(-1, max_length),
                rejected=np.asarray(rejected, np.int32).reshape(-1, max_length),
                lengths=np.asarray(lengths, np.int32).reshape(-1, 2), rejects=tuple(rejects), lines_read=lines)


def to_pairs(data: HHData, seed: int, *, margin_mean: float = 0.6) -> tuple[Pairs, np.ndarray]:
  """The pairs in a seeded order with random sides; returns (pairs, order).

  gold[:, 0] - gold[:, 1] = +margin when a is the data set's chosen response, -margin
  otherwise (margin ~ Exponential(margin_mean)), so `pairs.gold_prefers_a` is the data
  set's label.
  """
  rng = np.random.default_rng([seed, 0x4447])
  order = rng.permutation(len(data))
  a_is_chosen = rng.random(len(data)) < 0.5
  margin = rng.exponential(margin_mean, len(data))
  chosen, rejected, lengths = data.chosen[order], data.rejected[order], data.lengths[order]
  tokens = np.where(a_is_chosen[:, None, None], np.stack([chosen, rejected], 1), np.stack([rejected, chosen], 1))
  side_lengths = np.where(a_is_chosen[:, None], lengths, lengths[:, ::-1])
  difference = np.where(a_is_chosen, margin, -margin)
  gold = np.stack([difference / 2, -difference / 2], axis=1)
  return Pairs(tokens=tokens.astype(np.int32), lengths=side_lengths.astype(np.int32), gold=gold,
               edited=np.zeros(len(data), bool), raw_difference=difference), order
