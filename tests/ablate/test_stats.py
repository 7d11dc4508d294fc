"""t-intervals and paired differences against numbers computed by hand."""
import math

import numpy as np
import pytest

from rlhf_jax.ablate import stats


def test_t_interval_worked_example():
  # 1..5: mean 3, s = sqrt(2.5) = 1.5811; t_{0.975, 4} = 2.776 (printed t tables), so the
  # half-width is 2.776 * 1.5811 / sqrt(5) = 1.963.
  interval = stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
  assert interval.n == 5
  assert interval.mean == pytest.approx(3.0)
  assert interval.half_width == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5), abs=1e-3)
  assert interval.format() == "3.000 ± 1.963"


def test_t_interval_three_seeds_and_other_confidence():
  # 0.8, 0.9, 1.0: s = 0.1; t_{0.975, 2} = 4.303, t_{0.95, 2} = 2.920 (tables).
  assert stats.t_interval([0.8, 0.9, 1.0]).half_width == pytest.approx(4.303 * 0.1 / math.sqrt(3), abs=1e-4)
  assert stats.t_interval([0.8, 0.9, 1.0], confidence=0.90).half_width == pytest.approx(
      2.920 * 0.1 / math.sqrt(3), abs=1e-4)


def test_t_interval_degenerate_sizes():
  assert stats.t_interval([]).n == 0 and stats.t_interval([]).format() == "-"
  one = stats.t_interval([0.7])
  assert one.mean == 0.7 and math.isnan(one.half_width) and one.format() == "0.700"
  assert stats.t_interval([0.7, float("nan"), 0.9]).n == 2


def test_paired_difference_uses_shared_seeds_only():
  cell = {0: 0.80, 1: 0.85, 2: 0.90, 3: 0.50}
  baseline = {0: 0.70, 1: 0.80, 2: 0.78, 5: 0.1}
  diff = stats.paired_difference(cell, baseline)
  d = np.array([0.10, 0.05, 0.12])
  assert diff.n == 3
  assert diff.mean == pytest.approx(d.mean())
  assert diff.half_width == pytest.approx(4.303 * d.std(ddof=1) / math.sqrt(3), abs=1e-4)
  assert diff.excludes_zero()
  # Unpaired intervals of these cells overlap although the paired one excludes zero.
  assert not stats.t_interval([0.80, 0.85, 0.90]).low > stats.t_interval([0.70, 0.80, 0.78]).high
