"""Auxiliary-loss-free load balancing (ERNIE 5.0 §2; the rule of ERNIE 4.5's correction-bias callback).

After each optimizer step, for every MoE layer: ``bias_i += u * sign(mean_j load_j - load_i)``, where ``load`` is
the number of tokens routed to each expert in the step (summed over micro-batches and, when data-parallel,
all-reduced over ranks). The bias enters only the top-k *selection*, never the combine weights.

Choices where the report is silent (configurable, documented in ``docs/elastic.md``):
- Under elastic width, only the experts present in the step's sub-network are updated and the mean is taken
  over them (a removed expert has load 0 by construction; pushing its bias up would be an artefact).
- ``u`` is cut by ``slowdown`` (the report's 10x) from ``slowdown_at_step`` on (the report's later phase).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanlm.elastic.model import ElasticMoeForCausalLM


@dataclass
class BiasSchedule:
    """Bias update speed ``u``; divided by ``slowdown`` from ``slowdown_at_step`` (None = never)."""

    rate: float = 1e-3
    slowdown: float = 10.0
    slowdown_at_step: int | None = None

    def rate_at(self, step: int) -> float:
        if self.slowdown_at_step is not None and step >= self.slowdown_at_step:
            return self.rate / self.slowdown
        return self.rate


@torch.no_grad()
def update_router_biases(
    model: ElasticMoeForCausalLM,
    counts: dict[int, torch.Tensor],
    rate: float,
    active: dict[int, torch.Tensor] | None = None,
) -> dict[int, torch.Tensor]:
    """Apply ``bias += rate * sign(mean(load) - load)`` per MoE layer; returns the applied deltas.

    Args:
        counts: layer index -> tokens routed to each expert this step (``[E]``). Layers absent (skipped by
            elastic depth this step) are not updated.
        active: layer index -> bool mask of experts present in the sub-network (default: all).
    """
    deltas: dict[int, torch.Tensor] = {}
    blocks = model.moe_blocks()
    for layer, load in counts.items():
        block = blocks[layer]
        load = load.to(torch.float64)
        mask = active.get(layer) if active else None
        if mask is None:
            mask = torch.ones_like(load, dtype=torch.bool)
        delta = torch.zeros_like(block.router_bias)
        mean = load[mask].mean()
        delta[mask] = (rate * torch.sign(mean - load[mask])).to(delta.dtype)
        block.router_bias += delta
        block.expert_usage += load
        deltas[layer] = delta
    return deltas


def normalized_entropy(load: torch.Tensor) -> float:
    """NE = -sum p_i log p_i / log N of an expert-load vector (ERNIE 5.0 §6.4.1); 1 = perfectly balanced."""
    load = load.to(torch.float64)
    n = load.numel()
    if n < 2 or float(load.sum()) == 0:
        return float("nan")
    p = load / load.sum()
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum() / torch.log(torch.tensor(float(n), dtype=torch.float64)))


def max_violation(load: torch.Tensor) -> float:
    """Load imbalance ``max_i load_i / mean(load) - 1`` (0 = perfectly balanced)."""
    load = load.to(torch.float64)
    return float(load.max() / load.mean() - 1)
