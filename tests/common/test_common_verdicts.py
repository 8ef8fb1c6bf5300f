"""Verdict rules: each rule type on cases that pass, fall short (partly) and fail, plus the edge states."""

from __future__ import annotations

import math

import pytest

from leanlm.common.verdicts import (
    FAILED,
    NOT_JUDGED,
    NOT_MEASURED,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARTLY,
    REPRODUCED,
    AtLeast,
    AtMost,
    Equals,
    Interval,
    NotTestable,
    RatioAtMost,
    Within,
    judge,
    number,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0), (2.5, 2.5), (True, 1.0), ("99%", 99.0), ("+4.1%", 4.1), ("-0.5", -0.5), ("3/4", 0.75),
        (" 2 / 8 ", 0.25), ("2.56x at 8192 (CPU)", 2.56), ("1,024 MB", 1024.0), ("1e-3", 0.001), (".5", 0.5),
        ("n/a", None), ("yes", None), (None, None), (float("nan"), None), ("3/0", None), ([1], None), ("", None),
    ],
)
def test_number_reads_the_forms_experiments_report(value, expected):
    got = number(value)
    if expected is None:
        assert got is None
    else:
        assert got is not None and math.isclose(got, expected)


def test_at_least_reproduced_partly_not():
    rule = AtLeast("pct", 99, partly=90)
    assert rule.evaluate({"pct": "100%"}).verdict == REPRODUCED
    assert rule.evaluate({"pct": 99}).verdict == REPRODUCED  # the threshold itself passes
    assert rule.evaluate({"pct": "95%"}).verdict == PARTLY
    assert rule.evaluate({"pct": 89.9}).verdict == NOT_REPRODUCED
    assert AtLeast("pct", 99).evaluate({"pct": 95}).verdict == NOT_REPRODUCED  # no partly band
    j = rule.evaluate({"pct": 95})
    assert "95 < 99" in j.reason
    assert rule.describe() == "reproduced if pct ≥ 99; partly if ≥ 90"
    with pytest.raises(ValueError, match="partly=100 must be <= threshold=99"):
        AtLeast("pct", 99, partly=100)


def test_at_most_reproduced_partly_not():
    rule = AtMost("rss", 1024, partly=1536)
    assert rule.evaluate({"rss": 512}).verdict == REPRODUCED
    assert rule.evaluate({"rss": "1,024 MB"}).verdict == REPRODUCED
    assert rule.evaluate({"rss": 1200}).verdict == PARTLY
    assert rule.evaluate({"rss": 2000}).verdict == NOT_REPRODUCED
    with pytest.raises(ValueError):
        AtMost("rss", 1024, partly=100)


def test_within_fixed_tolerance_and_spread_based_tolerance():
    rule = Within("ratio", 0.526, tolerance=0.01, partly=0.05)
    assert rule.evaluate({"ratio": 0.53}).verdict == REPRODUCED
    assert rule.evaluate({"ratio": 0.50}).verdict == PARTLY
    assert rule.evaluate({"ratio": 0.40}).verdict == NOT_REPRODUCED
    assert rule.evaluate({"ratio": 0.65}).verdict == NOT_REPRODUCED  # both sides
    by_std = Within("diff", 0.0, spread="std", k=2)
    assert by_std.evaluate({"diff": 0.019, "std": 0.01}).verdict == REPRODUCED  # 0.019 <= 2 * 0.01
    assert by_std.evaluate({"diff": -0.019, "std": 0.01}).verdict == REPRODUCED
    assert by_std.evaluate({"diff": 0.021, "std": 0.01}).verdict == NOT_REPRODUCED
    assert by_std.evaluate({"diff": 0.021}).verdict == NOT_MEASURED  # the spread is missing
    assert "2·std" in by_std.describe()
    with pytest.raises(ValueError):
        Within("x", 0, tolerance=0.1, partly=0.05)


