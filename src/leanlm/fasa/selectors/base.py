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
