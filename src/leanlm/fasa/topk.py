"""Exact top-k selection that is cheaper than ``torch.topk`` over long rows (the ``TopK-I`` of paper Eq. 6).

Both routines use the same exact pre-filter. Split a row of ``t`` scores into ``nb`` groups and take each
group's maximum. The ``k``-th largest group maximum ``b`` is a lower bound on the row's ``k``-th largest
score (``k`` groups each hold an element at least that large). So every top-``k`` element is ``>= b``:
keeping only the elements ``>= b`` (or only the ``k`` groups with the largest maxima, which hold all of
them) and selecting the top ``k`` among those returns exactly the row's top ``k`` values.

- :func:`numba_topk` (CPU, fp32/fp64, when ``numba`` is installed; the default there): ``nb = 2k`` strided
  groups, so ``b`` is about the median group maximum and about ``1.4·k`` elements survive, whatever ``t``.
  Per row: one pass for the group maxima, a quickselect over ``nb`` maxima, one pass collecting the
  survivors, a quickselect over them, one pass writing the ``k`` indices. Tie rule: among elements equal
  to the ``k``-th largest value, the **lowest positions** are taken (deterministic; ``torch.topk``'s
  choice among ties is unspecified). Rows holding NaN fall back to ``torch.topk`` (which ranks NaN
  highest). Measured on this CPU (9 rows, k = 256, one thread, under load): 4x faster than
  ``torch.topk`` at t = 8K, 3.5-4x at 32K.
- the torch fallback (GPU, other dtypes, no numba): ``nb = t / bs`` **strided** groups (group ``j`` =
  elements ``j, j + nb, ...``: the maxima are an element-wise max over ``bs`` contiguous rows, one
  SIMD-friendly pass), ``topk`` over the ``nb`` maxima picks ``k`` groups, a second ``topk`` over their
  ``k·bs`` elements gives the answer; ``bs ≈ sqrt(t / k)`` balances the two (:func:`block_size_for`).
  About 2x faster than ``torch.topk`` at 8K, 2.5-3x at 32K. Ties: as ``torch.topk`` (unspecified).

Both return the same *values* as ``torch.topk`` (tests compare against brute force, with ties, ``-inf``,
``k = 1``, ``k >= t``); only the choice among equal values at the boundary may differ.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def block_size_for(t: int, k: int) -> int:
    """Elements per group of the torch pre-filter (0 = plain ``torch.topk``), from CPU measurements.

    ``t / k < 16``: plain ``topk`` (the pre-filter does not pay); else ``2 ** round(log2(sqrt(t / k)) + 0.25)``,
    which balances the two ``topk`` calls (t = 8K, k = 256: 8; 32K: 16).
    """
    ratio = t / max(1, k)
    if ratio < 16:
        return 0
    return 1 << math.floor(math.log2(ratio) / 2 + 0.75)


def exact_topk(scores: torch.Tensor, k: int, block: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Indices of the ``k`` largest entries along the last dim of ``scores`` (unsorted), exactly.

    ``backend``: ``"auto"`` (:func:`numba_topk` for CPU fp32/fp64 scores when numba is installed and
    ``block`` is ``None``, else torch), ``"numba"`` (error if unavailable), ``"torch"``. ``block``
    (torch backend): elements per group of the pre-filter (``None`` = :func:`block_size_for`; ``0`` or
    ``1`` = plain ``torch.topk``). ``k >= t`` returns all ``t`` indices. ``-inf`` entries are picked
    only when fewer than ``k`` entries are larger, as with ``torch.topk``.
    """
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    t = scores.shape[-1]
    k = min(int(k), t)
    if backend == "numba" or (backend == "auto" and block is None and numba_ok(scores) and 0 < k < t):
        got = numba_topk(scores, k)
        if got is not None:
            return got
    bs = block_size_for(t, k) if block is None else int(block)
    if bs <= 1 or t // bs <= k:
        return scores.topk(k, dim=-1, sorted=False).indices
    nb = t // bs
    head = scores[..., : nb * bs].unflatten(-1, (bs, nb))  # (..., bs, nb): group j = column j (strided)
    chosen = head.amax(-2).topk(k, dim=-1, sorted=False).indices  # (..., k) groups with the largest maxima
    candidates = head.gather(-1, chosen.unsqueeze(-2).expand(*chosen.shape[:-1], bs, k)).flatten(-2)  # (..., bs·k)
    position = (chosen.unsqueeze(-2) + torch.arange(0, nb * bs, nb, device=scores.device)[:, None]).flatten(-2)
    if nb * bs < t:  # the ragged tail joins the candidates as is
        tail = scores[..., nb * bs :]
        candidates = torch.cat([candidates, tail], -1)
        position = torch.cat([position, torch.arange(nb * bs, t, device=scores.device).expand(*tail.shape)], -1)
    return position.gather(-1, candidates.topk(k, dim=-1, sorted=False).indices)


# ---------------------------------------------------------------------------------------------- numba (CPU)
_NUMBA: Any = None  # the compiled row routine (leanlm.fasa.numba_kernels.rows), False without numba


def _numba_rows() -> Any:
    """The compiled per-row selection (:mod:`leanlm.fasa.numba_kernels`; machine code cached on disk by numba)."""
    global _NUMBA
    if _NUMBA is None:
        try:
            from leanlm.fasa.numba_kernels import rows
        except ImportError:
            _NUMBA = False
        else:
            _NUMBA = rows
    return _NUMBA


def numba_ok(scores: torch.Tensor) -> bool:
    """True when :func:`numba_topk` can take ``scores`` (CPU fp32/fp64, no autograd, numba installed)."""
    return (scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64)
            and not scores.requires_grad and _numba_rows() is not False)


def numba_topk(scores: torch.Tensor, k: int) -> torch.Tensor | None:
    """Exact top-``k`` indices along the last dim with the numba routine (module doc), or ``None`` for NaN rows.

    Requires :func:`numba_ok`; ``1 <= k <= t``. Indices are unsorted (above the ``k``-th value in position
    order, then ties at it, lowest positions first).
    """
    import numpy as np

    rows = _numba_rows()
    if rows is False:
        raise RuntimeError("numba is not installed (pip install numba, or use backend='torch')")
    t = scores.shape[-1]
    k = int(k)
    if not 1 <= k <= t:
        raise ValueError(f"numba_topk needs 1 <= k <= t, got k={k}, t={t}")
    flat = scores.detach().reshape(-1, t).contiguous()
    out = np.empty((flat.shape[0], k), dtype=np.int64)
    if not rows(flat.numpy(), k, 2 * k, out):
        return None
    return torch.from_numpy(out).view(*scores.shape[:-1], k)
