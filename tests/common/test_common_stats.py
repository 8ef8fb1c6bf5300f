"""The shared Student-t interval against textbook quantiles and a hand computation."""

import math
import statistics

import pytest

from leanlm.common.stats import mean_interval, paired_interval, t_quantile


@pytest.mark.parametrize(("df", "table"), [(1, 12.706), (2, 4.303), (4, 2.776), (11, 2.201), (29, 2.045),
                                           (100, 1.984)])
def test_t_quantile_matches_the_printed_table(df, table):
    assert t_quantile(df) == pytest.approx(table, abs=5e-4)


def test_t_quantile_other_levels_and_bad_input():
    assert t_quantile(5, 0.90) == pytest.approx(2.015, abs=5e-4)
    assert t_quantile(10, 0.99) == pytest.approx(3.169, abs=5e-4)
    assert math.isnan(t_quantile(0))
    with pytest.raises(ValueError, match="level"):
        t_quantile(3, 1.0)


def test_mean_interval_by_hand():
    xs = [0.01, 0.03, -0.02, 0.02, 0.005]
    m = mean_interval(xs)
    half = 2.7764451 * statistics.stdev(xs) / math.sqrt(5)
    assert m.n == 5 and m.mean == pytest.approx(0.009) and m.half == pytest.approx(half, rel=1e-6)
    assert (m.lo, m.hi) == pytest.approx((0.009 - half, 0.009 + half))
    # beyond the old tables' last entries (a fixed 2.0 at n > 6 in one of them) the quantile stays exact
    assert mean_interval(list(range(12))).half == pytest.approx(2.2009852 * statistics.stdev(range(12)) / 12 ** 0.5)


def test_single_value_and_empty_sample():
    one = mean_interval([3.0])
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.half) and math.isnan(one.lo)
    with pytest.raises(ValueError, match="at least one"):
        mean_interval([])


def test_paired_interval_is_the_interval_of_the_differences():
    a, b = [0.5, 0.7, 0.6, 0.9], [0.4, 0.5, 0.55, 0.6]
    assert paired_interval(a, b) == mean_interval([x - y for x, y in zip(a, b, strict=True)])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_interval(a, b[:3])
