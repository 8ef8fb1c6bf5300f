"""FASA's Token Importance Predictor (TIP), paper Eq. 6: ``S_t = q_t[D] · K_{1:t}[D]^T``.

FASA, arXiv 2602.03152 (https://arxiv.org/abs/2602.03152). ``D`` holds the dims of the ``N_tip`` dominant
frequency chunks of each (layer, query head), found offline by :mod:`leanlm.fasa.calibration` (Eq. 5).
``S_t`` is unscaled and only ranks tokens (App. D.2: using it as attention weights fails).

Parameters:
- ``dims``: ``(layers, H_q, 2*N_tip)`` long tensor of head dims per (layer, head); build it with
  :meth:`FASASelector.from_calibration` or :meth:`FASASelector.from_fcs`.
- ``pooled``: ``False`` (default, faithful to the official code, which ``repeat_kv``s before TIP) ranks
  per query head; ``True`` sums the scores of the query heads of one KV group and selects one token set
  per KV head (a GQA ablation, not in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanlm.fasa.chunks import dims_of
from leanlm.fasa.selectors.base import TokenSelector, numba_gathers


@dataclass
class FASASelector(TokenSelector):
    dims: torch.Tensor
    pooled: bool = False

    @classmethod
    def from_fcs(cls, fcs: torch.Tensor, head_dim: int, pairing: str, pooled: bool = False) -> FASASelector:
        """From FC indices ``(layers, H_q, N_tip)``."""
        return cls(dims=dims_of(fcs, head_dim, pairing), pooled=pooled)

    @classmethod
    def from_calibration(cls, calibration, budget: int | None = None, pooled: bool = False) -> FASASelector:
        """Dominant FCs of a :class:`~leanlm.fasa.calibration.Calibration`, from the CA table whose K fits ``budget``."""
        fcs = calibration.dominant(calibration.k_for_budget(budget))
        return cls.from_fcs(fcs, calibration.head_dim, calibration.pairing, pooled=pooled)

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        n_q, n_kv = query.shape[1], keys.shape[1]
        dims = self.dims[layer_idx].to(query.device)  # (H_q, 2*N_tip)
        if dims.shape[0] != n_q:
            raise ValueError(f"FASA dims cover {dims.shape[0]} query heads, the layer has {n_q}")
        kv_of_head = torch.arange(n_q, device=query.device) // (n_q // n_kv)
        q_d = query[:, :, 0, :].gather(-1, dims[None].expand(query.shape[0], -1, -1))  # (B, H_q, |D|)
        kernels = numba_gathers(keys)
        if kernels is not None:  # the same copy, compiled (one pass over each KV head's rows)
            k_d = keys.new_empty(n_q, dims.shape[1], keys.shape[0], keys.shape[2])
            kernels.gather_dims_by_row(keys.numpy(), dims.contiguous().numpy(), k_d.numpy())
        else:
            k_d = keys[:, kv_of_head[:, None], :, dims]  # (H_q, |D|, B, T): only the D columns are read
        scores = torch.einsum("bhd,hdbt->bht", q_d, k_d)  # Eq. 6
        if self.pooled:
            b, _, t = scores.shape
            grouped = scores.view(b, n_kv, n_q // n_kv, t).sum(2, keepdim=True)
            scores = grouped.expand(b, n_kv, n_q // n_kv, t).reshape(b, n_q, t)
        return scores
