"""StreamingLLM-style selector (Xiao et al. 2024, https://arxiv.org/abs/2309.17453): sinks + recent window.

Keeps the first ``n_sink`` tokens and the most recent ``budget - n_sink`` tokens; the "Stream" baseline of
the FASA paper (8 sinks). Query-independent, so it needs no key reads at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanlm.fasa.selectors.base import TokenSelector


@dataclass
class StreamingSelector(TokenSelector):
    n_sink: int = 8

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        b, h, t = query.shape[0], query.shape[1], keys.shape[2]
        # float32, not the query dtype: in fp16/bf16 positions above 2048/256 round together and tie
        position = torch.arange(t, device=keys.device, dtype=torch.float32)
        score = torch.where(position < self.n_sink, position.new_tensor(float(t)), position)  # sinks rank first
        return score.expand(b, h, t)
