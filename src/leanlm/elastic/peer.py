"""The strongest available peer for our MoE layer: transformers' ``Ernie4_5_MoeSparseMoeBlock`` (ERNIE 4.5's router:
FP32 softmax, top-k on probs + ``e_score_correction_bias``, renormalised weights, shared experts).

:func:`to_ernie45_block` copies an :class:`~leanlm.elastic.model.ElasticMoe` into that block so the two can be
checked for equal outputs (they agree to float rounding when no experts are masked) and timed side by side
(:func:`time_moe_blocks`, used by ``docs/results/elastic.md``).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from leanlm.elastic.model import ElasticMoe


@torch.no_grad()
def to_ernie45_block(block: ElasticMoe, hidden_size: int) -> nn.Module:
    """An ``Ernie4_5_MoeSparseMoeBlock`` holding the same router, bias, routed and shared experts as ``block``."""
    from transformers import Ernie4_5_MoeConfig
    from transformers.models.ernie4_5_moe.modeling_ernie4_5_moe import Ernie4_5_MoeSparseMoeBlock

    e, _, f = block.w_gate.shape
    shared = block.shared.gate_proj.out_features // f if block.shared is not None else 0
    cfg = Ernie4_5_MoeConfig(
        hidden_size=hidden_size, moe_num_experts=e, moe_k=block.top_k, moe_intermediate_size=f,
        moe_num_shared_experts=shared, moe_norm_min=block.norm_min, use_bias=False, hidden_act="silu",
    )
    peer = Ernie4_5_MoeSparseMoeBlock(cfg)
    peer.gate.weight.copy_(block.router.weight)
    peer.gate.moe_statics.e_score_correction_bias.copy_(block.router_bias[None].float())
    peer.experts.gate_up_proj.copy_(torch.cat([block.w_gate, block.w_up], dim=2).transpose(1, 2))
    peer.experts.down_proj.copy_(block.w_down.transpose(1, 2))
    if block.shared is not None:
        peer.shared_experts.load_state_dict(block.shared.state_dict())
    return peer


def time_moe_blocks(blocks: dict[str, nn.Module], x: torch.Tensor, repeats: int = 5, backward: bool = True) -> dict[str, float]:
    """Median seconds of forward (+ backward) for each block on the same input, interleaved to share noise."""
    times: dict[str, list[float]] = {name: [] for name in blocks}
    for _ in range(repeats):
        for name, module in blocks.items():
            inp = x.detach().requires_grad_(backward)
            start = time.perf_counter()
            out = module(inp)
            if backward:
                out.sum().backward()
            times[name].append(time.perf_counter() - start)
            module.zero_grad(set_to_none=True)
    return {name: statistics.median(v) for name, v in times.items()}


SHAPES: list[tuple[int, int, int, int, int]] = [
    # (hidden, experts, top-k, expert hidden, tokens)
    (128, 16, 4, 64, 1152),
    (128, 16, 1, 64, 1152),
    (128, 16, 4, 64, 1),
    (256, 64, 8, 64, 2048),
]


def bench_moe(shapes: list[tuple[int, int, int, int, int]] | None = None, seed: int = 0) -> list[dict[str, object]]:
    """Our MoE layer (both dispatch paths) vs transformers' ``Ernie4_5_MoeSparseMoeBlock`` with identical weights.

    Each row checks that the outputs agree, then times forward+backward (training shapes) or forward only
    (one token: decode), interleaving the three so that they share the machine's noise.
    """
    from leanlm.elastic.config import ElasticMoeConfig

    rows = []
    for d, e, k, f, tokens in shapes or SHAPES:
        torch.manual_seed(seed)
        kwargs = dict(hidden_size=d, num_attention_heads=4, num_experts=e, num_experts_per_tok=k, moe_intermediate_size=f)
        ours = ElasticMoe(ElasticMoeConfig(**kwargs))
        for p in (ours.w_gate, ours.w_up, ours.w_down, ours.router.weight):
            nn.init.normal_(p, 0.0, 0.05)
        bmm = ElasticMoe(ElasticMoeConfig(**kwargs, moe_dispatch="bmm"))
        bmm.load_state_dict(ours.state_dict())
        peer = to_ernie45_block(ours, d)
        x = torch.randn(1, tokens, d)
        with torch.no_grad():
            diff = float((ours(x) - peer(x)).abs().max())
        backward = tokens > 1
        t = time_moe_blocks({"sorted": ours, "bmm": bmm, "peer": peer}, x, repeats=7 if backward else 50, backward=backward)
        rows.append({"hidden": d, "experts": e, "top_k": k, "expert_hidden": f, "tokens": tokens,
                     "mode": "fwd+bwd" if backward else "fwd (decode)", "max_abs_diff": diff,
                     "ours_sorted_ms": 1000 * t["sorted"], "ours_bmm_ms": 1000 * t["bmm"], "peer_ms": 1000 * t["peer"],
                     "peer_over_ours": t["peer"] / t["sorted"]})
    return rows
