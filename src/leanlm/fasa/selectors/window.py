"""Forced sink and recent tokens around any selector: an option, not FASA as published.

FASA's paper and official code select by pure top-k (no token is guaranteed a slot; research brief, section 1).
:class:`ForcedWindow` wraps any :class:`~leanlm.fasa.selectors.base.TokenSelector` so that the first
``n_sink`` and the last ``n_recent`` cached tokens (the current token's key included) always take slots of the
budget, and the inner selector's ranking fills the rest. :func:`force_window` is the one rule, shared with
the ``n_sink`` / ``n_recent`` of :class:`~leanlm.fasa.integration.FasaAttention` and of
:func:`~leanlm.fasa.decode.fasa_c_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanlm.fasa.selectors.base import TokenSelector


def force_window(scores: torch.Tensor, n_sink: int, n_recent: int, inplace: bool = False) -> torch.Tensor:
    """``scores (..., T)`` with the first ``n_sink`` and last ``n_recent`` positions raised to ``+inf``: a copy,
    or ``scores`` itself written in place with ``inplace`` (and returned unchanged when both are 0)."""
    if n_sink < 0 or n_recent < 0:
        raise ValueError(f"n_sink and n_recent must be >= 0, got {n_sink} and {n_recent}")
    if not (n_sink or n_recent):
        return scores
    t = scores.shape[-1]
    forced = scores if inplace else scores.clone()
    forced[..., :n_sink] = float("inf")
    if n_recent:
        forced[..., max(0, t - n_recent) :] = float("inf")
    return forced


@dataclass
class ForcedWindow(TokenSelector):
    """``inner``'s selection with ``n_sink`` first and ``n_recent`` last tokens always kept, all within the
    same ``budget`` (a budget of 64 with 4 sinks and 16 recent leaves 44 slots to ``inner``'s ranking)."""

    inner: TokenSelector
    n_sink: int = 4
    n_recent: int = 16

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        return force_window(self.inner.scores(query, keys, layer_idx), self.n_sink, self.n_recent)

    def select(
        self, query: torch.Tensor, keys: torch.Tensor, budget: int, *, layer_idx: int = 0,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.n_sink + self.n_recent > budget:
            raise ValueError(f"the forced window ({self.n_sink} sinks + {self.n_recent} recent) exceeds the "
                             f"budget of {budget} tokens")
        return super().select(query, keys, budget, layer_idx=layer_idx, valid=valid)
