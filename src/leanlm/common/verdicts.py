"""Verdict rules: how a registered claim is judged from its experiment's own metrics, never by hand.

An experiment declares, with each :class:`leanlm.reproduce.Claim`, a small typed rule; the report evaluates
it on ``ExperimentResult.metrics`` and shows one verdict from a fixed vocabulary:

- ``reproduced``, ``partly``, ``not reproduced``: what the rule concluded from the numbers;
- ``not testable here``: the claim needs what this machine cannot give (declared with :class:`NotTestable`,
  which carries the reason);

and three states that are not conclusions about the paper: ``not judged`` (the claim has no rule),
``not measured`` (the run did not produce the metric the rule reads, e.g. a step the quick config skips),
``experiment failed`` (the experiment raised).

Metric values may be numbers or the strings experiments put in their reports: ``"99%"`` reads as 99,
``"3/4"`` as 0.75, ``"2.56x at 8192 (CPU)"`` as 2.56, ``"+4.1%"`` as 4.1, ``"1,024"`` as 1024 (see
:func:`number`). A rule never guesses: a value it cannot read gives ``not measured`` with the reason.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

REPRODUCED = "reproduced"
PARTLY = "partly"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable here"
#: The verdicts a rule can return.
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTABLE)
NOT_JUDGED = "not judged"
NOT_MEASURED = "not measured"
FAILED = "experiment failed"
#: Every state a claim row can show, in the order the report counts them.
STATES = (*VERDICTS, NOT_MEASURED, NOT_JUDGED, FAILED)

_FRACTION = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")
_LEADING = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)")


def number(value: Any) -> float | None:
    """The number a metric value stands for, or None when it is not one (``"n/a"``, NaN, None, ``"yes"``).

    Strings are read from their start: an optional sign, digits (thousands commas allowed), a decimal part;
    a whole-string ``a/b`` is the fraction a/b; a trailing ``%`` or ``x`` is a unit and does not scale the
    number (``"99%"`` -> 99.0)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        out = float(value)
        return None if math.isnan(out) else out
    if not isinstance(value, str):
        return None
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", value)
    fraction = _FRACTION.match(text)
    if fraction:
        denominator = float(fraction.group(2))
        return float(fraction.group(1)) / denominator if denominator else None
    leading = _LEADING.match(text)
    return float(leading.group(1)) if leading else None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@dataclass(frozen=True)
class Judgement:
    """A verdict and the one-line reason the report shows beside it."""

    verdict: str
    reason: str


class Rule(ABC):
    """Base class: ``evaluate(metrics)`` returns a :class:`Judgement`; ``describe()`` says the rule in words."""

    def metric_keys(self) -> tuple[str, ...]:
        return ()

    @abstractmethod
    def evaluate(self, metrics: dict[str, Any]) -> Judgement:
        """The verdict on one experiment's metrics."""

    @abstractmethod
    def describe(self) -> str:
        """The rule in words, for the report."""

    def _read(self, metrics: dict[str, Any], key: str) -> float | Judgement:
        """``metrics[key]`` as a number, or a ``not measured`` judgement saying why it cannot be read."""
        if key not in metrics:
            return Judgement(NOT_MEASURED, f"this run has no metric {key!r}")
        value = number(metrics[key])
        if value is None:
            return Judgement(NOT_MEASURED, f"{key} = {metrics[key]!r} is not a number")
        return value


def _threshold_verdict(ok: bool, partly_ok: bool | None) -> str:
    if ok:
        return REPRODUCED
    return PARTLY if partly_ok else NOT_REPRODUCED


@dataclass(frozen=True)
class AtLeast(Rule):
    """Higher is better: reproduced when ``metric >= threshold``, partly when ``metric >= partly``."""

    metric: str
    threshold: float
    partly: float | None = None

    def __post_init__(self) -> None:
        if self.partly is not None and self.partly > self.threshold:
            raise ValueError(f"AtLeast({self.metric!r}): partly={self.partly} must be <= threshold={self.threshold}")

    def metric_keys(self) -> tuple[str, ...]:
        return (self.metric,)

    def evaluate(self, metrics: dict[str, Any]) -> Judgement:
        x = self._read(metrics, self.metric)
        if isinstance(x, Judgement):
            return x
        verdict = _threshold_verdict(x >= self.threshold, None if self.partly is None else x >= self.partly)
        return Judgement(verdict, f"{_fmt(x)} {'≥' if x >= self.threshold else '<'} {_fmt(self.threshold)}")

    def describe(self) -> str:
        extra = f"; partly if ≥ {_fmt(self.partly)}" if self.partly is not None else ""
        return f"reproduced if {self.metric} ≥ {_fmt(self.threshold)}{extra}"


