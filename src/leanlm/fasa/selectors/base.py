"""The token-selector interface shared by FASA and the per-step retrieval baselines.

A selector ranks the cached tokens for one decode query and returns the indices of the top ``budget``
tokens per query head; :func:`leanlm.fasa.attention.focused_attention` then attends exactly over them.
Shapes: ``query (B, H_q, 1, d)``, ``keys (B, H_kv, T, d)`` (post-RoPE, the whole cache), ``valid`` an
optional ``(B, 1 or H_q, T)`` boolean mask of the keys the query may see. Indices are ``(B, H_q, k)`` with
``k = min(budget, T)``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

#: the products memo of :func:`shared_logits` (None outside one)
_MEMO: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, int, int, torch.Tensor]] | None = None


@contextlib.contextmanager
def shared_logits() -> Iterator[None]:
    """Inside the block, :func:`gqa_logits` of the same two tensor objects (unmodified) is computed once.

    For one attention call where a selector (oracle, H2O, SnapKV) and the evaluation's probes both need the
    dense logits of the same query and keys: the second call returns the first call's tensor, so results
    are identical by construction. The memo holds the tensors it saw (their ids cannot be reused while it
    lives) and their version counters (an in-place change of either input is a miss; inference-mode tensors
    have none, and nothing writes to the query or the cache during one attention call); callers must not
    modify the returned logits in place (none does)."""
    global _MEMO
    outer, _MEMO = _MEMO, {}
    try:
        yield
    finally:
        _MEMO = outer


def expand_kv(keys: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, H_kv, T, d)`` -> ``(B, H_kv * n_rep, T, d)`` (query head ``h`` reads KV head ``h // n_rep``)."""
    if n_rep == 1:
        return keys
    b, h, t, d = keys.shape
    return keys[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors track no version
        return -1


def gqa_logits(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``query (B, H_q, q, d) @ repeat_kv(keys)^T`` -> ``(B, H_q, q, T)``, GQA aware.

    On CPU with GQA: one product per query head against its KV head, equal bit for bit to the expanded
    product (the same kernel on the same values) without materialising the ``H_q / H_kv`` expanded copy
    of the cache, which costs more than the product itself at long context. Elsewhere: the expanded product.
    """
    if _MEMO is not None:
        hit = _MEMO.get((id(query), id(keys)))
        if hit is not None and hit[2] == _version(query) and hit[3] == _version(keys):
            return hit[4]
    n_rep = query.shape[1] // keys.shape[1]
    if n_rep == 1 or query.device.type != "cpu":
        out = query @ expand_kv(keys, n_rep).transpose(-1, -2)
    else:
        out = torch.cat([query[:, h : h + 1] @ keys[:, h // n_rep : h // n_rep + 1].transpose(-1, -2)
                         for h in range(query.shape[1])], dim=1)
    if _MEMO is not None:
        _MEMO[(id(query), id(keys))] = (query, keys, _version(query), _version(keys), out)
    return out


def gqa_weighted(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``weights (B, H_q, q, T) @ repeat_kv(values)`` -> ``(B, H_q, q, d)`` (see :func:`gqa_logits`)."""
    n_rep = weights.shape[1] // values.shape[1]
    if n_rep == 1 or weights.device.type != "cpu":
        return weights @ expand_kv(values, n_rep)
    return torch.cat([weights[:, h : h + 1] @ values[:, h // n_rep : h // n_rep + 1]
                      for h in range(weights.shape[1])], dim=1)


def gqa_gather_dims(keys: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """``repeat_kv(keys).gather(-1, dims)``: the ``dims (B, H_q, r)`` columns of each query head's keys,
    ``(B, H_q, T, r)``, read from the un-expanded ``keys (B, H_kv, T, d)`` (gathering is exact). On CPU with
    numba a compiled copy (:func:`leanlm.fasa.numba_kernels.gather_head_dims`, the same values ~2.5x faster
    at 8K), else torch's gather."""
    b, n_q, r = dims.shape
    n_rep = n_q // keys.shape[1]
    t = keys.shape[2]
    kernels = numba_gathers(keys)
    if kernels is not None:
        out = keys.new_empty(b, n_q, t, r)
        kernels.gather_head_dims(keys.numpy(), dims.contiguous().numpy(), out.numpy())
        return out
    return torch.stack([keys[:, h // n_rep].gather(-1, dims[:, h, None, :].expand(b, t, r)) for h in range(n_q)],
                       dim=1)


_KERNELS: Any = None  # leanlm.fasa.numba_kernels once imported, False without numba


def numba_gathers(keys: torch.Tensor) -> Any:
    """The numba kernel module when it can gather from ``keys`` (CPU, float32/64, no autograd), else None."""
    global _KERNELS
    if keys.device.type != "cpu" or keys.dtype not in (torch.float32, torch.float64) or keys.requires_grad:
        return None
    if _KERNELS is None:
        try:
            from leanlm.fasa import numba_kernels
        except ImportError:
            _KERNELS = False
        else:
            _KERNELS = numba_kernels
    return _KERNELS or None


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
