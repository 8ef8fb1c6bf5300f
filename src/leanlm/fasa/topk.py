"""Exact top-k selection that is cheaper than ``torch.topk`` over long rows (the ``TopK-I`` of paper Eq. 6).

Block-maxima pre-filter, exact: split a row of ``t`` scores into blocks of ``bs`` and take each block's
maximum. Every block that holds one of the row's top-``k`` elements has a maximum at least as large as the
``k``-th largest score, and at most ``k`` blocks can (each such block's maximum is itself one of the top
``k``). So the top ``k`` elements lie inside the ``k`` blocks with the largest maxima, and a second
``topk`` over those ``k · bs`` candidates returns exactly the row's top ``k`` (ties broken arbitrarily,
as ``torch.topk`` does). Work: one ``amax`` pass over ``t`` plus ``topk`` over ``t / bs`` and ``k · bs``
elements instead of over ``t``; it pays off when ``t ≫ k`` (measured on CPU: ~2x at t = 8K, k = 256).
"""

from __future__ import annotations

import torch


def block_size_for(t: int, k: int) -> int:
    """The block size used by :func:`exact_topk` (0 = plain ``torch.topk``), from CPU measurements."""
    ratio = t // max(1, k)
    if ratio < 16:
        return 0
    return 4 if ratio < 64 else 8


def exact_topk(scores: torch.Tensor, k: int, block: int | None = None) -> torch.Tensor:
    """Indices of the ``k`` largest entries along the last dim of ``scores`` (unsorted), exactly.

    ``block``: block size of the pre-filter (``None`` = :func:`block_size_for`; ``0`` = ``torch.topk``).
    """
    t = scores.shape[-1]
    k = min(int(k), t)
    bs = block_size_for(t, k) if block is None else int(block)
    if bs <= 1 or t // bs <= k:
        return scores.topk(k, dim=-1, sorted=False).indices
    nb = t // bs
    head = scores[..., : nb * bs].unflatten(-1, (nb, bs))  # (..., nb, bs)
    chosen = head.amax(-1).topk(k, dim=-1, sorted=False).indices  # (..., k) blocks with the largest maxima
    candidates = head.gather(-2, chosen[..., None].expand(*chosen.shape, bs)).flatten(-2)  # (..., k*bs)
    position = (chosen[..., None] * bs + torch.arange(bs, device=scores.device)).flatten(-2)
    if nb * bs < t:  # the ragged tail joins the candidates as is
        tail = scores[..., nb * bs :]
        candidates = torch.cat([candidates, tail], -1)
        position = torch.cat([position, torch.arange(nb * bs, t, device=scores.device).expand(*tail.shape)], -1)
    return position.gather(-1, candidates.topk(k, dim=-1, sorted=False).indices)
