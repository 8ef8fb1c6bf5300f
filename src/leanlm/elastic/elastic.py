"""The elastic sampler: one sub-network per training step (ERNIE 5.0 §3.3).

Defaults are the report's rates: full depth on 75% of steps, all experts on 80%, the default k on 80%, each axis
drawn independently. What the report leaves open, and what we chose (all configurable):
- reduced depth: a fraction of L drawn from ``depth_fractions`` (default 1/2, 3/4); which layers run is
  ``layer_rule="random"`` (a random subset, order kept; LayerDrop-like) or ``"even"`` (the fixed evenly spaced
  keep-list :func:`even_layers`, which is also what extraction uses). ``keep_first_last`` pins layers 0 and L-1.
- reduced width: a fraction of E from ``width_fractions`` (default 1/2, 3/4), a random subset drawn independently
  per MoE layer (``width_per_layer``) or one subset shared by all layers.
- reduced sparsity: k' uniform in [1, k-1], the same for every layer.
- the draw is per optimizer step (every micro-batch and every data-parallel rank use the same sub-network):
  the generator is seeded from ``(seed, step)``, so runs and resumed runs draw the same sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leanlm.elastic.subnet import SubNet


def even_layers(num_layers: int, depth: int) -> list[int]:
    """``depth`` evenly spaced layers of ``num_layers`` that always include the first and the last."""
    if not 1 <= depth <= num_layers:
        raise ValueError(f"depth must be in [1, {num_layers}], got {depth}")
    if depth == 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (depth - 1)) for i in range(depth)})


def fraction_count(total: int, fraction: float, minimum: int = 1) -> int:
    return max(minimum, min(total, round(total * fraction)))


@dataclass
class ElasticConfig:
    """Sampling rates and choices of elastic training (report defaults; see the module docstring)."""

    enabled: bool = True
    p_full_depth: float = 0.75
    depth_fractions: tuple[float, ...] = (0.5, 0.75)
    layer_rule: str = "random"
    keep_first_last: bool = False
    p_full_width: float = 0.8
    width_fractions: tuple[float, ...] = (0.5, 0.75)
    width_per_layer: bool = True
    p_default_k: float = 0.8

    def __post_init__(self) -> None:
        for name in ("p_full_depth", "p_full_width", "p_default_k"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ElasticConfig.{name} must be a probability, got {value}")
        if self.layer_rule not in ("random", "even"):
            raise ValueError(f"ElasticConfig.layer_rule must be 'random' or 'even', got {self.layer_rule!r}")
        for name in ("depth_fractions", "width_fractions"):
            values = tuple(getattr(self, name))
            if not values or any(not 0 < f <= 1 for f in values):
                raise ValueError(f"ElasticConfig.{name} must be non-empty fractions in (0, 1], got {values}")
            setattr(self, name, values)


class ElasticSampler:
    """Draws the :class:`SubNet` of each step for a model with ``num_layers``, ``num_experts``, default ``top_k``."""

    def __init__(self, config: ElasticConfig, num_layers: int, num_experts: int, top_k: int, moe_layers: list[int], seed: int = 0) -> None:
        self.config = config
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.top_k = top_k
        self.moe_layers = list(moe_layers)
        self.seed = seed

    def sample(self, step: int) -> SubNet:
        """The sub-network for optimizer step ``step`` (deterministic in (seed, step))."""
        c = self.config
        if not c.enabled:
            return SubNet()
        rng = np.random.default_rng([self.seed, step, 0xE1A5])
        layers = None
        if rng.random() >= c.p_full_depth:
            depth = fraction_count(self.num_layers, float(rng.choice(c.depth_fractions)))
            if c.layer_rule == "even":
                layers = even_layers(self.num_layers, depth)
            else:
                pinned = [0, self.num_layers - 1] if c.keep_first_last and depth >= 2 else []
                pool = [i for i in range(self.num_layers) if i not in pinned]
                layers = sorted(pinned + rng.choice(pool, size=depth - len(pinned), replace=False).tolist())
        top_k = None
        if self.top_k > 1 and rng.random() >= c.p_default_k:
            top_k = int(rng.integers(1, self.top_k))
        experts = None
        if rng.random() >= c.p_full_width:
            width = fraction_count(self.num_experts, float(rng.choice(c.width_fractions)), minimum=top_k or self.top_k)
            if c.width_per_layer:
                experts = {i: rng.choice(self.num_experts, size=width, replace=False).tolist() for i in self.moe_layers}
            else:
                shared = rng.choice(self.num_experts, size=width, replace=False).tolist()
                experts = dict.fromkeys(self.moe_layers, shared)
        return SubNet.make(layers=layers, experts=experts, top_k=top_k)
