"""Padding-free rows: the pairs of a batch laid end to end, without padding between them.

Right-padded pairs [B, T] hold much padding (the share in the benchmark's data sets is
in docs/benchmarks.md), and a two-row (or one-row-per-pair) step runs every matmul over
it. `pack_pairs` lays the real tokens of
the batch's pairs end to end in `rows` rows, each padded only at its end, to a length
rounded up to a few sizes per octave (`bucket_size`) so that a jitted step meets a small
number of shapes. Row r holds the consecutive pairs [r P, (r + 1) P), P = B / rows: with
one row per data-parallel shard, a row's pairs are the pairs its devices would hold.

Each pair is laid out in one of two ways (the same log-probs and rewards as the two-row
layout, up to float rounding):

    share_prompt=False   document 2i:     [prompt chosen]     positions 0 .. p+c-1
                         document 2i + 1: [prompt rejected]   positions 0 .. p+r-1
    share_prompt=True    document i:      [prompt | chosen | rejected]
                         segments 0 | 1 | 2, positions 0 .. p+c-1 | p .. p+r-1
                         (`rlhf_jax.train.shared_prompt`: the prompt once per pair)

A token attends only within its document: `models.Transformer(document_slots=...)` runs
attention per document, in [D, W] rows (W = `width`, at least the longest document),
and everything else on the N slots. Targets are flat too: the M completion tokens
of a row, each with the slot whose logits predict it and its owner 2i (chosen) or
2i + 1 (rejected) of local pair i, so the output layer runs only where a log-prob is
read. This is "padding-free" or "sequence packing" training (e.g. Krell et al. 2021,
"Efficient Sequence Packing without Cross-contamination", arXiv 2107.02027), applied to
preference pairs; packing happens on the host, per batch, in NumPy.

Keys of the packed batch (NumPy):
  packed_tokens, packed_positions int32 [R, N]; packed_attention_mask bool [R, N];
  packed_segments int32 [R, N] (share_prompt only);
  packed_document_slots int32 [R, D, W]: the slot of token j of document d, -1 past its
  end (D = 2P documents per row, or P with share_prompt);
  target_tokens, target_slots, target_owners (-1 on padding) int32 [R, M];
  reward_slots int32 [R, 2P]: the last slot of the chosen (2i) and rejected (2i + 1)
  completion of local pair i, where a reward model reads its rewards.

`pack_sequences` does the same for sequences (SFT data): one document per sequence,
targets owned by the sequence's place i in its row, and `sequence_ends` int32 [R, P]
(the last slot of each sequence) in place of `reward_slots`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["BUCKETS_PER_OCTAVE", "PACKED_KEYS", "PACKED_SEQUENCE_KEYS", "PAIR_SEQUENCE_KEYS", "SEQUENCE_KEYS",
           "TARGET_KEYS", "bucket_size", "document_width", "is_power_of_two", "pack_pairs", "pack_sequences",
           "pair_extents", "row_name", "widest_document"]

# The [B, T] arrays of right-padded pairs that packing replaces.
PAIR_SEQUENCE_KEYS = tuple(f"{part}_{name}" for part in ("chosen", "rejected")
                           for name in ("tokens", "attention_mask", "loss_mask"))
PACKED_KEYS = ("packed_tokens", "packed_positions", "packed_attention_mask", "packed_document_slots",
               "target_tokens", "target_slots", "target_owners", "reward_slots")
# The [B, T] arrays of right-padded sequences (SFT) that `pack_sequences` replaces, and
# the keys it writes (those of pairs, with the sequences' last slots for read-outs).
SEQUENCE_KEYS = ("tokens", "attention_mask", "loss_mask")
PACKED_SEQUENCE_KEYS = tuple(k for k in PACKED_KEYS if k != "reward_slots") + ("sequence_ends",)
# The [R, M] keys of the completion tokens (log-probs); a reward model reads none of them.
TARGET_KEYS = ("target_tokens", "target_slots", "target_owners")
# Sizes per octave of the row lengths and target counts: at most 1/8 padding for about
# half the compiled shapes of 16 per octave (measured padding and shape counts:
# docs/benchmarks.md, "Step shapes of padding-free batches").
BUCKETS_PER_OCTAVE = 8


def is_power_of_two(n: object) -> bool:
  """Whether `n` is an int 1, 2, 4, 8, ... (the grids `bucket_size` accepts)."""
  return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and not n & (n - 1)


def bucket_size(n: int, per_octave: int = BUCKETS_PER_OCTAVE, minimum: int = 16) -> int:
  """The smallest size >= n of the form m * 2^k with per_octave <= m < 2 per_octave
  (at most 1/per_octave padding), and at least `minimum`. E.g. 2100 -> 2176 (17 x 128)
  with 16 per octave, 2304 (9 x 256) with 8. `per_octave` must be a power of two."""
  if not is_power_of_two(per_octave):
    raise ValueError(f"bucket_size: per_octave must be a power of two, got {per_octave}.")
  n = max(int(n), int(minimum), 1)
  step = 1 << max(n.bit_length() - 1 - (per_octave.bit_length() - 1), 0)
  return -(-n // step) * step


def row_name(arrays: Mapping[str, np.ndarray], row: int) -> str:
  """'row 17' plus the example's index in its data file when the arrays carry it."""
  if "example_index" in arrays:
    return f"row {row} (example_index {int(np.asarray(arrays['example_index'])[row])})"
  return f"row {row}"


