"""CPU kernel (numba) for FASA-C: the exact top-k behind :func:`leanlm.fasa.topk.numba_topk`.

Imported lazily (only when ``numba`` is installed and a CPU top-k runs); compiled once and cached on disk
by numba (``cache=True``). See :mod:`leanlm.fasa.topk` for why the pre-filter is exact and the tie rule.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def kth_largest(a, n, k):
    """The value of the ``k``-th largest of ``a[:n]`` (quickselect, Hoare partition; reorders ``a``)."""
    target = n - k
    lo, hi = 0, n - 1
    while lo < hi:  # quickselect (Hoare partition, median of three)
        mid = (lo + hi) >> 1
        x, y, z = a[lo], a[mid], a[hi]
        if x > y:
            x, y = y, x
        if y > z:
            y = z
        if x > y:
            y = x
        i, j = lo, hi
        while i <= j:
            while a[i] < y:
                i += 1
            while a[j] > y:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return a[target]
    return a[target]

@numba.njit(nogil=True, cache=True)
def rows(scores, k, nb, out):
    """Exact top-``k`` positions of each row of ``scores (R, t)`` into ``out (R, k)``; False if a row holds NaN.

    ``nb``: number of strided groups of the pre-filter (``nb <= k`` or ``t < 2·nb``: no pre-filter).
    """
    n_rows, t = scores.shape
    bs = t // nb if nb > k else 0
    maxima = np.empty(max(nb, 1), scores.dtype)
    pos = np.empty(t, np.int64)
    vals = np.empty(t, scores.dtype)
    work = np.empty(t, scores.dtype)
    for r in range(n_rows):
        row = scores[r]
        bound = -np.inf
        if bs >= 2:  # group j = row[j], row[j + nb], ... (the tail beyond nb·bs only joins the survivors)
            for j in range(nb):
                maxima[j] = row[j]
            for g in range(1, bs):
                base = g * nb
                for j in range(nb):
                    maxima[j] = max(maxima[j], row[base + j])
            bound = kth_largest(maxima, nb, k)  # <= the row's k-th largest score
        cnt = 0
        for i in range(t):  # survivors: every top-k element is >= bound
            v = row[i]
            if v >= bound:
                pos[cnt] = i
                vals[cnt] = v
                cnt += 1
            elif v != v:
                return False
        work[:cnt] = vals[:cnt]
        kth = kth_largest(work, cnt, k)
        m = 0
        for i in range(cnt):  # everything above the k-th value, then ties at it by position
            if vals[i] > kth:
                out[r, m] = pos[i]
                m += 1
        for i in range(cnt):
            if m == k:
                break
            if vals[i] == kth:
                out[r, m] = pos[i]
                m += 1
        if m < k:  # NaN compares false everywhere: only reachable through NaN
            return False
    return True

