"""SparQ Attention's token selection (Ribar et al. 2024, https://arxiv.org/abs/2312.04985, Alg. 1 step 1).

Per decode step and query head: take the ``r`` components of the query with the largest ``|q_i|`` and
score every key on those components only, ``ŝ = q[r] · K[:, r]^T``; the top ``budget`` tokens are
attended exactly. Unlike FASA (static dominant FCs found offline) the dims are chosen online from the
current query, one dim at a time (no RoPE pairs). SparQ's softmax temperature does not change the ranking;
its mean-value reallocation (mixing ``mean(V)`` into the output) is a change to FAC that this selector
does not make: every method here is compared with the same exact attention over the chosen tokens.
Default ``r = 16`` (= FASA's ``2·N_tip`` dims on SmolLM2, equal key reads). SparQ stores K twice (row- and
column-major) to read ``r`` columns cheaply; this reference reads them from one copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanlm.fasa.selectors.base import TokenSelector, gqa_gather_dims


@dataclass
class SparQSelector(TokenSelector):
    r: int = 16

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        d = query.shape[-1]
        if not 1 <= self.r <= d:
            raise ValueError(f"SparQ r must be in [1, {d}], got {self.r}")
        q = query[:, :, 0, :]  # (B, H_q, d)
        dims = q.abs().topk(self.r, dim=-1).indices  # (B, H_q, r): the query's largest components
        q_r = q.gather(-1, dims)
        k_r = gqa_gather_dims(keys, dims)  # (B, H_q, T, r), read from each query head's KV head
        return torch.einsum("bhr,bhtr->bht", q_r, k_r)