@dataclass(frozen=True)
class AtMost(Rule):
    """Lower is better: reproduced when ``metric <= threshold``, partly when ``metric <= partly``."""

    metric: str
    threshold: float
    partly: float | None = None

    def __post_init__(self) -> None:
        if self.partly is not None and self.partly < self.threshold:
            raise ValueError(f"AtMost({self.metric!r}): partly={self.partly} must be >= threshold={self.threshold}")

    def metric_keys(self) -> tuple[str, ...]:
        return (self.metric,)

    def evaluate(self, metrics: dict[str, Any]) -> Judgement:
        x = self._read(metrics, self.metric)
        if isinstance(x, Judgement):
            return x
        verdict = _threshold_verdict(x <= self.threshold, None if self.partly is None else x <= self.partly)
        return Judgement(verdict, f"{_fmt(x)} {'≤' if x <= self.threshold else '>'} {_fmt(self.threshold)}")

    def describe(self) -> str:
        extra = f"; partly if ≤ {_fmt(self.partly)}" if self.partly is not None else ""
        return f"reproduced if {self.metric} ≤ {_fmt(self.threshold)}{extra}"


@dataclass(frozen=True)
class Within(Rule):
    """Close to a target: reproduced when ``|metric - target| <= tolerance``, partly when ``<= partly``.

    With ``spread`` (a metric key, e.g. a seed standard deviation) the tolerance is
    ``max(tolerance, k * metrics[spread])``: "within 2 seed std of 0"."""

    metric: str
    target: float
    tolerance: float = 0.0
    partly: float | None = None
    spread: str | None = None
    k: float = 2.0

    def __post_init__(self) -> None:
        if self.tolerance < 0 or (self.partly is not None and self.partly < self.tolerance):
            raise ValueError(f"Within({self.metric!r}): need 0 <= tolerance <= partly")

    def metric_keys(self) -> tuple[str, ...]:
        return (self.metric,) + ((self.spread,) if self.spread else ())

    def evaluate(self, metrics: dict[str, Any]) -> Judgement:
        x = self._read(metrics, self.metric)
        if isinstance(x, Judgement):
            return x
        tol = self.tolerance
        if self.spread:
            s = self._read(metrics, self.spread)
            if isinstance(s, Judgement):
                return s
            tol = max(tol, self.k * abs(s))
        gap = abs(x - self.target)
        verdict = _threshold_verdict(gap <= tol, None if self.partly is None else gap <= self.partly)
        return Judgement(verdict, f"|{_fmt(x)} − {_fmt(self.target)}| = {_fmt(gap)} {'≤' if gap <= tol else '>'} {_fmt(tol)}")

    def describe(self) -> str:
        tol = _fmt(self.tolerance)
        if self.spread:
            tol = f"max({tol}, {_fmt(self.k)}·{self.spread})" if self.tolerance else f"{_fmt(self.k)}·{self.spread}"
        extra = f"; partly within {_fmt(self.partly)}" if self.partly is not None else ""
        return f"reproduced if {self.metric} is within {tol} of {_fmt(self.target)}{extra}"


@dataclass(frozen=True)
class Equals(Rule):
    """An exact outcome: reproduced when the metric equals ``expected`` (numbers compared as numbers, strings
    case-insensitively), not reproduced otherwise."""

    metric: str
    expected: Any

    def metric_keys(self) -> tuple[str, ...]:
        return (self.metric,)

    def evaluate(self, metrics: dict[str, Any]) -> Judgement:
        if self.metric not in metrics:
            return Judgement(NOT_MEASURED, f"this run has no metric {self.metric!r}")
        got = metrics[self.metric]
        want_n = number(self.expected) if not isinstance(self.expected, str) else None
        if want_n is not None:
            got_n = number(got)
            if got_n is None:
                return Judgement(NOT_MEASURED, f"{self.metric} = {got!r} is not a number")
            same = got_n == want_n
        else:
            same = str(got).strip().lower() == str(self.expected).strip().lower()
        return Judgement(REPRODUCED if same else NOT_REPRODUCED, f"{got!r} {'=' if same else '≠'} {self.expected!r}")

    def describe(self) -> str:
        return f"reproduced if {self.metric} = {self.expected!r}"


