"""The toy reward of the tiny online presets: the count of the GOOD marker's word."""

from rlhf_jax.data import toy as toy_data
from rlhf_jax.rl import toy


def test_good_marker_count_counts_whole_words():
  good = str(toy_data.TOY_GOOD)
  completions = [f"{good} 7 {good}", "", f"13 {good}3 {good}0", f"{good}"]
  assert toy.good_marker_count(["p"] * 4, completions) == [2.0, 0.0, 0.0, 1.0]
  assert good == "3"  # the word the module docstring names
