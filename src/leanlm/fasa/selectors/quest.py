"""Quest-style page selector (Tang et al. 2024, https://arxiv.org/abs/2406.10774), a FASA paper baseline.

Each page of ``page_size`` consecutive keys keeps its per-channel min and max; a page's upper bound on
the logit is ``Σ_i max(q_i min_i, q_i max_i)`` (≥ ``q·k`` for every key of the page). Every token inherits
its page's bound and the top ``budget`` tokens are taken, which is the top ``budget / page_size`` pages
(a partial page at the edge). Selection is per query head (KV pages shared within a GQA group).

Page metadata (:class:`QuestPages`) is kept **incrementally**, as Quest does: built once from the cache
at the first decode step of a layer (the prefill's pages), then each step only folds the new key rows into
the last page (or opens a new page); pages are never recomputed from the whole cache. ``incremental=False``
recomputes every step (the reference the tests compare the incremental metadata with).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from leanlm.fasa.selectors.base import TokenSelector, expand_kv


def page_bounds(keys: torch.Tensor, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-page channel min and max of ``keys (B, H, T, d)`` -> two ``(B, H, ceil(T / page_size), d)``."""
    b, h, t, d = keys.shape
    pad = (-t) % page_size
    n_pages = (t + pad) // page_size
    kmin = keys.new_empty(b, h, n_pages, d)
    kmax = keys.new_empty(b, h, n_pages, d)
    full = t // page_size
    if full:
        pages = keys[:, :, : full * page_size].view(b, h, full, page_size, d)
        kmin[:, :, :full], kmax[:, :, :full] = pages.amin(3), pages.amax(3)
    if pad:  # the last, partial page: only its real rows count
        tail = keys[:, :, full * page_size :]
        kmin[:, :, full], kmax[:, :, full] = tail.amin(2), tail.amax(2)
    return kmin, kmax


@dataclass
class QuestPages:
    """Page min/max of one layer's keys, extended row by row as the cache grows (never recomputed)."""

    page_size: int
    kmin: torch.Tensor | None = None  # (B, H_kv, P, d)
    kmax: torch.Tensor | None = None
    length: int = 0  # key rows folded in so far

    def update(self, keys: torch.Tensor) -> None:
        """Fold rows ``[length, T)`` of ``keys (B, H_kv, T, d)`` in (the first call builds every page)."""
        t = keys.shape[2]
        if self.kmin is None or t < self.length:
            if self.kmin is not None:
                raise ValueError(f"the cache shrank from {self.length} to {t} keys; use a new selector per sequence")
            self.kmin, self.kmax = page_bounds(keys, self.page_size)
            self.length = t
            return
        for row in range(self.length, t):
            page, offset = divmod(row, self.page_size)
            new = keys[:, :, row]
            if offset == 0:  # a new page starts with this row
                self.kmin = torch.cat([self.kmin, new[:, :, None]], dim=2)
                self.kmax = torch.cat([self.kmax, new[:, :, None]], dim=2)
            else:
                self.kmin[:, :, page] = torch.minimum(self.kmin[:, :, page], new)
                self.kmax[:, :, page] = torch.maximum(self.kmax[:, :, page], new)
        self.length = t


@dataclass
class QuestSelector(TokenSelector):
    page_size: int = 16
    incremental: bool = True
    pages: dict[int, QuestPages] = field(default_factory=dict, repr=False)

    def bounds(self, keys: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(kmin, kmax)`` of every page, ``(B, H_kv, P, d)``."""
        if not self.incremental:
            return page_bounds(keys, self.page_size)
        state = self.pages.setdefault(layer_idx, QuestPages(self.page_size))
        state.update(keys)
        return state.kmin, state.kmax

    def page_scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """Quest's upper bound ``Σ_i max(q_i min_i, q_i max_i)`` per page, ``(B, H_q, P)``."""
        kmin, kmax = self.bounds(keys, layer_idx)
        n_rep = query.shape[1] // keys.shape[1]
        kmin, kmax = expand_kv(kmin, n_rep), expand_kv(kmax, n_rep)
        return torch.maximum(query * kmin, query * kmax).sum(-1)

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        bound = self.page_scores(query, keys, layer_idx)
        return bound.repeat_interleave(self.page_size, dim=-1)[..., : keys.shape[2]]
