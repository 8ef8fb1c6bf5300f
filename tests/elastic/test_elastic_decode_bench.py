"""The decode benchmark's FLOP ideal counts what a decode step really computes; the benchmark runs end to end."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache

from leanlm.elastic import ElasticMoeConfig, ElasticMoeForCausalLM, SubNet, extract, plan_subnet
from leanlm.elastic.decode_bench import decode_flops, markdown, overhead_fit, run_decode_benchmark

TINY = dict(vocab_size=275, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            num_experts=8, num_experts_per_tok=3, moe_intermediate_size=16, num_shared_experts=1,
            first_k_dense_layers=1, dense_intermediate_size=48, num_mtp_modules=0)


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """Scores and weighted values of CPU attention (``FlopCounterMode`` has no formula for the CPU kernel)."""
    b, h, t, e = query
    return 2 * 2 * b * h * t * key[-2] * e


def counted_decode_flops(model: ElasticMoeForCausalLM, subnet: SubNet | None, prompt: int = 9) -> int:
    """FLOPs of one decoded token (batch 1) after a ``prompt``-token prefill, counted by torch."""
    ids = torch.randint(0, 256, (1, prompt + 1), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache()
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with torch.no_grad():
        model(ids[:, :prompt], past_key_values=cache, use_cache=True, subnet=subnet)
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(ids[:, prompt:], past_key_values=cache, use_cache=True, subnet=subnet)
    return counter.get_total_flops()


@pytest.mark.parametrize("fused", [True, False])
def test_decode_flops_is_what_a_decode_step_computes(fused):
    """The ideal's FLOP model (projections, router, shared + k routed experts, dense layer, LM head, attention over
    the cache) equals torch's own count of a real decode step, for several k, both decode steps and an extracted
    model: a wrong ideal would hide or invent a gap."""
    torch.manual_seed(0)
    model = ElasticMoeForCausalLM(ElasticMoeConfig(**TINY)).eval()
    model.set_fused_decode(fused)
    for k in (3, 2, 1):
        counted = counted_decode_flops(model, SubNet(top_k=k) if k != 3 else None)
        assert counted == decode_flops(model.config, k, context=10), k
    small = extract(model, plan_subnet(model, depth=3, experts=4, top_k=2, expert_rule="index"))
    small.set_fused_decode(fused)
    assert counted_decode_flops(small, None) == decode_flops(small.config, None, context=10)


def test_decode_benchmark_runs_and_reports_the_fit():
    rows = run_decode_benchmark({"tiny": TINY}, batches=(1,), new_tokens=2, prompt_len=4, repeats=1)
    names = [r["variant"] for r in rows]
    assert names[0] == "top-3"  # the reference row
    assert {"top-3", "top-1", "top-1 (unfused decode step)", "top-1 (sorted dispatch)"} <= set(names)
    for r in rows:
        assert r["ms_per_token"] > 0 and math.isfinite(r["fraction_of_ideal"])
    top1 = next(r for r in rows if r["variant"] == "top-1")
    assert top1["ideal_speedup"] == pytest.approx(decode_flops(ElasticMoeConfig(**TINY), 3, 4 + 1) / decode_flops(ElasticMoeConfig(**TINY), 1, 4 + 1))
    fit = overhead_fit(rows, "tiny", 1)
    assert fit is not None and fit["k"] == 3
    top3 = next(r for r in rows if r["variant"] == "top-3")
    assert fit["fixed_ms"] + 3 * fit["per_expert_ms"] == pytest.approx(top3["ms_per_token"])
    assert fit["fixed_ms"] + fit["per_expert_ms"] == pytest.approx(top1["ms_per_token"])
    text = markdown(rows)
    assert "**tiny, batch 1**" in text and "independent of k" in text


def test_decode_benchmark_cpu_clock_and_bad_clock():
    rows = run_decode_benchmark({"tiny": TINY}, batches=(1,), new_tokens=1, prompt_len=3, repeats=1, clock="cpu")
    assert all(r["clock"] == "cpu" and r["ms_per_token"] > 0 for r in rows)
    with pytest.raises(ValueError, match="clock must be one of"):
        run_decode_benchmark({"tiny": TINY}, clock="gpu")


def test_overhead_fit_target():
    """With fixed part F and per-expert cost e, top-1 vs top-4 = (F + 4e) / (F + e); the fit's 'fixed part needed'
    is the F at which that ratio is 80% of the ideal."""
    rows = [{"config": "c", "batch": 1, "dispatch": "auto", "variant": v, "ms_per_token": t, "ideal_speedup": i}
            for v, t, i in (("top-4", 2.0 + 4 * 0.1, 1.0), ("top-2", 2.0 + 2 * 0.1, 1.3), ("top-1", 2.0 + 0.1, 1.6))]
    fit = overhead_fit(rows, "c", 1)
    assert fit["fixed_ms"] == pytest.approx(2.0) and fit["per_expert_ms"] == pytest.approx(0.1)
    f = fit["fixed_needed_ms"]
    assert (f + 0.4) / (f + 0.1) == pytest.approx(0.8 * 1.6)
