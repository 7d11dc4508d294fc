"""Means with Student-t confidence intervals, and paired differences over shared seeds.

For n values x_1..x_n with mean m and sample standard deviation s (denominator n - 1),
the two-sided (1 - alpha) t-interval for the mean is

  m ± t_{1 - alpha/2, n - 1} * s / sqrt(n)

(Student 1908; e.g. Wasserman, "All of Statistics", 2004, sec. 6.3.2). It assumes roughly
normal per-seed results; with 3-10 seeds that is the honest interval to report, wider than
a normal-quantile one. Paired differences d_s = x_s(cell) - x_s(baseline) over the seeds s
both cells ran use the same interval on d: seeds share the world, the pairs and the
annotators, so pairing removes that shared variation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["Interval", "paired_difference", "t_interval"]


@dataclasses.dataclass(frozen=True)
class Interval:
  """mean ± half_width over n values (half_width NaN when n < 2)."""

  mean: float
  half_width: float
  n: int

  @property
  def low(self) -> float:
    return self.mean - self.half_width

  @property
  def high(self) -> float:
    return self.mean + self.half_width

  def excludes_zero(self) -> bool:
    return bool(np.isfinite(self.half_width) and (self.low > 0 or self.high < 0))

  def format(self, digits: int = 3) -> str:
    if self.n == 0:
      return "-"
    if not np.isfinite(self.half_width):
      return f"{self.mean:.{digits}f}"
    return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
  """The t-interval of the module docstring; NaN values are dropped."""
  x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
  n = int(x.size)
  if n == 0:
    return Interval(math.nan, math.nan, 0)
  if n == 1:
    return Interval(float(x[0]), math.nan, 1)
  quantile = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, df=n - 1))
  return Interval(float(x.mean()), quantile * float(x.std(ddof=1)) / math.sqrt(n), n)


def paired_difference(cell: dict[int, float], baseline: dict[int, float], confidence: float = 0.95) -> Interval:
  """t-interval of cell[s] - baseline[s] over the seeds s present (and finite) in both."""
  seeds = sorted(s for s in cell if s in baseline and np.isfinite(cell[s]) and np.isfinite(baseline[s]))
  return t_interval([cell[s] - baseline[s] for s in seeds], confidence)
