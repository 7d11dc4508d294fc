"""Host-side packing arithmetic (`data.packing`): the bucket grid, the segment lengths of
right-padded pairs and the document widths, checked on hand-built rows. The packed rows
themselves (and the model on them) are tested in tests/train/test_padding_free.py."""

import numpy as np
import pytest

from rlhf_jax.data import packing


def _pairs(rows, width):
  """Right-padded pair arrays from (prompt, chosen, rejected) token lists (loss mask on
  the completions)."""
  arrays = {}
  for k, part in ((1, "chosen"), (2, "rejected")):
    tokens = np.zeros((len(rows), width), np.int32)
    attention = np.zeros((len(rows), width), bool)
    loss = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
      sequence = list(row[0]) + list(row[k])
      tokens[i, :len(sequence)] = sequence
      attention[i, :len(sequence)] = True
      loss[i, len(row[0]):len(sequence)] = True
    arrays.update({f"{part}_tokens": tokens, f"{part}_attention_mask": attention, f"{part}_loss_mask": loss})
  return arrays


@pytest.mark.parametrize("per_octave,expected", [
    # Hand-counted: 2100 needs 9 x 256 with 8 per octave (2304), 17 x 128 with 16 (2176).
    (16, [16, 17, 31, 34, 100, 2176, 4096, 4352]),
    (8, [16, 18, 32, 36, 104, 2304, 4096, 4608]),
    (1, [16, 32, 32, 64, 128, 4096, 4096, 8192]),
])
def test_bucket_sizes_waste_at_most_one_part_in_per_octave(per_octave, expected):
  assert [packing.bucket_size(n, per_octave) for n in (1, 17, 31, 33, 100, 2100, 4096, 4097)] == expected
  n = np.arange(16, 5000)
  sizes = np.array([packing.bucket_size(int(k), per_octave) for k in n])
  assert np.all(sizes >= n) and np.all(sizes < n * (per_octave + 1) / per_octave)
  # Sizes per octave: [1024, 2048) holds exactly per_octave of them.
  assert len(set(sizes[(sizes >= 1024) & (sizes < 2048)])) == per_octave


def test_powers_of_two():
  assert [n for n in range(-2, 20) if packing.is_power_of_two(n)] == [1, 2, 4, 8, 16]
  assert not packing.is_power_of_two(True) and not packing.is_power_of_two(4.0)


def test_pair_extents_and_document_widths():
  arrays = _pairs([([1, 5], [7, 2], [9, 8, 2]), ([1, 5, 6, 6], [7, 2], [2])], width=8)
  prompt, chosen, rejected = packing.pair_extents(arrays)
  np.testing.assert_array_equal(prompt, [2, 4])
  np.testing.assert_array_equal(chosen, [2, 2])
  np.testing.assert_array_equal(rejected, [3, 1])
  # Two rows per pair: the longer of [prompt, chosen] and [prompt, rejected]; shared:
  # one [prompt | chosen | rejected] document.
  assert packing.widest_document({"train": arrays}, False) == (6, "train row 1")
  assert packing.widest_document({"train": arrays, "eval": None}, True) == (7, "train row 0")
  assert packing.document_width({"train": arrays}, True) == 8
  assert packing.document_width({"train": arrays}, False, multiple=4) == 8
  assert packing.widest_document({"train": None}, True) == (1, "")
  arrays["example_index"] = np.array([40, 41])
  assert packing.widest_document({"eval": arrays}, False) == (6, "eval row 1 (example_index 41)")


def test_pairs_that_do_not_share_their_prompt_are_named():
  arrays = _pairs([([1, 5], [7, 2], [9, 2])], width=6)
  arrays["rejected_tokens"][0, 1] = 6
  with pytest.raises(ValueError, match="train row 0: the chosen and rejected rows do not start with the same prompt"):
    packing.pair_extents(arrays, "train")
  gap = _pairs([([1, 5], [7, 2], [9, 2])], width=6)
  gap["chosen_loss_mask"][0, 3] = False
  with pytest.raises(ValueError, match=r"data row 0 \(chosen\) is not \[prompt\]\[completion\]\[pad\]"):
    packing.pair_extents(gap)
