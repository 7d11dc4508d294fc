"""How many step shapes padding-free batches compile, and how much padding they keep.

    .venv/bin/python benchmarks/packing_shapes.py --seq_len=256 --batch_pairs=8 --batches=175 \\
        --share_prompt --data=../shared/data/hh-rlhf/harmless-base-test-head1500.jsonl.gz

Packs `--batches` batches of `--batch_pairs` pairs (`rlhf_jax.data.packing.pack_pairs`,
one row per batch, as one data-parallel shard) with each grid of `--grids` sizes per
octave (the trainer's `data.buckets_per_octave`) and prints, per grid:

  * the distinct batch shapes a DPO-family step meets (row length N, completion tokens M),
    each one compilation of the step;
  * the distinct shapes a reward-model step meets (N only: it reads no completion tokens);
  * the mean share of padding slots in the rows and in the completion tokens.

Without `--data` the pairs are the synthetic ones of `benchmarks/train_step.py`. No
model runs: this measures the data, in a few seconds.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import train_step  # noqa: E402  (the benchmark's data: synthetic or a local file)
from rlhf_jax.data import packing  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch_pairs", type=int, default=8)
  parser.add_argument("--batches", type=int, default=64)
  parser.add_argument("--share_prompt", action="store_true", help="one [prompt | chosen | rejected] document per pair")
  parser.add_argument("--grids", default="16,8,4,2", help="sizes per octave to compare (powers of two)")
  parser.add_argument("--data", default="", help="local preference file (as benchmarks/train_step.py reads it)")
  parser.add_argument("--vocab", type=int, default=8000, help="tokenizer pieces (synthetic ids, or trained on --data)")
  parser.add_argument("--rejects", default="packing_shapes_rejects", help="rejects folder for --data")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def shape_report(batches: list[dict[str, np.ndarray]], share_prompt: bool,
                 per_octave: int) -> dict[str, float]:
  """Distinct step shapes and mean padding of `batches` packed with `per_octave`."""
  width = packing.document_width({f"batch {i}": b for i, b in enumerate(batches)}, share_prompt)
  pair_shapes, row_lengths, slot_padding, target_padding = set(), set(), [], []
  for batch in batches:
    packed = packing.pack_pairs(batch, rows=1, share_prompt=share_prompt, width=width, per_octave=per_octave)
    length, targets = packed["packed_tokens"].shape[1], packed["target_tokens"].shape[1]
    pair_shapes.add((length, targets))
    row_lengths.add(length)
    slot_padding.append(1.0 - packed["packed_attention_mask"].mean())
    target_padding.append(float(np.mean(packed["target_owners"] < 0)))
  return {"dpo_shapes": len(pair_shapes), "reward_shapes": len(row_lengths),
          "slot_padding": float(np.mean(slot_padding)), "target_padding": float(np.mean(target_padding))}


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  grids = [int(g) for g in args.grids.split(",")]
  bench_args = train_step.parse_args([f"--seq_len={args.seq_len}", f"--batch_pairs={args.batch_pairs}",
                                      f"--batches={args.batches}", f"--vocab={args.vocab}", f"--seed={args.seed}",
                                      f"--rejects={args.rejects}"] + ([f"--data={args.data}"] if args.data else []))
  batches = train_step.real_batches(bench_args) if args.data else train_step.make_batches(bench_args)
  print(f"{args.batches} batches of {args.batch_pairs} pairs, seq_len {args.seq_len}, "
        f"{'shared prompt' if args.share_prompt else 'one document per sequence'}, "
        f"{'data ' + args.data if args.data else 'synthetic pairs'}")
  print(f"{'sizes/octave':>12} {'DPO shapes':>11} {'RM shapes':>10} {'row padding':>12} {'target padding':>15}")
  for per_octave in grids:
    report = shape_report(batches, args.share_prompt, per_octave)
    print(f"{per_octave:>12} {report['dpo_shapes']:>11} {report['reward_shapes']:>10} "
          f"{100 * report['slot_padding']:>11.1f}% {100 * report['target_padding']:>14.1f}%")


if __name__ == "__main__":
  main()
