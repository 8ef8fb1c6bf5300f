"""Contextual Agreement (CA) between full-head and single-FC attention logits (paper Eq. 2-4).

For a query ``q_t`` and keys ``K_{1:t}`` (post-RoPE, unscaled, no softmax, as in the official code):

    α      = q_t K^T                        (full logits, Eq. 2)
    α^(i)  = q_t^[i] (K^[i])^T              (logits of FC i alone, Eq. 3)
    CA_K^i = |TopK-I(α, K) ∩ TopK-I(α^(i), K)| / K      (Eq. 4)

These functions are pure tensor code: :mod:`leanlm.fasa.calibration` feeds them the q/k it captures
inside the model and averages the result (Eq. 5).
"""

from __future__ import annotations

import torch

from leanlm.fasa.chunks import split_fcs


def fc_logits(query: torch.Tensor, keys: torch.Tensor, pairing: str) -> torch.Tensor:
    """Per-FC logits α^(i) (Eq. 3): query ``(H, P, d)``, keys ``(H, T, d)`` -> ``(H, P, d/2, T)``."""
    qf = split_fcs(query, pairing)  # (H, P, F, 2)
    kf = split_fcs(keys, pairing)  # (H, T, F, 2)
    return torch.einsum("hpfc,htfc->hpft", qf, kf)


def contextual_agreement(
    query: torch.Tensor,
    keys: torch.Tensor,
    ks: list[int] | tuple[int, ...],
    pairing: str,
    valid: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """CA_K for every head, query and FC (Eq. 4).

    ``query`` is ``(H, P, d)``, ``keys`` ``(H, T, d)`` (already expanded per query head for GQA),
    ``valid`` an optional ``(P, T)`` boolean mask of the keys each query may see (causality). Returns
    ``{K: (H, P, d/2) tensor}``; entries for queries that see no more than ``K`` keys are NaN, because
    there CA is trivially 1 and carries no information.
    """
    full = query @ keys.transpose(-1, -2)  # (H, P, T), Eq. 2
    partial = fc_logits(query, keys, pairing)  # (H, P, F, T), Eq. 3
    if valid is not None:
        neg = torch.finfo(full.dtype).min
        full = full.masked_fill(~valid, neg)
        partial = partial.masked_fill(~valid[:, None, :], neg)
        n_valid = valid.sum(-1)  # (P,)
    else:
        n_valid = torch.full((query.shape[1],), keys.shape[1], device=query.device)
    # one descending sort per tensor serves every K: TopK-I(x, K) is the first K entries of the order
    full_rank = torch.empty_like(full, dtype=torch.long)
    full_order = full.argsort(dim=-1, descending=True)
    positions = torch.arange(full.shape[-1], device=full.device).expand_as(full_order)
    full_rank.scatter_(-1, full_order, positions)  # rank of every key in the full-head ordering
    part_order = partial.argsort(dim=-1, descending=True)  # (H, P, F, T)
    out: dict[int, torch.Tensor] = {}
    for k in ks:
        kk = min(int(k), full.shape[-1])
        top_part = part_order[..., :kk]
        ranks = full_rank[:, :, None, :].expand(*partial.shape[:3], full.shape[-1]).gather(-1, top_part)
        ca = (ranks < kk).sum(-1).to(torch.float64) / kk
        ca[:, n_valid <= k, :] = float("nan")
        out[int(k)] = ca
    return out