def pair_extents(arrays: Mapping[str, np.ndarray], name: str = "data") -> tuple[np.ndarray, ...]:
  """Host-side (prompt, chosen, rejected) segment lengths [B] of right-padded pairs.

  Checks what prompt sharing relies on and raises ValueError naming the data set and
  row: chosen and rejected rows start with the same prompt segment (bos included) that
  ends where the loss mask starts, every completion is contiguous and right after it.
  """
  lengths = {}
  for part in ("chosen", "rejected"):
    attention = np.asarray(arrays[f"{part}_attention_mask"], bool)
    loss = np.asarray(arrays[f"{part}_loss_mask"], bool)
    slots = np.arange(attention.shape[1])[None]
    prompt = np.sum(attention & ~loss, axis=1)
    completion = np.sum(loss, axis=1)
    expected_loss = (slots >= prompt[:, None]) & (slots < (prompt + completion)[:, None])
    expected_attention = slots < (prompt + completion)[:, None]
    bad = np.flatnonzero(np.any(loss != expected_loss, axis=1) | np.any(attention != expected_attention, axis=1)
                         | (prompt < 1) | (completion < 1))
    if bad.size:
      raise ValueError(
          f"prompt sharing: {name} {row_name(arrays, int(bad[0]))} ({part}) is not [prompt][completion][pad] with a "
          "non-empty prompt segment and completion (loss mask right after the prompt, right "
          f"padding); {bad.size} such rows. Set data.share_prompt=False for this data.")
    lengths[part] = (prompt, completion)
  prompt, chosen = lengths["chosen"]
  rejected_prompt, rejected = lengths["rejected"]
  tokens_c = np.asarray(arrays["chosen_tokens"])
  tokens_r = np.asarray(arrays["rejected_tokens"])
  slots = np.arange(tokens_c.shape[1])[None]
  in_prompt = slots < prompt[:, None]
  differs = (prompt != rejected_prompt) | np.any(in_prompt & (tokens_c != tokens_r), axis=1)
  if np.any(differs):
    row = int(np.flatnonzero(differs)[0])
    raise ValueError(
        f"prompt sharing: {name} {row_name(arrays, row)}: the chosen and rejected rows do not start with the "
        f"same prompt segment (lengths {int(prompt[row])} and {int(rejected_prompt[row])}); "
        f"{int(np.sum(differs))} such rows. Set data.share_prompt=False for this data.")
  return prompt, chosen, rejected


def _document_lengths(arrays: Mapping[str, np.ndarray], share_prompt: bool, name: str) -> np.ndarray:
  """Per example [B], its longest document as `pack_pairs` (or `pack_sequences`, for
  arrays of sequences) makes it."""
  if "tokens" in arrays:
    return np.sum(np.asarray(arrays["attention_mask"], bool), axis=1)
  if share_prompt:
    prompt, chosen, rejected = pair_extents(arrays, name)
    return prompt + chosen + rejected
  return np.maximum(*(np.sum(np.asarray(arrays[f"{part}_attention_mask"], bool), axis=1)
                      for part in ("chosen", "rejected")))


