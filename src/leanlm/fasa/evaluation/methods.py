"""Every method of the comparison as a factory ``(offline state, budget) -> fresh selector``.

All per-step methods share one dense prefill per prompt and keep layer 0 dense (official-code choice,
applied to every method, full KV aside). Methods with state (Quest pages, H2O, SnapKV) get a fresh
selector per (prompt, budget). Equal key reads: FASA's ``2·N_tip`` dims = SparQ's ``r`` = Double
Sparsity's channels = Loki's rank (16 of 64 on SmolLM2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from leanlm.fasa.calibration import Calibration
from leanlm.fasa.selectors import (
    DoubleSparsitySelector,
    FASASelector,
    H2OSelector,
    KeyQueryStats,
    LokiSelector,
    OracleSelector,
    QuestSelector,
    SnapKVDecodeSelector,
    SparQSelector,
    StreamingSelector,
    TokenSelector,
)


@dataclass
class Offline:
    """What the offline-calibrated methods need: FASA calibrations by name and q/k statistics."""

    calibrations: dict[str, Calibration]  # "wiki" (the default), "adjacent", "code", "task", ...
    stats: KeyQueryStats | None = None
    seed: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def main(self) -> Calibration:
        return self.calibrations["wiki"]

    @property
    def n_dims(self) -> int:
        return 2 * self.main.n_tip

    def fixed_fcs(self, kind: str) -> torch.Tensor:
        """Ablation FC sets ``(L, H, N_tip)``: ``random`` (seeded) or ``lowest`` (the N_tip lowest frequencies)."""
        c = self.main
        n_layers, n_heads = c.geometry["num_layers"], c.geometry["num_heads"]
        n_fc = c.head_dim // 2
        if kind == "lowest":
            return torch.arange(n_fc - c.n_tip, n_fc).expand(n_layers, n_heads, c.n_tip).clone()
        gen = torch.Generator().manual_seed(self.seed)
        return torch.stack([torch.randperm(n_fc, generator=gen)[: c.n_tip]
                            for _ in range(n_layers * n_heads)]).view(n_layers, n_heads, c.n_tip)

    def memo(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


Factory = Callable[[Offline, int], TokenSelector | None]


def _stats(o: Offline) -> KeyQueryStats:
    if o.stats is None:
        raise ValueError("Double Sparsity and Loki need q/k statistics (Offline.stats)")
    return o.stats


METHODS: dict[str, Factory] = {
    "full KV": lambda o, b: None,
    "oracle top-k": lambda o, b: OracleSelector(),
    "FASA": lambda o, b: FASASelector.from_calibration(o.main, budget=b),
    "Quest (page 16)": lambda o, b: QuestSelector(16),
    "StreamingLLM (8 sinks + recent)": lambda o, b: StreamingSelector(8),
    "SparQ": lambda o, b: SparQSelector(r=o.n_dims),
    "Double Sparsity": lambda o, b: o.memo("ds", lambda: DoubleSparsitySelector.from_stats(_stats(o), o.n_dims)),
    "Loki": lambda o, b: o.memo("loki", lambda: LokiSelector.from_stats(_stats(o), o.n_dims)),
    "H2O": lambda o, b: H2OSelector(budget=b),
    "SnapKV decode (R-KV style)": lambda o, b: SnapKVDecodeSelector(budget=b),
    # ablations of FASA
    "FASA pooled per KV group": lambda o, b: FASASelector.from_calibration(o.main, budget=b, pooled=True),
    "FASA adjacent pairing": lambda o, b: FASASelector.from_calibration(o.calibrations["adjacent"], budget=b),
    "random FCs": lambda o, b: FASASelector.from_fcs(o.fixed_fcs("random"), o.main.head_dim, o.main.pairing),
    "lowest-frequency FCs": lambda o, b: FASASelector.from_fcs(o.fixed_fcs("lowest"), o.main.head_dim,
                                                                o.main.pairing),
}
BASELINES = ("Quest (page 16)", "StreamingLLM (8 sinks + recent)", "SparQ", "Double Sparsity", "Loki", "H2O",
             "SnapKV decode (R-KV style)")
ABLATIONS = ("FASA pooled per KV group", "FASA adjacent pairing", "random FCs", "lowest-frequency FCs")


def transfer_method(source: str) -> Factory:
    """FASA with the dominant FCs of another calibration (calibration transfer, paper Table 10)."""
    return lambda o, b: FASASelector.from_calibration(o.calibrations[source], budget=b)


def presses(names: list[str], ratio: float) -> dict[str, Any]:
    """kvpress presses (prefill eviction to ``1 - ratio`` of the prompt)."""
    import kvpress

    factories = {"SnapKV": kvpress.SnapKVPress, "StreamingLLM": kvpress.StreamingLLMPress,
                 "TOVA": kvpress.TOVAPress, "KNorm": kvpress.KnormPress,
                 "ExpectedAttention": kvpress.ExpectedAttentionPress}
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"unknown presses {unknown}; expected some of {list(factories)}")
    return {f"kvpress {n}": factories[n](compression_ratio=ratio) for n in names}