@dataclass(frozen=True)
class Interval(Rule):
    """An interval ``estimate ± half_width`` (both metric keys, e.g. a difference and its 95% CI half-width)
    against a value (default 0).

    - ``expect="contains"`` (no difference claimed): reproduced when the interval contains ``value``, or when
      the whole interval lies within ``value ± tolerance`` (a difference too small to matter), else not
      reproduced.
    - ``expect="above"`` (a gain claimed): reproduced when the whole interval is above ``value``, partly when
      only the estimate is, not reproduced otherwise. ``"below"`` mirrors it."""

    estimate: str
    half_width: str
    expect: Literal["contains", "above", "below"] = "contains"
    value: float = 0.0
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if self.expect not in ("contains", "above", "below"):
            raise ValueError(f"Interval({self.estimate!r}): expect must be contains/above/below, got {self.expect!r}")

    def metric_keys(self) -> tuple[str, ...]:
        return (self.estimate, self.half_width)

    def evaluate(self, metrics: dict[str, Any]) -> Judgement:
        est = self._read(metrics, self.estimate)
        if isinstance(est, Judgement):
            return est
        hw = self._read(metrics, self.half_width)
        if isinstance(hw, Judgement):
            return hw
        lo, hi = est - abs(hw), est + abs(hw)
        shown = f"[{_fmt(lo)}, {_fmt(hi)}]"
        if self.expect == "contains":
            inside = lo <= self.value <= hi
            near = self.tolerance > 0 and self.value - self.tolerance <= lo and hi <= self.value + self.tolerance
            reason = f"{shown} {'contains' if inside else 'excludes'} {_fmt(self.value)}"
            if self.tolerance > 0 and not inside:
                reason += f" and {'lies' if near else 'does not lie'} within {_fmt(self.value)} ± {_fmt(self.tolerance)}"
            return Judgement(REPRODUCED if inside or near else NOT_REPRODUCED, reason)
        if self.expect == "above":
            verdict = REPRODUCED if lo > self.value else PARTLY if est > self.value else NOT_REPRODUCED
        else:
            verdict = REPRODUCED if hi < self.value else PARTLY if est < self.value else NOT_REPRODUCED
        return Judgement(verdict, f"{shown} vs {_fmt(self.value)}")

    def describe(self) -> str:
        interval = f"{self.estimate} ± {self.half_width}"
        if self.expect == "contains":
            near = f" or lies within {_fmt(self.value)} ± {_fmt(self.tolerance)}" if self.tolerance > 0 else ""
            return f"reproduced if {interval} contains {_fmt(self.value)}{near}"
        side = ">" if self.expect == "above" else "<"
        return f"reproduced if all of {interval} {side} {_fmt(self.value)}; partly if only the estimate is"


@dataclass(frozen=True)
class RatioAtMost(Rule):
    """One metric against another: reproduced when ``metric / other <= at_most``, partly when ``<= partly``
    (e.g. "the elastic sub-models lose at most half of what the plain ones lose")."""

    metric: str
    other: str
    at_most: float
    partly: float | None = None

    def __post_init__(self) -> None:
        if self.partly is not None and self.partly < self.at_most:
            raise ValueError(f"RatioAtMost({self.metric!r}): partly={self.partly} must be >= at_most={self.at_most}")

    def metric_keys(self) -> tuple[str, ...]:
        return (self.metric, self.other)

    def evaluate(self, metrics: dict[str, Any]) -> Judgement:
        a = self._read(metrics, self.metric)
        if isinstance(a, Judgement):
            return a
        b = self._read(metrics, self.other)
        if isinstance(b, Judgement):
            return b
        if b == 0:
            return Judgement(NOT_MEASURED, f"{self.other} = 0: the ratio is undefined")
        ratio = a / b
        verdict = _threshold_verdict(ratio <= self.at_most, None if self.partly is None else ratio <= self.partly)
        return Judgement(verdict, f"{_fmt(a)} / {_fmt(b)} = {_fmt(ratio)} {'≤' if ratio <= self.at_most else '>'} "
                                  f"{_fmt(self.at_most)}")

    def describe(self) -> str:
        extra = f"; partly if ≤ {_fmt(self.partly)}" if self.partly is not None else ""
        return f"reproduced if {self.metric} / {self.other} ≤ {_fmt(self.at_most)}{extra}"


@dataclass(frozen=True)
class NotTestable(Rule):
    """The claim cannot be tested on this machine (e.g. it needs 8B-model training on GPUs); ``reason`` says
    what is missing. The verdict is ``not testable here`` whatever the metrics."""

    reason: str

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError("NotTestable needs a reason")

    def evaluate(self, metrics: dict[str, Any]) -> Judgement:
        return Judgement(NOT_TESTABLE, self.reason)

    def describe(self) -> str:
        return f"not testable here: {self.reason}"


def judge(rule: Rule | None, metrics: dict[str, Any] | None) -> Judgement:
    """The verdict of one claim: ``not judged`` without a rule, ``experiment failed`` without metrics (the
    experiment raised), else the rule's judgement. A rule that raises is reported, not propagated."""
    if rule is None:
        return Judgement(NOT_JUDGED, "no rule declared with the claim")
    if metrics is None:
        return Judgement(FAILED, "the experiment failed: see its section")
    try:
        judgement = rule.evaluate(metrics)
    except Exception as exc:  # a broken rule must not break the report
        return Judgement(NOT_MEASURED, f"rule error: {type(exc).__name__}: {exc}")
    if judgement.verdict not in (*VERDICTS, NOT_MEASURED):
        raise ValueError(f"rule {rule!r} returned {judgement.verdict!r}, not one of {VERDICTS}")
    return judgement


__all__ = [
    "FAILED", "NOT_JUDGED", "NOT_MEASURED", "NOT_REPRODUCED", "NOT_TESTABLE", "PARTLY", "REPRODUCED", "STATES",
    "VERDICTS", "AtLeast", "AtMost", "Equals", "Interval", "Judgement", "NotTestable", "RatioAtMost", "Rule", "Within",
    "judge", "number",
]
