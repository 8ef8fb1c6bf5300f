"""Quest-style page selector (Tang et al. 2024, https://arxiv.org/abs/2406.10774), a FASA paper baseline.

Each page of ``page_size`` consecutive keys keeps its per-channel min and max; a page's upper bound on
the logit is ``Σ_i max(q_i min_i, q_i max_i)``. Every token inherits its page's bound and the top
``budget`` tokens are taken, which is the top ``budget / page_size`` pages (a partial page at the edge).
Selection is per query head (KV pages shared within a GQA group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanlm.fasa.selectors.base import TokenSelector, expand_kv


@dataclass
class QuestSelector(TokenSelector):
    page_size: int = 16

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        b, n_kv, t, d = keys.shape
        pad = (-t) % self.page_size
        padded = torch.nn.functional.pad(keys, (0, 0, 0, pad))
        pages = padded.view(b, n_kv, -1, self.page_size, d)
        last = pages[:, :, -1]
        if pad:  # the padded rows must not widen the last page's bounds: copy a real row over them
            last[:, :, self.page_size - pad :] = last[:, :, :1].clone()
        kmin, kmax = pages.amin(3), pages.amax(3)  # (B, H_kv, P, d)
        n_rep = query.shape[1] // n_kv
        kmin, kmax = expand_kv(kmin, n_rep), expand_kv(kmax, n_rep)
        q = query  # (B, H_q, 1, d)
        bound = torch.maximum(q * kmin, q * kmax).sum(-1)  # (B, H_q, P)
        return bound.repeat_interleave(self.page_size, dim=-1)[..., :t]
