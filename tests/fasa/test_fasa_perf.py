"""The speed benchmark's bookkeeping: GQA-aware analytic bytes (golden numbers) and a tiny end-to-end run."""

from __future__ import annotations

import pytest

from leanlm.fasa.bench import analytic_fraction
from leanlm.fasa.perf import run_perf, step_bytes


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
              "decode_repeats": 1, "offload": True, "memory_contexts": [512], "budget": 32, "decode_layers": 2}
    result = run_perf(config)
    attention, decode, _, memory = result["tables"]
    methods = {row[1] for row in attention.rows}
    assert {"dense SDPA, GQA folded into q_len", "FASA-C per head (paper rule)", "FASA-C pooled per KV group",
            "reference path (row-major gather + topk)"} <= methods
    assert {row[1] for row in decode.rows} >= {"full KV, transformers StaticCache (sdpa)",
                                                "FASA-C per head (paper rule)", "FASA-M per head (memory-mapped tier)"}
    # resident at 512 tokens: 29 label buffers (~24/128 of K+V), 64-row windows (64/512) and layer 0 in full
    assert 0.15 < float(memory.rows[0][4]) < 0.5
    assert result["metrics"]["fasa_m_reduction_longest"] > 2
