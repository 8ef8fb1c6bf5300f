"""Baselines that score keys on a static, offline-chosen subspace: Double Sparsity and Loki.

- **Double Sparsity** (Yang et al. 2024, https://arxiv.org/abs/2408.07092): per (layer, query head) the
  ``r`` "outlier" channels with the largest mean ``|q_c · k_c|`` over calibration text, chosen offline;
  online score ``q[C] · K[:, C]^T``. Structurally FASA's TIP with single channels ranked by magnitude
  instead of RoPE pairs ranked by top-K agreement. The official code also quantises the label cache to
  4 bits (``label_bits``); this reference keeps it in full precision (equal to FASA, which quantises nothing).
- **Loki** (Singhania et al. 2024, https://arxiv.org/abs/2406.02542): per (layer, KV head) a PCA basis of
  the post-RoPE keys of calibration text; online score ``(q P_r) · (K P_r)^T`` on the top ``r`` principal
  directions. Loki stores keys already projected; this reference projects the cached keys at each step,
  which gives the same scores.

Both are calibrated from :class:`KeyQueryStats` (accumulated by :mod:`leanlm.fasa.evaluation.capture`).
Default ``r = 16`` = FASA's ``2·N_tip`` dims on SmolLM2, so all three read the same number of key elements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from leanlm.fasa.selectors.base import TokenSelector, expand_kv, gqa_gather_dims


@dataclass
class KeyQueryStats:
    """Running statistics of post-RoPE queries and keys per layer (what both calibrations need).

    ``q_abs (L, H_q, d)`` and ``k_abs (L, H_kv, d)``: sums of ``|q_c|`` / ``|k_c|``; ``k_sum (L, H_kv, d)``
    and ``k_outer (L, H_kv, d, d)``: sum and sum of outer products of the keys (for the covariance);
    ``n_q`` / ``n_k``: rows summed per layer.
    """

    q_abs: torch.Tensor
    k_abs: torch.Tensor
    k_sum: torch.Tensor
    k_outer: torch.Tensor
    n_q: torch.Tensor = field(default=None)  # type: ignore[assignment]
    n_k: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        layers = self.q_abs.shape[0]
        if self.n_q is None:
            self.n_q = torch.zeros(layers, dtype=torch.long)
        if self.n_k is None:
            self.n_k = torch.zeros(layers, dtype=torch.long)

    @classmethod
    def empty(cls, layers: int, n_q: int, n_kv: int, d: int) -> KeyQueryStats:
        z = torch.zeros
        return cls(z(layers, n_q, d, dtype=torch.float64), z(layers, n_kv, d, dtype=torch.float64),
                   z(layers, n_kv, d, dtype=torch.float64), z(layers, n_kv, d, d, dtype=torch.float64))

    def add(self, layer: int, query: torch.Tensor, keys: torch.Tensor) -> None:
        """Fold in ``query (H_q, P, d)`` and ``keys (H_kv, T, d)`` rows of one layer."""
        q, k = query.to(torch.float64), keys.to(torch.float64)
        self.q_abs[layer] += q.abs().sum(1)
        self.k_abs[layer] += k.abs().sum(1)
        self.k_sum[layer] += k.sum(1)
        self.k_outer[layer] += k.transpose(1, 2) @ k
        self.n_q[layer] += q.shape[1]
        self.n_k[layer] += k.shape[1]

    def channel_importance(self) -> torch.Tensor:
        """Double Sparsity's ``mean_{i,j} |q_ic · k_jc|`` over all calibration (query, key) pairs ``(L, H_q, d)``.

        Averaging over all pairs factorises exactly: ``mean_i |q_ic| · mean_j |k_jc|``.
        """
        if int(self.n_q.min()) == 0 or int(self.n_k.min()) == 0:
            raise ValueError("no calibration rows were recorded for some layer")
        mean_q = self.q_abs / self.n_q[:, None, None]
        mean_k = self.k_abs / self.n_k[:, None, None]
        n_rep = mean_q.shape[1] // mean_k.shape[1]
        return mean_q * mean_k.repeat_interleave(n_rep, dim=1)

    def key_covariance(self) -> torch.Tensor:
        """Covariance of the keys per (layer, KV head), ``(L, H_kv, d, d)``."""
        n = self.n_k[:, None, None, None].to(torch.float64)
        mean = self.k_sum / self.n_k[:, None, None]
        return self.k_outer / n - mean[..., :, None] * mean[..., None, :]


@dataclass
class DoubleSparsitySelector(TokenSelector):
    """Static per-head channel subset: ``channels (L, H_q, r)`` long tensor of head dims."""

    channels: torch.Tensor

    @classmethod
    def from_stats(cls, stats: KeyQueryStats, r: int = 16) -> DoubleSparsitySelector:
        return cls(channels=stats.channel_importance().topk(r, dim=-1).indices)

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        ch = self.channels[layer_idx].to(query.device)  # (H_q, r)
        b = query.shape[0]
        q_c = query[:, :, 0, :].gather(-1, ch[None].expand(b, -1, -1))
        k_c = gqa_gather_dims(keys, ch[None].expand(b, -1, -1))  # (B, H_q, T, r)
        return torch.einsum("bhr,bhtr->bht", q_c, k_c)


@dataclass
class LokiSelector(TokenSelector):
    """Keys and query projected on the top ``r`` principal directions of the keys: ``basis (L, H_kv, d, r)``."""

    basis: torch.Tensor

    @classmethod
    def from_stats(cls, stats: KeyQueryStats, r: int = 16) -> LokiSelector:
        _, vectors = torch.linalg.eigh(stats.key_covariance())  # ascending eigenvalues
        return cls(basis=vectors[..., -r:].flip(-1).to(torch.float32))

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        basis = self.basis[layer_idx].to(device=query.device, dtype=query.dtype)  # (H_kv, d, r)
        n_rep = query.shape[1] // keys.shape[1]
        k_p = keys @ basis[None]  # (B, H_kv, T, r)
        q_p = torch.einsum("bhd,hdr->bhr", query[:, :, 0, :], basis.repeat_interleave(n_rep, dim=0))
        return torch.einsum("bhr,bhtr->bht", q_p, expand_kv(k_p, n_rep))
