"""The selection rules as pure functions over arrays: keep count, stable top-k, and the exact radix cut.

Official semantics (``scripts/build_bis_subset.py``, brief §1.1): in a group of m candidates keep
``max(1, int(m * ratio))`` by score descending, ties in file order (a stable sort). Two ways to compute it,
with the same result:

* :func:`stable_top_k` when one group's scores fit in memory (the single-pass plan);
* :func:`find_cut` + :func:`keep_mask` when they do not: the exact k-th largest key per group by radix
  selection (8 passes of 8 bits over order-preserving integer keys), giving a threshold T and the number q of
  ties at T to keep; a row is kept iff its score > T, or == T and fewer than q tied rows of its group were
  kept before it. "> T, then the first q rows equal to T in file order" is exactly the stable sort's first k.

A non-candidate row (no scored step) has score NaN throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from leanlm.bis.score import RolloutStats, Scorer

#: Above this many candidate rows :func:`find_cut` re-reads the blocks on each radix pass instead of holding keys.
CUT_IN_MEMORY_ROWS = 4_000_000


def keep_count(m: int, ratio: float) -> int:
    """``max(1, int(m * ratio))`` for a group with m candidates (0 when m = 0), as the official script."""
    return max(1, int(m * ratio)) if m > 0 else 0


def chunk_scores(scorer: Scorer, stats: RolloutStats) -> np.ndarray:
    """Scores of a chunk of rows, NaN for the non-candidates; a NaN for a candidate is an error."""
    score = np.asarray(scorer.scores(stats), dtype=np.float64) + 0.0  # +0.0 folds -0.0 into 0.0
    score[~stats.candidate] = np.nan
    if np.isnan(score[stats.candidate]).any():
        raise ValueError(f"scorer {scorer.name!r} returned NaN for a candidate rollout")
    return score


def local_groups(groups: list[Any] | None, nrows: int, names: dict[Any, int]) -> np.ndarray:
    """Per-row local group codes; ``names`` (group name -> code) grows as new values are seen."""
    if groups is None:
        return np.zeros(nrows, dtype=np.int32)
    out = np.empty(nrows, dtype=np.int32)
    for i, g in enumerate(groups):
        key = "" if g is None else str(g)
        code = names.get(key)
        if code is None:
            code = names[key] = len(names)
        out[i] = code
    return out


def tally(counts: dict[int, int], local: np.ndarray, score: np.ndarray) -> None:
    """Add the candidates (non-NaN scores) of each local group to ``counts``."""
    cand = ~np.isnan(score)
    for code, c in zip(*np.unique(local[cand], return_counts=True), strict=True):
        counts[int(code)] = counts.get(int(code), 0) + int(c)


def sortable_keys(score: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of float64 scores (no NaN): a < b iff key(a) < key(b)."""
    bits = score.view(np.uint64)
    sign = bits >> np.uint64(63)
    return np.where(sign == 1, ~bits, bits | np.uint64(1 << 63))


def key_to_float(key: int | np.uint64) -> float:
    """The score whose :func:`sortable_keys` key is ``key``."""
    t = np.array([key], dtype=np.uint64)
    bits = np.where(t >> np.uint64(63) == 1, t & ~np.uint64(1 << 63), ~t)
    return float(bits.view(np.float64)[0])


