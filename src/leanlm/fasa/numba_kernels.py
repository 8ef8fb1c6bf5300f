"""CPU kernels (numba): FASA-C's exact top-k behind :func:`leanlm.fasa.topk.numba_topk`, and the column
gathers of the static/online-subspace selectors (:func:`leanlm.fasa.selectors.gqa_gather_dims`, FASA's TIP).

Imported lazily (only when ``numba`` is installed and a CPU top-k or gather runs); compiled once and cached on
disk by numba (``cache=True``). See :mod:`leanlm.fasa.topk` for why the pre-filter is exact and the tie rule.
The gathers are plain copies (bit-identical to the torch indexing they replace; tests check it).
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



@numba.njit(nogil=True, cache=True)
def gather_head_dims(keys, dims, out):
    """``out[b, h, t, j] = keys[b, h // n_rep, t, dims[b, h, j]]``: the ``dims (B, H_q, r)`` columns of each
    query head's GQA key head, ``out (B, H_q, T, r)`` (what :func:`leanlm.fasa.selectors.gqa_gather_dims`
    returns). A plain copy, so equal to the torch gather bit for bit; one pass over each KV head's rows
    serves all its query heads (the torch gather reads the cache once per query head)."""
    n_b, n_kv, n_t = keys.shape[0], keys.shape[1], keys.shape[2]
    n_q, r = dims.shape[1], dims.shape[2]
    n_rep = n_q // n_kv
    for b in range(n_b):
        for g in range(n_kv):
            for t in range(n_t):
                for h in range(g * n_rep, (g + 1) * n_rep):
                    for j in range(r):
                        out[b, h, t, j] = keys[b, g, t, dims[b, h, j]]


@numba.njit(nogil=True, cache=True)
def gather_dims_by_row(keys, dims, out):
    """``out[h, j, b, t] = keys[b, h // n_rep, t, dims[h, j]]`` (FASA's TIP key columns, ``out (H_q, |D|, B, T)``,
    the layout of ``keys[:, kv_of_head[:, None], :, dims]``): a copy in blocks of rows that stay in L1."""
    n_b, n_kv, n_t = keys.shape[0], keys.shape[1], keys.shape[2]
    n_q, r = dims.shape[0], dims.shape[1]
    n_rep = n_q // n_kv
    blk = 128
    for b in range(n_b):
        for t0 in range(0, n_t, blk):
            t1 = min(t0 + blk, n_t)
            for h in range(n_q):
                g = h // n_rep
                for j in range(r):
                    c = dims[h, j]
                    for t in range(t0, t1):
                        out[h, j, b, t] = keys[b, g, t, c]
