"""VisualProcessBench step metrics (brief §1.5; official ``eval/prm/evaluate_visualprocessbench_prm.py``).

* a step is predicted correct when its score >= threshold;
* per source: macro-F1 = mean of the F1 of the positive class and the F1 of the negative class
  (an F1 with no true positive is 0, as sklearn's ``zero_division=0``);
* the headline "overall micro-F1" = per-source macro-F1 averaged with weights = the sources' step counts;
* pooled over all steps: F1+, F1-, macro-F1 and ROC-AUC (ties count one half);
* thresholds: fixed 0.5, chosen on a validation split (honest), or chosen on the test set itself as the
  official ``--auto`` does (optimistic; reported only as a labelled extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def f1_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(F1 of the positive class, F1 of the negative class) for boolean predictions and labels."""
    out = []
    for cls in (True, False):
        p, t = pred == cls, truth == cls
        tp = float((p & t).sum())
        denom = float(p.sum()) + float(t.sum())
        out.append(0.0 if tp == 0 else 2.0 * tp / denom)
    return out[0], out[1]


def macro_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    pos, neg = f1_pair(pred, truth)
    return (pos + neg) / 2.0


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's ``rankdata`` 'average')."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Mann-Whitney ROC-AUC (ties count 1/2); NaN when one class is absent."""
    truth = truth.astype(bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def at_threshold(scores: np.ndarray, truth: np.ndarray, sources: Sequence[str] | np.ndarray,
                 threshold: float) -> dict[str, Any]:
    """All VisualProcessBench numbers at one threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth).astype(bool)
    sources = np.asarray(sources)
    if not (len(scores) == len(truth) == len(sources)):
        raise ValueError(f"scores ({len(scores)}), truth ({len(truth)}) and sources ({len(sources)}) differ in length")
    pred = scores >= threshold
    per = {}
    for s in sorted(set(sources.tolist())):
        sel = sources == s
        per[str(s)] = {"steps": int(sel.sum()), "macro_f1": macro_f1(pred[sel], truth[sel])}
    n = sum(v["steps"] for v in per.values())
    overall = sum(v["steps"] * v["macro_f1"] for v in per.values()) / max(n, 1)
    pos, neg = f1_pair(pred, truth)
    return {"threshold": float(threshold), "overall_micro_f1": overall, "per_source": per, "pooled_f1_pos": pos,
            "pooled_f1_neg": neg, "pooled_macro_f1": (pos + neg) / 2.0, "steps": n}


def best_threshold(scores: np.ndarray, truth: np.ndarray, sources: Sequence[str] | np.ndarray,
                   max_candidates: int = 1000) -> float:
    """The threshold (from the observed scores, at most ``max_candidates`` quantiles) maximising overall micro-F1."""
    scores = np.asarray(scores, dtype=np.float64)
    cands = np.unique(scores)
    if len(cands) > max_candidates:
        cands = np.unique(np.quantile(scores, np.linspace(0, 1, max_candidates)))
    best, best_t = -1.0, 0.5
    for t in cands:
        v = at_threshold(scores, truth, sources, float(t))["overall_micro_f1"]
        if v > best:
            best, best_t = v, float(t)
    return best_t


def evaluate(test: tuple[np.ndarray, np.ndarray, np.ndarray],
             val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Metrics on ``test`` = (scores, truth, sources): fixed 0.5, val-tuned threshold, and tune-on-test (optimistic)."""
    scores, truth, sources = test
    out: dict[str, Any] = {"auc": roc_auc(np.asarray(scores), np.asarray(truth)),
                           "fixed_0.5": at_threshold(scores, truth, sources, 0.5)}
    if val is not None:
        out["val_tuned"] = at_threshold(scores, truth, sources, best_threshold(*val))
    out["test_tuned_optimistic"] = at_threshold(scores, truth, sources, best_threshold(scores, truth, sources))
    return out
