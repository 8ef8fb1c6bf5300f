"""Analytic prefill FLOPs of the language model (and the selector) versus retained tokens (paper Table 7).

Counts multiply-adds as 2 FLOPs: per decoder layer ``2·L·D·(D + 2·D_kv)`` (q, k, v), ``2·L·D²`` (o),
``2·L·3·D·I`` (SwiGLU MLP) and ``2·2·L²·D`` (scores and weighted sum, full square as the paper's
counters do), plus the LM head on the last position. The encoders are unchanged by OmniSIFT and are
not counted. The VGAS cost per chunk is ``2·(n_a + n_v)·D·d`` projections, ``2·n_a·4d²`` (q and out) +
``2·n_v·2d²`` (k, v) attention projections, ``2·2·n_a·n_v·d`` attention and ``2·n_a·(d·d/2 + d/2)`` head.
"""

from __future__ import annotations


def llm_prefill_flops(
    seq_len: int, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int
) -> float:
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    per_layer = (
        2 * seq_len * hidden * (hidden + 2 * kv) + 2 * seq_len * hidden * hidden
        + 2 * seq_len * 3 * hidden * intermediate + 4 * seq_len * seq_len * hidden
    )
    return float(layers * per_layer + 2 * hidden * vocab)


def selector_flops(chunks: int, audio_per_chunk: int, video_kept_per_chunk: int, hidden: int, dim: int = 512) -> float:
    na, nv, d = audio_per_chunk, video_kept_per_chunk, dim
    per_chunk = (
        2 * (na + nv) * hidden * d + 2 * na * 2 * d * d + 2 * nv * 2 * d * d + 4 * na * nv * d
        + 2 * na * (d * d // 2 + d // 2)
    )
    return float(chunks * per_chunk)


#: Qwen2.5-Omni-7B thinker text model (config.json of Qwen/Qwen2.5-Omni-7B).
QWEN_OMNI_7B = {"hidden": 3584, "layers": 28, "intermediate": 18944, "heads": 28, "kv_heads": 4, "vocab": 152064}
