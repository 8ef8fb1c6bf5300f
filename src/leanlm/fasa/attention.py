"""Focused Attention Computation (FAC), paper Eq. 7, and the mask helpers around it.

    K_T = Gather(K_{1:t}, T_t),  V_T = Gather(V_{1:t}, T_t),  O_t = softmax(q_t K_T^T / sqrt(d)) V_T

Keys are gathered post-RoPE, so every selected token keeps its original absolute position (no
re-rotation). With all tokens selected this is exactly dense attention (up to summation order).
"""

from __future__ import annotations

import torch


def key_validity(attention_mask: torch.Tensor | None, batch: int, kv_len: int) -> torch.Tensor | None:
    """The ``(B, 1 or H, T)`` boolean keys-visible mask of a decode step from a transformers 4-D mask.

    transformers passes either ``None`` (every key visible), a boolean mask (True = attend; sdpa) or an
    additive float mask (0 = attend, large negative = masked; eager), shaped ``(B, 1 or H, q_len, T')``.
    """
    if attention_mask is None:
        return None
    mask = attention_mask[..., -1, :kv_len]  # the last (only) query row
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    if mask.shape[-1] != kv_len:
        raise ValueError(f"attention mask covers {mask.shape[-1]} keys, the cache holds {kv_len}")
    return mask.expand(batch, mask.shape[1], kv_len)


def gather_tokens(states: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Gather ``(B, H_kv, T, d)`` at per-query-head ``indices (B, H_q, k)`` -> ``(B, H_q, k, d)`` (GQA aware)."""
    b, n_kv = states.shape[:2]
    n_q = indices.shape[1]
    batch = torch.arange(b, device=states.device)[:, None, None]
    kv_head = (torch.arange(n_q, device=states.device) // (n_q // n_kv))[None, :, None]
    return states[batch, kv_head, indices]


def focused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    indices: torch.Tensor,
    scaling: float,
    valid: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """FAC (Eq. 7): exact softmax attention of ``query (B, H_q, 1, d)`` over the ``indices`` tokens only.

    Returns ``(B, H_q, 1, d)``. Selected tokens that ``valid`` marks invisible (only possible when the
    budget exceeds the visible keys) get zero weight. ``softcap`` (Gemma 2) caps the scaled logits as the
    model's own attention does: ``softcap * tanh(logits / softcap)``.
    """
    k_sel = gather_tokens(key, indices)  # (B, H_q, k, d)
    v_sel = gather_tokens(value, indices)
    logits = (query @ k_sel.transpose(-1, -2)).float() * scaling  # (B, H_q, 1, k)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if valid is not None:
        keep = valid.expand(indices.shape[0], indices.shape[1], valid.shape[-1]).gather(-1, indices)
        logits = logits.masked_fill(~keep[:, :, None, :], float("-inf"))
    weights = torch.softmax(logits, dim=-1).to(value.dtype)
    return weights @ v_sel


def dense_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference dense decode attention ``(B, H_q, 1, d)`` with the same conventions as :func:`focused_attention`."""
    n_rep = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(n_rep, dim=1)
    v = value.repeat_interleave(n_rep, dim=1)
    logits = (query @ k.transpose(-1, -2)).float() * scaling
    if valid is not None:
        logits = logits.masked_fill(~valid[:, :, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).to(value.dtype) @ v
