"""Analytic prefill FLOPs of the language model (and the selector) versus retained tokens (paper Table 7).

Counts multiply-adds as 2 FLOPs: per decoder layer ``2·L·D·(D + 2·D_kv)`` (q, k, v), ``2·L·D²`` (o),
``2·L·3·D·I`` (SwiGLU MLP) and ``2·2·L²·D`` (scores and weighted sum, full square as the paper's
counters do), plus the LM head on the last position. The encoders are unchanged by OmniSIFT; they are
counted separately (:func:`vision_encoder_flops`, :func:`audio_encoder_flops`) so that the ratio compares
with the paper's Table 7, which is end to end. The VGAS cost per chunk is ``2·(n_a + n_v)·D·d`` projections, ``2·n_a·4d²`` (q and out) +
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


#: Qwen2.5-Omni-7B vision encoder (thinker_config.vision_config): 32 blocks, windowed attention over 8x8
#: patches except the full-attention blocks 7/15/23/31, SwiGLU MLP, 2x2 patch merger into the LLM width.
QWEN_OMNI_7B_VISION = {"depth": 32, "hidden": 1280, "intermediate": 3420, "full_blocks": 4, "window_tokens": 64,
                       "patch_dim": 3 * 2 * 14 * 14, "merge": 4, "out": 3584}
#: Qwen2.5-Omni-7B audio encoder (Whisper-large-v3 shaped): 32 layers of width 1280, FFN 5120, 128 mel bins,
#: attention within 2-s windows (100 frames after the stride-2 conv), 2x average pooling, projection to 3584.
QWEN_OMNI_7B_AUDIO = {"layers": 32, "hidden": 1280, "ffn": 5120, "mels": 128, "window": 100, "out": 3584}


def vision_encoder_flops(frames: int, patches_per_frame: int, depth: int, hidden: int, intermediate: int,
                         full_blocks: int, window_tokens: int, patch_dim: int, merge: int, out: int) -> float:
    """Vision tower prefill FLOPs for ``frames`` temporal grids of ``patches_per_frame`` patches each (before
    the 2x2 merge): patch embedding, per block qkv/o + SwiGLU + attention (windowed or, in the
    full-attention blocks, over the frame's patches), and the merger MLP (4·hidden -> 4·hidden -> out)."""
    n = frames * patches_per_frame
    dense = 2 * n * hidden * 3 * hidden + 2 * n * hidden * hidden + 2 * n * 3 * hidden * intermediate
    attn_window = 4 * n * min(window_tokens, patches_per_frame) * hidden
    attn_full = 4 * n * patches_per_frame * hidden
    blocks = depth * dense + (depth - full_blocks) * attn_window + full_blocks * attn_full
    merged = n // merge
    merger = 2 * merged * (merge * hidden) * (merge * hidden) + 2 * merged * (merge * hidden) * out
    return float(2 * n * patch_dim * hidden + blocks + merger)


def audio_encoder_flops(seconds: float, layers: int, hidden: int, ffn: int, mels: int, window: int, out: int) -> float:
    """Audio tower FLOPs for ``seconds`` of audio: two convolutions (100 mel frames/s, the second with stride
    2), per layer q/k/v/o + GELU MLP + attention within windows of ``window`` frames, then the projection of
    the 2x-pooled frames (25 tokens/s) to the LLM width."""
    mel = int(100 * seconds)
    t = mel // 2
    conv = 2 * mel * 3 * mels * hidden + 2 * t * 3 * hidden * hidden
    per_layer = 2 * t * 4 * hidden * hidden + 2 * t * 2 * hidden * ffn + 4 * t * min(window, t) * hidden
    return float(conv + layers * per_layer + 2 * (t // 2) * hidden * out)
