"""Oracle selector: the true top-k of the full attention logits (paper §5 "Oracle", Table 2).

The upper bound every approximate selector is measured against: it reads all ``d`` dims of every key,
so it saves nothing, but attending to its tokens is the best any top-k selection can do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanlm.fasa.selectors.base import TokenSelector, gqa_logits


@dataclass
class OracleSelector(TokenSelector):
    """Exact top-k of ``q K^T`` per query head (GQA keys expanded with ``repeat_kv``)."""

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        return gqa_logits(query, keys)[:, :, 0, :]