def test_equals_strings_and_numbers():
    rule = Equals("identical", "yes")
    assert rule.evaluate({"identical": "yes"}).verdict == REPRODUCED
    assert rule.evaluate({"identical": " YES "}).verdict == REPRODUCED
    assert rule.evaluate({"identical": "NO"}).verdict == NOT_REPRODUCED
    numeric = Equals("agree", 1)
    assert numeric.evaluate({"agree": "3/3"}).verdict == REPRODUCED
    assert numeric.evaluate({"agree": "2/3"}).verdict == NOT_REPRODUCED
    assert numeric.evaluate({"agree": "n/a"}).verdict == NOT_MEASURED
    assert numeric.evaluate({}).verdict == NOT_MEASURED


def test_interval_contains_above_below():
    contains = Interval("diff", "ci", expect="contains")
    assert contains.evaluate({"diff": 0.01, "ci": 0.02}).verdict == REPRODUCED
    assert contains.evaluate({"diff": -0.01, "ci": 0.02}).verdict == REPRODUCED
    assert contains.evaluate({"diff": 0.03, "ci": 0.02}).verdict == NOT_REPRODUCED
    assert "excludes 0" in contains.evaluate({"diff": 0.03, "ci": 0.02}).reason
    above = Interval("gain", "ci", expect="above")
    assert above.evaluate({"gain": 0.05, "ci": 0.02}).verdict == REPRODUCED
    assert above.evaluate({"gain": 0.01, "ci": 0.02}).verdict == PARTLY  # estimate above, interval not
    assert above.evaluate({"gain": -0.01, "ci": 0.02}).verdict == NOT_REPRODUCED
    below = Interval("loss", "ci", expect="below", value=1.0)
    assert below.evaluate({"loss": 0.9, "ci": 0.05}).verdict == REPRODUCED
    assert below.evaluate({"loss": 0.99, "ci": 0.05}).verdict == PARTLY
    assert below.evaluate({"loss": 1.2, "ci": 0.05}).verdict == NOT_REPRODUCED
    assert contains.evaluate({"diff": 0.01}).verdict == NOT_MEASURED
    with pytest.raises(ValueError, match="expect must be"):
        Interval("a", "b", expect="inside")  # type: ignore[arg-type]


def test_ratio_at_most():
    rule = RatioAtMost("a_gap", "b_gap", at_most=0.5, partly=1.0)
    assert rule.evaluate({"a_gap": 0.1, "b_gap": 0.4}).verdict == REPRODUCED
    assert rule.evaluate({"a_gap": 0.3, "b_gap": 0.4}).verdict == PARTLY
    assert rule.evaluate({"a_gap": 0.5, "b_gap": 0.4}).verdict == NOT_REPRODUCED
    assert rule.evaluate({"a_gap": 0.5, "b_gap": 0}).verdict == NOT_MEASURED
    assert RatioAtMost("x", "y", 1.0).evaluate({"x": "85%", "y": "92%"}).verdict == REPRODUCED
    with pytest.raises(ValueError):
        RatioAtMost("x", "y", 1.0, partly=0.5)


def test_not_testable_needs_a_reason_and_ignores_metrics():
    rule = NotTestable("needs 8B training on GPUs")
    assert rule.evaluate({}).verdict == NOT_TESTABLE
    assert rule.evaluate({}).reason == "needs 8B training on GPUs"
    with pytest.raises(ValueError, match="needs a reason"):
        NotTestable("  ")


def test_missing_or_unreadable_metric_is_not_measured_never_a_verdict():
    rule = AtLeast("speedup", 1.0)
    assert rule.evaluate({}).verdict == NOT_MEASURED
    j = rule.evaluate({"speedup": "n/a"})
    assert j.verdict == NOT_MEASURED and "'n/a' is not a number" in j.reason


def test_judge_states():
    assert judge(None, {"x": 1}).verdict == NOT_JUDGED
    assert judge(AtLeast("x", 0), None).verdict == FAILED
    assert judge(AtLeast("x", 0), {"x": 1}).verdict == REPRODUCED

    class Broken(AtLeast):
        def evaluate(self, metrics):
            raise ZeroDivisionError("boom")

    assert judge(Broken("x", 0), {"x": 1}).verdict == NOT_MEASURED
