"""The speed benchmark's bookkeeping: GQA-aware analytic bytes (golden numbers) and a tiny end-to-end run."""

from __future__ import annotations

import pytest

from leanlm.fasa.bench import analytic_fraction
from leanlm.fasa.perf import PARTS, run_perf, step_bytes, step_profile


def test_analytic_fraction_is_gqa_aware():
    # issue #11: per-query-head selection on SmolLM2 (9 q / 3 KV heads, d=64, 16 dims) at 8K, budget 256
    assert analytic_fraction(8, 64, 256, 8192, n_q=9, n_kv=3) == pytest.approx(9 * 16 / (2 * 3 * 64) + 9 * 256 / (3 * 8192))
    assert analytic_fraction(8, 64, 256, 8192, n_q=9, n_kv=3) == pytest.approx(0.46875)
    # without GQA it is the paper's Eq. 8: N_tip dims fraction + N_fac / t
    assert analytic_fraction(16, 128, 256, 8192) == pytest.approx((2 * 16 * 8192 + 2 * 256 * 128) / (2 * 8192 * 128))
    # the label buffer (union of 24 dims per KV group) read once per group
    assert analytic_fraction(8, 64, 256, 8192, n_q=9, n_kv=3, label_width=24) == pytest.approx(24 / 128 + 3 * 256 / 8192)
    b = step_bytes(8192, 256, label_width=24, pooled=True)
    assert b["dense"] == 2 * 3 * 8192 * 64 * 4 and b["fac"] == 3 * 256 * 128 * 4
    assert b["fraction"] == pytest.approx((3 * 8192 * 24 + 2 * 3 * 8192 + 3 * 256 * 128) / (2 * 3 * 8192 * 64))


def test_tiny_perf_run_has_every_method_and_residency():
    config = {"attention_contexts": [600], "attention_repeats": 2, "decode_contexts": [300], "decode_steps": 1,
              "decode_repeats": 1, "offload": True, "memory_contexts": [512], "budget": 32, "decode_layers": 2,
              "profile_contexts": [600], "profile_repeats": 2}
    result = run_perf(config)
    attention, decode, _, memory, profile = result["tables"]
    assert profile.title.startswith("(e) Profile")
    assert {row[2] for row in profile.rows} >= set(PARTS) | {"whole FASA-C step", "overhead (whole step - sum of parts)"}
    methods = {row[1] for row in attention.rows}
    assert {"dense SDPA, GQA folded into q_len", "FASA-C per head (paper rule)", "FASA-C pooled per KV group",
            "reference path (row-major gather + topk)"} <= methods
    assert {row[1] for row in decode.rows} >= {"full KV, transformers StaticCache (sdpa)",
                                                "FASA-C per head (paper rule)", "FASA-M per head (memory-mapped tier)"}
    # resident at 512 tokens: 29 label buffers (~24/128 of K+V), 64-row windows (64/512) and layer 0 in full
    assert 0.15 < float(memory.rows[0][4]) < 0.5
    assert result["metrics"]["fasa_m_reduction_longest"] > 2


def test_profile_parts_reconcile_with_the_whole_step():
    """The profile's rows: every part per mode, shares of the whole step, overhead = whole - sum of parts."""
    rows = step_profile([1200], budget=64, repeats=3)
    for mode in ("per head", "pooled"):
        mine = {r["component"]: r for r in rows if r["mode"] == mode}
        assert set(PARTS) <= set(mine)
        whole = mine["whole FASA-C step"]["median_us"]
        parts = sum(mine[name]["median_us"] for name in PARTS)
        assert mine["overhead (whole step - sum of parts)"]["median_us"] == pytest.approx(whole - parts)
        assert mine["whole FASA-C step"]["share"] == pytest.approx(1.0)
        assert all(mine[name]["median_us"] > 0 for name in PARTS)
    dense = [r for r in rows if r["mode"] == "dense"]
    assert dense[0]["component"].startswith("SDPA") and dense[0]["share"] == pytest.approx(1.0)