def stable_top_k(score: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k largest non-NaN scores, ties by row order (Python's stable ``sorted(reverse=True)``)."""
    cand = np.flatnonzero(~np.isnan(score))
    order = np.argsort(-score[cand], kind="stable")
    return cand[order[:k]]


@dataclass(frozen=True)
class Cut:
    """Per global group: threshold key T, ties q at T to keep (in file order), k to keep, m candidates."""

    threshold: np.ndarray  # uint64
    ties: np.ndarray  # int64
    k: np.ndarray
    m: np.ndarray

    def threshold_value(self, group: int) -> float | None:
        """The k-th largest score of a group (``None`` when nothing is kept)."""
        return key_to_float(self.threshold[group]) if self.k[group] > 0 else None


def _radix_choose(hist: np.ndarray, need: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """From per-group 256-bin histograms pick the digit holding the need-th largest key; returns (digit, above)."""
    h = hist.reshape(groups, 256)[:, ::-1]
    cum = h.cumsum(axis=1)
    idx = np.argmax(cum >= need[:, None], axis=1)
    above = cum[np.arange(groups), idx] - h[np.arange(groups), idx]
    return (255 - idx).astype(np.uint64), above


#: ``blocks()`` yields (score, global group code) arrays, every row of the corpus once, in any order.
Blocks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def _candidates(blocks: Blocks) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for score, group in blocks():
        cand = ~np.isnan(score)
        if cand.any():
            yield sortable_keys(score[cand]), group[cand].astype(np.int64)


def _load(blocks: Blocks, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    keys, groups, total = [], [], 0
    for key, g in _candidates(blocks):
        total += len(key)
        if total > limit:
            return None
        keys.append(key)
        groups.append(g)
    if not keys:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(keys), np.concatenate(groups)


def find_cut(blocks: Blocks, m: np.ndarray, k: np.ndarray, in_memory_rows: int = CUT_IN_MEMORY_ROWS) -> Cut:
    """Exact k-th largest key per group by radix selection (8 passes × 8 bits).

    Up to ``in_memory_rows`` candidates the keys are loaded once (12 bytes each) and each pass keeps only the
    rows still in the running; beyond that every pass re-reads ``blocks()`` and memory is 256 counters per group.
    """
    groups = len(m)
    prefix = np.zeros(groups, dtype=np.uint64)
    need = k.astype(np.int64).copy()
    active = need > 0
    loaded = _load(blocks, in_memory_rows)
    for byte in range(8):
        shift = np.uint64(56 - 8 * byte)
        if loaded is not None:
            key, g = loaded
            digit = ((key >> shift) & np.uint64(255)).astype(np.int64)
            hist = np.bincount(g * 256 + digit, minlength=groups * 256)
        else:
            hist = np.zeros(groups * 256, dtype=np.int64)
            for key, g in _candidates(blocks):
                if byte:
                    ok = (key >> (shift + np.uint64(8))) == prefix[g]
                    g, key = g[ok], key[ok]
                d = ((key >> shift) & np.uint64(255)).astype(np.int64)
                hist += np.bincount(g * 256 + d, minlength=groups * 256)
        chosen, above = _radix_choose(hist, need, groups)
        need = np.where(active, need - above, need)
        prefix = np.where(active, (prefix << np.uint64(8)) | chosen, prefix)
        if loaded is not None:
            key, g = loaded
            keep = digit == chosen.astype(np.int64)[g]
            loaded = (key[keep], g[keep])
    return Cut(threshold=prefix, ties=np.where(active, need, 0), k=k, m=m)


def keep_mask(score: np.ndarray, groups: np.ndarray, cut: Cut, ties_left: np.ndarray) -> np.ndarray:
    """Pass-2 decision for a block of rows in file order; ``ties_left`` is updated in place."""
    cand = ~np.isnan(score)
    keep = np.zeros(len(score), dtype=bool)
    if not cand.any():
        return keep
    idx = np.flatnonzero(cand)
    g = groups[idx]
    key = sortable_keys(score[idx])
    t = cut.threshold[g]
    active = cut.k[g] > 0
    keep[idx[(key > t) & active]] = True
    tie_idx = idx[(key == t) & active]
    if len(tie_idx):
        tg = groups[tie_idx]
        for code in np.unique(tg):
            quota = int(ties_left[code])
            if quota <= 0:
                continue
            rows = tie_idx[tg == code][:quota]
            keep[rows] = True
            ties_left[code] -= len(rows)
    return keep
