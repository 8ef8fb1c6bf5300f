"""The token-selector interface shared by FASA and the per-step retrieval baselines.

A selector ranks the cached tokens for one decode query and returns the indices of the top ``budget``
tokens per query head; :func:`leanlm.fasa.attention.focused_attention` then attends exactly over them.
Shapes: ``query (B, H_q, 1, d)``, ``keys (B, H_kv, T, d)`` (post-RoPE, the whole cache), ``valid`` an
optional ``(B, 1 or H_q, T)`` boolean mask of the keys the query may see. Indices are ``(B, H_q, k)`` with
``k = min(budget, T)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


def expand_kv(keys: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, H_kv, T, d)`` -> ``(B, H_kv * n_rep, T, d)`` (query head ``h`` reads KV head ``h // n_rep``)."""
    if n_rep == 1:
        return keys
    b, h, t, d = keys.shape
    return keys[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def gqa_logits(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``query (B, H_q, q, d) @ repeat_kv(keys)^T`` -> ``(B, H_q, q, T)``, GQA aware.

    On CPU with GQA: one product per query head against its KV head, equal bit for bit to the expanded
    product (the same kernel on the same values) without materialising the ``H_q / H_kv`` expanded copy
    of the cache, which costs more than the product itself at long context. Elsewhere: the expanded product.
    """
    n_rep = query.shape[1] // keys.shape[1]
    if n_rep == 1 or query.device.type != "cpu":
        return query @ expand_kv(keys, n_rep).transpose(-1, -2)
    return torch.cat([query[:, h : h + 1] @ keys[:, h // n_rep : h // n_rep + 1].transpose(-1, -2)
                      for h in range(query.shape[1])], dim=1)


def gqa_weighted(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``weights (B, H_q, q, T) @ repeat_kv(values)`` -> ``(B, H_q, q, d)`` (see :func:`gqa_logits`)."""
    n_rep = weights.shape[1] // values.shape[1]
    if n_rep == 1 or weights.device.type != "cpu":
        return weights @ expand_kv(values, n_rep)
    return torch.cat([weights[:, h : h + 1] @ values[:, h // n_rep : h // n_rep + 1]
                      for h in range(weights.shape[1])], dim=1)


def gqa_gather_dims(keys: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """``repeat_kv(keys).gather(-1, dims)``: the ``dims (B, H_q, r)`` columns of each query head's keys,
    ``(B, H_q, T, r)``, read from the un-expanded ``keys (B, H_kv, T, d)`` (gathering is exact)."""
    b, n_q, r = dims.shape
    n_rep = n_q // keys.shape[1]
    t = keys.shape[2]
    return torch.stack([keys[:, h // n_rep].gather(-1, dims[:, h, None, :].expand(b, t, r)) for h in range(n_q)],
                       dim=1)


def top_budget(scores: torch.Tensor, budget: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``min(budget, T)`` highest ``scores`` ``(B, H, T)``; invalid keys rank last."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    k = min(int(budget), scores.shape[-1])
    return scores.topk(k, dim=-1, sorted=False).indices


@dataclass
class TokenSelector(ABC):
    """Base class: subclasses implement :meth:`scores`; :meth:`select` takes the top ``budget``."""

    @abstractmethod
    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """Ranking scores ``(B, H_q, T)`` for one decode query (higher = keep)."""

    def select(
        self, query: torch.Tensor, keys: torch.Tensor, budget: int, *, layer_idx: int = 0,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if query.shape[-2] != 1:
            raise ValueError(f"selectors rank tokens for one decode query; got q_len={query.shape[-2]}")
        return top_budget(self.scores(query, keys, layer_idx), budget, valid)
