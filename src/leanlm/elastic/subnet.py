"""``SubNet``: which part of the elastic super-network runs (ERNIE 5.0 §3.3: depth, width, sparsity).

A sub-network keeps a subset of layers (elastic depth; skipped layers act as the identity on the residual
stream), a subset of routed experts per MoE layer (elastic width; removed experts get -inf router logits before
softmax and top-k, so they never receive tokens), and a top-k (elastic sparsity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SubNet:
    """A sub-network of an elastic model.

    Attributes:
        layers: indices of the layers that run, ascending; ``None`` = all layers.
        experts: per *layer index* the routed experts kept (ascending); ``None`` = all experts everywhere.
            A mapping layer -> experts; layers missing from the mapping keep all experts.
        top_k: experts per token; ``None`` = the config's default k.
    """

    layers: tuple[int, ...] | None = None
    experts: tuple[tuple[int, tuple[int, ...]], ...] | None = None
    top_k: int | None = None

    @classmethod
    def make(
        cls,
        layers: Sequence[int] | None = None,
        experts: dict[int, Sequence[int]] | None = None,
        top_k: int | None = None,
    ) -> SubNet:
        """Build a sub-network from plain lists/dicts (sorted and de-duplicated)."""
        lay = tuple(sorted(set(int(i) for i in layers))) if layers is not None else None
        exp = (
            tuple(sorted((int(layer), tuple(sorted(set(int(e) for e in es)))) for layer, es in experts.items()))
            if experts is not None
            else None
        )
        return cls(layers=lay, experts=exp, top_k=top_k)

    def experts_for(self, layer: int) -> tuple[int, ...] | None:
        if self.experts is None:
            return None
        for index, kept in self.experts:
            if index == layer:
                return kept
        return None

    def is_full(self, num_layers: int, num_experts: int, default_k: int) -> bool:
        full_layers = self.layers is None or len(self.layers) == num_layers
        full_experts = self.experts is None or all(len(kept) == num_experts for _, kept in self.experts)
        full_k = self.top_k is None or self.top_k == default_k
        return full_layers and full_experts and full_k

    def validate(self, num_layers: int, num_experts: int, moe_layers: Sequence[int], default_k: int | None = None) -> None:
        """Raise ``ValueError`` naming the offending field if the sub-network does not fit the model."""
        k = self.top_k if self.top_k is not None else default_k
        if self.layers is not None:
            if not self.layers:
                raise ValueError("SubNet.layers is empty: at least one layer must run")
            bad = [i for i in self.layers if not 0 <= i < num_layers]
            if bad:
                raise ValueError(f"SubNet.layers has indices {bad} outside [0, {num_layers})")
        if self.experts is not None:
            for layer, kept in self.experts:
                if layer not in moe_layers:
                    raise ValueError(f"SubNet.experts names layer {layer}, which is not a MoE layer {list(moe_layers)}")
                bad = [e for e in kept if not 0 <= e < num_experts]
                if bad:
                    raise ValueError(f"SubNet.experts[{layer}] has experts {bad} outside [0, {num_experts})")
                if k is not None and len(kept) < k:
                    raise ValueError(f"SubNet.experts[{layer}] keeps {len(kept)} experts < top_k={k}")
        if self.top_k is not None and not 1 <= self.top_k <= num_experts:
            raise ValueError(f"SubNet.top_k must be in [1, {num_experts}], got {self.top_k}")

    def describe(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers) if self.layers is not None else "all",
            "experts": {layer: len(kept) for layer, kept in self.experts} if self.experts is not None else "all",
            "top_k": self.top_k if self.top_k is not None else "default",
        }