def widest_document(datasets: Mapping[str, Mapping[str, np.ndarray] | None],
                    share_prompt: bool) -> tuple[int, str]:
  """The longest document `pack_pairs` makes of the pairs of `datasets` ({name: pair
  arrays}, e.g. training and evaluation), or `pack_sequences` of their sequences, and
  where it is ("train row 17 (example_index 40)"); (1, "") without examples."""
  widest, where = 1, ""
  for name, arrays in datasets.items():
    if arrays is None or not len(arrays["tokens" if "tokens" in arrays else "chosen_tokens"]):
      continue
    lengths = _document_lengths(arrays, share_prompt, name)
    row = int(np.argmax(lengths))
    if lengths[row] > widest:
      widest, where = int(lengths[row]), f"{name} {row_name(arrays, row)}"
  return widest, where


def document_width(datasets: Mapping[str, Mapping[str, np.ndarray] | None], share_prompt: bool,
                   multiple: int = 8) -> int:
  """The least width, a multiple of `multiple`, that holds every document `pack_pairs`
  (or `pack_sequences`) makes of `datasets` (see `widest_document`)."""
  return -(-widest_document(datasets, share_prompt)[0] // multiple) * multiple


def _sequence_document(tokens: np.ndarray, attention_mask: np.ndarray, loss_mask: np.ndarray,
                       output: int) -> dict[str, np.ndarray]:
  """One right-padded sequence as a document: its real tokens, its targets (the loss-mask
  tokens after the first, each predicted from the slot before it) and its last token as
  the read-out, all owned by `output`."""
  real = np.asarray(attention_mask, bool)
  tokens = np.asarray(tokens)[real]
  loss = np.asarray(loss_mask, bool)[real]
  loss[:1] = False  # the first token has no predecessor (the two-row layout skips it too)
  slots = np.flatnonzero(loss)
  return dict(tokens=tokens, positions=np.arange(len(tokens)), segments=np.zeros(len(tokens)),
              sources=slots - 1, targets=tokens[slots], outputs=np.full(len(slots), output),
              reads=np.array([len(tokens) - 1]), read_outputs=np.array([output]))


def _documents(batch: Mapping[str, np.ndarray], share_prompt: bool) -> list[list[dict[str, np.ndarray]]]:
  """Per pair, its documents: tokens, positions, segments, the document-relative slots
  of its targets (predicting slot, token, output 0 chosen / 1 rejected) and its
  read-out slots with the outputs they belong to."""
  if share_prompt:
    prompt, chosen, rejected = pair_extents(batch)
  pairs = []
  for i in range(len(batch["chosen_tokens"])):
    if share_prompt:
      p, c, r = int(prompt[i]), int(chosen[i]), int(rejected[i])
      tokens = np.concatenate([batch["chosen_tokens"][i, :p + c], batch["rejected_tokens"][i, p:p + r]])
      positions = np.concatenate([np.arange(p + c), np.arange(p, p + r)])
      segments = np.concatenate([np.zeros(p), np.ones(c), np.full(r, 2)])
      # The token at document slot p + j is predicted from slot p + j - 1, except the
      # first rejected token (j == c), which continues the prompt: slot p - 1.
      j = np.arange(c + r)
      sources = np.where(j == c, p - 1, p + j - 1)
      pairs.append([dict(tokens=tokens, positions=positions, segments=segments, sources=sources,
                         targets=tokens[p:], outputs=(j >= c).astype(np.int64),
                         reads=np.array([p + c - 1, p + c + r - 1]), read_outputs=np.array([0, 1]))])
      continue
    pairs.append([_sequence_document(batch[f"{part}_tokens"][i], batch[f"{part}_attention_mask"][i],
                                     batch[f"{part}_loss_mask"][i], side)
                  for side, part in enumerate(("chosen", "rejected"))])
  return pairs


def _pack_rows(examples: list[list[dict[str, np.ndarray]]], *, rows: int, width: int | None, per_octave: int,
               outputs: int, reads_key: str, segments: bool, batch: Mapping[str, np.ndarray],
               caller: str, noun: str) -> dict[str, np.ndarray]:
  """Lays the documents of `examples` end to end in `rows` rows (the layout of the module
  docstring): example e of row r owns outputs [outputs e, outputs (e + 1)), its targets'
  owners and its read-out slots (`reads_key`, [R, outputs P])."""
  if rows < 1 or len(examples) % rows:
    raise ValueError(f"{caller}: {len(examples)} {noun} do not split into {rows} rows.")
  per_row = len(examples) // rows
  lengths = [max(len(d["tokens"]) for d in documents) for documents in examples]
  widest = int(np.argmax(lengths))
  longest = lengths[widest]
  if width is None:
    width = -(-longest // 8) * 8
  if longest > width:
    raise ValueError(f"{caller}: a document of {longest} tokens is longer than the document width "
                     f"{width} (batch {row_name(batch, widest)}); the width must cover the longest "
                     f"document of the data (`document_width`).")
  row_examples = [examples[r * per_row:(r + 1) * per_row] for r in range(rows)]
  row_docs = [[d for documents in row for d in documents] for row in row_examples]
  length = bucket_size(max(sum(len(d["tokens"]) for d in docs) for docs in row_docs), per_octave)
  num_targets = bucket_size(max(sum(len(d["targets"]) for d in docs) for docs in row_docs), per_octave)
  out = {
      "packed_tokens": np.zeros((rows, length), np.int32),
      "packed_positions": np.zeros((rows, length), np.int32),
      "packed_attention_mask": np.zeros((rows, length), bool),
      "packed_document_slots": np.full((rows, len(row_docs[0]), width), -1, np.int32),
      "target_tokens": np.zeros((rows, num_targets), np.int32),
      "target_slots": np.zeros((rows, num_targets), np.int32),
      "target_owners": np.full((rows, num_targets), -1, np.int32),
      reads_key: np.zeros((rows, outputs * per_row), np.int32),
  }
  if segments:
    out["packed_segments"] = np.zeros((rows, length), np.int32)
  for r, row in enumerate(row_examples):
    slot = target = k = 0
    for e, documents in enumerate(row):
      for d in documents:
        span = slice(slot, slot + len(d["tokens"]))
        out["packed_tokens"][r, span] = d["tokens"]
        out["packed_positions"][r, span] = d["positions"]
        out["packed_document_slots"][r, k, :len(d["tokens"])] = np.arange(span.start, span.stop)
        out["packed_attention_mask"][r, span] = True
        if segments:
          out["packed_segments"][r, span] = d["segments"]
        n = len(d["targets"])
        out["target_tokens"][r, target:target + n] = d["targets"]
        out["target_slots"][r, target:target + n] = slot + d["sources"]
        out["target_owners"][r, target:target + n] = outputs * e + d["outputs"]
        out[reads_key][r, outputs * e + d["read_outputs"]] = slot + d["reads"]
        slot, target, k = slot + len(d["tokens"]), target + n, k + 1
  return out


def pack_pairs(batch: Mapping[str, np.ndarray], *, rows: int, share_prompt: bool,
               width: int | None = None, per_octave: int = BUCKETS_PER_OCTAVE) -> dict[str, np.ndarray]:
  """Lays the pairs of `batch` (right-padded `PAIR_KEYS` arrays [B, T]) end to end in
  `rows` padding-free rows; see the module docstring for the layout and the keys.

  Row length N and target count M are the longest row's, rounded up by `bucket_size`
  with `per_octave` sizes per octave: fewer sizes mean fewer compiled steps and more
  padding.
  `width` (W of `packed_document_slots`) should be fixed for a run, e.g. the
  `document_width` of the data sets, so that it adds no shapes; by default it is this
  batch's longest document rounded up to a multiple of 8. Raises ValueError when a
  document is longer than `width`, and with `share_prompt` (from `pair_extents`) for
  pairs that do not share their prompt.
  """
  return _pack_rows(_documents(batch, share_prompt), rows=rows, width=width, per_octave=per_octave,
                    outputs=2, reads_key="reward_slots", segments=share_prompt, batch=batch,
                    caller="pack_pairs", noun="pairs")


def pack_sequences(batch: Mapping[str, np.ndarray], *, rows: int, width: int | None = None,
                   per_octave: int = BUCKETS_PER_OCTAVE) -> dict[str, np.ndarray]:
  """Lays the sequences of `batch` (right-padded `SEQUENCE_KEYS` arrays [B, T], e.g. SFT
  data) end to end in `rows` padding-free rows, one document per sequence: the keys of
  `pack_pairs` without segments, targets owned by the sequence's place i in its row, and
  `sequence_ends` [R, P] (the last slot of each sequence) in place of `reward_slots`.
  Row length, target count and `width` as in `pack_pairs`.
  """
  tokens, attention, loss = (np.asarray(batch[k]) for k in SEQUENCE_KEYS)
  examples = [[_sequence_document(tokens[i], attention[i], loss[i], 0)] for i in range(len(tokens))]
  return _pack_rows(examples, rows=rows, width=width, per_octave=per_octave, outputs=1,
                    reads_key="sequence_ends", segments=False, batch=batch, caller="pack_sequences",
                    noun="sequences")
