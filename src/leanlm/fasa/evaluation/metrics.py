"""Metrics of the evaluation: Wilson score intervals, answer scoring, per-(method, budget) aggregation."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval ``(low, high)`` of a binomial proportion (``(nan, nan)`` when ``n == 0``)."""
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 (p = 1) the low (high) bound is 0 (1) exactly; computed, it can miss by a rounding error, which
    # put the point outside its own interval (a negative error bar, which matplotlib rejects)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def score_answer(text: str, answers: list[str]) -> tuple[bool, float]:
    """``(all found, fraction found)``: case-insensitive substring match of every expected answer (RULER's
    ``string_match_all``; binary correctness requires all of them)."""
    low = text.lower()
    found = sum(a.lower() in low for a in answers)
    return found == len(answers), found / len(answers)


def aggregate(records: Iterable[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (method, budget): accuracy with its Wilson interval, agreement with full KV, mean probes.

    ``records`` are the per-prompt rows of :mod:`leanlm.fasa.evaluation.run` (one per method and budget).
    """
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["method"], int(r["budget"]))].append(r)
    out = {}
    for key, rows in groups.items():
        n = len(rows)
        correct = sum(bool(r["correct"]) for r in rows)
        agree = sum(bool(r["agree"]) for r in rows)
        lo, hi = wilson(correct, n)
        entry: dict[str, Any] = {"n": n, "correct": correct, "acc": correct / n, "acc_lo": lo, "acc_hi": hi,
                                 "agree": agree, "agree_rate": agree / n}
        for probe in ("recall", "mass", "rel_err"):
            layers = [r[probe] for r in rows if r.get(probe)]
            if layers:
                width = len(layers[0])
                per_layer = [_nanmean(x[i] for x in layers) for i in range(width)]
                entry[probe + "_layers"] = per_layer
                entry[probe] = _nanmean(per_layer)
        out[key] = entry
    return out


def _nanmean(values: Iterable[float | None]) -> float:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    return sum(xs) / len(xs) if xs else float("nan")


def ppl_ratio_interval(nll: list[float], nll_ref: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Perplexity of ``nll`` relative to ``nll_ref`` on the same tokens, in % (``100 (exp(mean d) - 1)`` with
    ``d`` the per-token NLL differences), and a Student-t interval of the paired mean difference mapped the
    same way. Neighbouring tokens are not independent, so the interval is approximate (too narrow if the
    differences are positively correlated)."""
    from leanlm.common.stats import paired_interval

    if len(nll) != len(nll_ref):
        raise ValueError(f"paired NLLs need equal lengths, got {len(nll)} and {len(nll_ref)}")
    d = paired_interval(nll, nll_ref, level)
    return 100 * math.expm1(d.mean), 100 * math.expm1(d.lo), 100 * math.expm1(d.hi)
