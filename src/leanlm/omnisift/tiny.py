"""Tiny random Qwen2.5-Omni thinkers built from configs (never downloaded), and the placeholder layout.

:func:`tiny_thinker_config` keeps the real special-token ids by default (vocabulary 151,936, as in
Qwen2.5-Omni) or remaps them below 64 with ``compact_ids=True`` so that a 256-token vocabulary suffices.
:func:`av_prompt` builds the ``use_audio_in_video=True`` placeholder sequence exactly as the Qwen2.5-Omni
processor interleaves it: per 2-s chunk the chunk's video tokens, then its audio tokens, between
``<|vision_bos|><|audio_bos|>`` and ``<|audio_eos|><|vision_eos|>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Qwen2_5OmniThinkerConfig

REAL_IDS = {
    "audio_token_index": 151646, "image_token_index": 151655, "video_token_index": 151656,
    "audio_start_token_id": 151647, "audio_end_token_id": 151648,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653,
}
COMPACT_IDS = {
    "audio_token_index": 3, "image_token_index": 4, "video_token_index": 5,
    "audio_start_token_id": 6, "audio_end_token_id": 7, "vision_start_token_id": 8, "vision_end_token_id": 9,
}


def tiny_thinker_config(
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    compact_ids: bool = False,
    vocab_size: int | None = None,
    position_id_per_seconds: int = 25,
    seconds_per_chunk: int = 2,
    attn_implementation: str = "sdpa",
) -> Qwen2_5OmniThinkerConfig:
    """A 2-layer thinker with 1-layer vision and audio encoders projecting to ``hidden_size``."""
    ids = COMPACT_IDS if compact_ids else REAL_IDS
    vocab = vocab_size or (256 if compact_ids else 151936)
    head_dim = hidden_size // num_attention_heads
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2_5OmniThinkerConfig(
        text_config={
            "vocab_size": vocab, "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
            "num_key_value_heads": num_key_value_heads, "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "in_channels": 3,
            "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 16,
            "fullatt_block_indexes": [0], "out_hidden_size": hidden_size,
        },
        audio_config={
            "num_mel_bins": 16, "d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64, "output_dim": hidden_size, "n_window": 50, "max_source_positions": 1500,
        },
        position_id_per_seconds=position_id_per_seconds,
        seconds_per_chunk=seconds_per_chunk,
        **{k: v for k, v in ids.items() if k not in ("vision_start_token_id", "vision_end_token_id")},
    )
    config.vision_start_token_id = ids["vision_start_token_id"]
    config.vision_end_token_id = ids["vision_end_token_id"]
    config._attn_implementation = attn_implementation
    config.get_text_config()._attn_implementation = attn_implementation
    return config


def tiny_thinker(seed: int = 0, compressor=None, **config_kwargs):
    """A random-weight :class:`~leanlm.omnisift.qwen_omni.OmniSIFTThinker` in eval mode."""
    from leanlm.omnisift.qwen_omni import OmniSIFTThinker

    torch.manual_seed(seed)
    return OmniSIFTThinker(tiny_thinker_config(**config_kwargs), compressor=compressor).eval()


@dataclass
class AVPrompt:
    """Placeholder ``input_ids`` [1, L] and the metadata ``get_rope_index`` needs."""

    input_ids: torch.Tensor
    video_grid_thw: torch.Tensor
    audio_feature_lengths: torch.Tensor
    video_second_per_grid: torch.Tensor
    n_video: int
    n_audio: int


def audio_feature_length(n_audio_tokens: int) -> int:
    """Mel frames giving ``n`` audio LLM tokens: ``((s−1)//2+1−2)//2+1 = n`` for ``s = 4n``."""
    return 4 * n_audio_tokens


def av_prompt(
    config: Qwen2_5OmniThinkerConfig,
    frames: int,
    grid_hw: tuple[int, int],
    audio_tokens: int,
    prefix: list[int],
    suffix: list[int],
    second_per_grid: float = 1.0,
) -> AVPrompt:
    """The interleaved placeholder sequence for a video of ``frames`` LLM frames (grid ``grid_hw`` of
    patches before the 2×2 merge) with ``audio_tokens`` audio tokens, as the processor lays it out."""
    merge = config.vision_config.spatial_merge_size
    h, w = grid_hw
    per_frame = (h // merge) * (w // merge)
    pps = config.position_id_per_seconds
    chunk_t = pps * config.seconds_per_chunk
    frame_t = [int(i * second_per_grid * pps) for i in range(frames)]
    audio_t = list(range(audio_tokens))
    n_chunks = max(
        (max(frame_t) // chunk_t + 1) if frame_t else 0, (max(audio_t) // chunk_t + 1) if audio_t else 0
    )
    body: list[int] = []
    for c in range(n_chunks):
        body += [config.video_token_id] * per_frame * sum(1 for t in frame_t if t // chunk_t == c)
        body += [config.audio_token_id] * sum(1 for t in audio_t if t // chunk_t == c)
    ids = (
        [*list(prefix), config.vision_start_token_id, config.audio_start_token_id, *body, config.audio_end_token_id, config.vision_end_token_id, *list(suffix)]
    )
    return AVPrompt(
        input_ids=torch.tensor([ids]),
        video_grid_thw=torch.tensor([[frames, h, w]]),
        audio_feature_lengths=torch.tensor([audio_feature_length(audio_tokens)]),
        video_second_per_grid=torch.tensor([second_per_grid]),
        n_video=frames * per_frame,
        n_audio=audio_tokens,
    )
