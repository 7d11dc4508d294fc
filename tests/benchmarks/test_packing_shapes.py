"""benchmarks/packing_shapes.py: shape counts and padding against a count from the masks."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import packing_shapes  # noqa: E402
import train_step  # noqa: E402
from rlhf_jax.data import packing  # noqa: E402


@pytest.mark.parametrize("per_octave", [16, 4, 1])
def test_shape_report_counts_what_the_masks_say(per_octave):
  args = train_step.parse_args(["--seq_len=64", "--batch_pairs=4", "--batches=40", "--vocab=50"])
  batches = train_step.make_batches(args)
  # Without a shared prompt a row holds every real token of both sequences, and the
  # completion tokens are those of the loss masks.
  slots = [int(b["chosen_attention_mask"].sum() + b["rejected_attention_mask"].sum()) for b in batches]
  targets = [int(b["chosen_loss_mask"].sum() + b["rejected_loss_mask"].sum()) for b in batches]
  rounded = [(packing.bucket_size(n, per_octave), packing.bucket_size(m, per_octave)) for n, m in zip(slots, targets)]
  report = packing_shapes.shape_report(batches, share_prompt=False, per_octave=per_octave)
  assert report["dpo_shapes"] == len(set(rounded))
  assert report["reward_shapes"] == len({n for n, _ in rounded})
  np.testing.assert_allclose(report["slot_padding"], np.mean([1 - n / r for n, (r, _) in zip(slots, rounded)]))
  np.testing.assert_allclose(report["target_padding"], np.mean([1 - m / r for m, (_, r) in zip(targets, rounded)]))
  assert report["dpo_shapes"] > 1  # the batches differ, so the count can fail


def test_fewer_sizes_per_octave_mean_fewer_shapes_and_more_padding(capsys):
  packing_shapes.main(["--seq_len=64", "--batch_pairs=4", "--batches=40", "--vocab=50", "--share_prompt",
                       "--grids=16,2"])
  rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:2] in ("16", "2 ")]
  (_, fine_dpo, fine_rm, fine_pad, _), (_, coarse_dpo, coarse_rm, coarse_pad, _) = rows
  assert int(coarse_dpo) < int(fine_dpo) and int(coarse_rm) <= int(fine_rm)
  assert float(coarse_pad.rstrip("%")) > float(fine_pad.rstrip("%"))
