"""Spatio-Temporal Video Pruning, STVP (OmniSIFT §3.2, Eqs. 2–4): training-free and parameter-free.

Per chunk, with ρv the fraction of video tokens removed and ``k = int(n_p · ρv)`` dropped per frame:

* spatial (first frame F1, Eqs. 2–3): score token i by ``cos(x_i, mean(F1))`` and drop the ``k`` most
  similar, i.e. keep the ``n_p − k`` with the highest saliency ``1 − cos``;
* temporal (second frame F2, Eq. 4): score token i by ``cos(F2_i, F1_i)`` against the same-position token
  of the *unpruned* F1 and drop the ``k`` most similar. It only applies when ``|F1| = |F2|``; otherwise F2
  is kept whole, as in the reference implementation (``compression_units.py``).

All functions work on a leading batch of chunks: ``[..., n_p, D]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def drop_count(n: int, rho: float) -> int:
    """Tokens removed from a group of ``n`` at removal ratio ``rho``: ``int(n · rho)`` (paper §3.2, Table 6)."""
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"a removal ratio must be in [0, 1), got {rho}")
    return int(n * rho)


def keep_count(n: int, rho: float) -> int:
    """Tokens kept: ``n − int(n · rho)``."""
    return n - drop_count(n, rho)


def spatial_similarity(frame: torch.Tensor) -> torch.Tensor:
    """``cos(x_i, mean_j x_j)`` for each token of ``frame`` [..., n, D] (Eq. 2); higher = more redundant."""
    mean = frame.mean(dim=-2, keepdim=True)
    return F.cosine_similarity(frame.float(), mean.float().expand_as(frame), dim=-1)


def temporal_similarity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``cos(F2_i, F1_i)`` position by position (Eq. 4); shapes [..., n, D]; higher = more redundant."""
    if first.shape != second.shape:
        raise ValueError(f"temporal pruning needs equal frame shapes, got {tuple(first.shape)} and {tuple(second.shape)}")
    return F.cosine_similarity(second.float(), first.float(), dim=-1)


def keep_least_similar(similarity: torch.Tensor, n_drop: int) -> torch.Tensor:
    """Boolean keep-mask over the last dim dropping the ``n_drop`` highest similarities (ties: lower index dropped first)."""
    n = similarity.shape[-1]
    if n_drop > n:
        raise ValueError(f"cannot drop {n_drop} of {n} tokens")
    keep = torch.ones_like(similarity, dtype=torch.bool)
    if n_drop <= 0:
        return keep
    order = torch.argsort(similarity, dim=-1, descending=True, stable=True)
    keep.scatter_(-1, order[..., :n_drop], False)
    return keep


def stvp_masks(
    first: torch.Tensor,
    second: torch.Tensor | None,
    rho_v: float,
    *,
    spatial: bool = True,
    temporal: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep-masks for F1 [..., n1, D] and F2 [..., n2, D] (or ``None`` for a one-frame chunk).

    ``k = int(n1 · ρv)`` tokens are dropped from each frame. ``spatial=False`` / ``temporal=False`` are the
    paper's ablations (§4.4, "w/o spatial" / "w/o temporal"): the disabled criterion is replaced by a uniform
    random choice of the same size, so the budget is unchanged.
    """
    n1 = first.shape[-2]
    k = drop_count(n1, rho_v)
    if spatial:
        keep1 = keep_least_similar(spatial_similarity(first), k)
    else:
        keep1 = random_keep(first.shape[:-1], k, first.device, generator)
    if second is None:
        return keep1, None
    if second.shape[-2] != n1:
        return keep1, torch.ones(second.shape[:-1], dtype=torch.bool, device=second.device)
    if temporal:
        keep2 = keep_least_similar(temporal_similarity(first, second), k)
    else:
        keep2 = random_keep(second.shape[:-1], k, second.device, generator)
    return keep1, keep2


def random_keep(
    shape: torch.Size | tuple[int, ...], n_drop: int, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A keep-mask over the last dim of ``shape`` dropping ``n_drop`` uniformly random entries per row."""
    noise = torch.rand(shape, generator=generator, device="cpu").to(device)
    return keep_least_similar(noise, n_drop)
