"""Small-sample intervals shared by every module's results: the Student-t interval of a mean.

Every study in leanlm reports a mean over a handful of seeds (or a paired difference over seeds, or over the
tokens of one text) with a two-sided Student-t interval, ``mean ± t_{(1+level)/2, n-1} · s / sqrt(n)`` with
``s`` the sample standard deviation (``ddof`` 1). The quantile comes from ``scipy.stats.t``, exact at every
``n`` (the hand-typed tables that preceded this module rounded to three decimals and, beyond their last entry,
fell back to a normal or a fixed 2.0, which is too narrow below 60 degrees of freedom).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t critical value ``t_{(1+level)/2, df}`` (e.g. 4.303 at ``df`` 2); NaN for ``df`` < 1."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if df < 1:
        return float("nan")
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class MeanInterval:
    """A sample mean with the half width of its Student-t interval (NaN half width below two values)."""

    n: int
    mean: float
    half: float

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half


def mean_interval(values: Sequence[float], level: float = 0.95) -> MeanInterval:
    """Mean of ``values`` and the half width of its two-sided Student-t interval at ``level``.

    Raises ``ValueError`` on an empty sample; one value gives a NaN half width (no spread to estimate)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_interval needs at least one value")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return MeanInterval(1, mean, float("nan"))
    return MeanInterval(len(xs), mean, t_quantile(len(xs) - 1, level) * statistics.stdev(xs) / math.sqrt(len(xs)))


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> MeanInterval:
    """Mean of the paired differences ``a - b`` (same seeds, same tokens) with its Student-t interval."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    return mean_interval([x - y for x, y in zip(a, b, strict=True)], level)
