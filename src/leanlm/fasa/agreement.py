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


def topk_membership(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask over the last axis marking ``TopK-I(scores, k)``."""
    idx = scores.topk(k, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)


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
    out: dict[int, torch.Tensor] = {}
    for k in ks:
        kk = min(int(k), full.shape[-1])
        full_top = topk_membership(full, kk)  # (H, P, T)
        part_idx = partial.topk(kk, dim=-1).indices  # (H, P, F, K)
        hits = full_top[:, :, None, :].expand_as(partial).gather(-1, part_idx)
        ca = hits.sum(-1).to(torch.float64) / kk
        ca[:, n_valid <= k, :] = float("nan")
        out[int(k)] = ca
    return out
