"""Offline fixtures for the real-media path: a tiny random *full* Qwen2.5-Omni checkpoint with a processor
(byte-level tokenizer with the Qwen special tokens, Whisper features, Qwen2-VL image processor, chat
template) saved to disk, and short generated videos with an audio track (PyAV)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|IMAGE|>", "<|VIDEO|>", "<|audio_bos|>",
            "<|audio_eos|>", "<|vision_bos|>", "<|vision_eos|>"]  # ids 3..9 = tiny.COMPACT_IDS
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
                              "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
                              "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>"},
    )


def save_processor_parts(path: Path) -> None:
    """What a Qwen2.5-Omni checkpoint directory holds besides the weights, at tiny sizes."""
    from transformers import Qwen2VLImageProcessor, WhisperFeatureExtractor

    tiny_tokenizer().save_pretrained(path)
    images = Qwen2VLImageProcessor(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16,
                                   max_pixels=32 * 48)
    audio = WhisperFeatureExtractor(feature_size=16)
    # one preprocessor_config.json for both, as in the Qwen2.5-Omni repositories
    merged = {**audio.to_dict(), **images.to_dict()}
    (path / "preprocessor_config.json").write_text(json.dumps(merged, indent=2))
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def omni_checkpoint(tmp_path_factory) -> Path:
    """A tiny random full-Omni checkpoint (``thinker.*`` keys, no talker) with its processor files."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from leanlm.omnisift.tiny import tiny_thinker_config

    path = tmp_path_factory.mktemp("omni")
    torch.manual_seed(0)
    thinker = tiny_thinker_config(compact_ids=True, vocab_size=320).to_dict()
    model = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False))
    model.save_pretrained(path)
    save_processor_parts(path)
    return path


def write_clip(path: Path, seconds: float = 4.0, fps: int = 8, size: tuple[int, int] = (32, 48), tone: float = 440.0,
               with_audio: bool = True, seed: int = 0) -> Path:
    """An MPEG-4 clip of a square moving over noise, with an AAC sine tone (PyAV)."""
    import av

    rng = np.random.default_rng(seed)
    h, w = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        audio = container.add_stream("aac", rate=16000) if with_audio else None
        if audio is not None:
            audio.layout = "mono"
        for i in range(int(seconds * fps)):
            img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
            x = (4 * i) % (w - 8)
            img[8:16, x : x + 8] = 255
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            t = np.arange(int(seconds * 16000)) / 16000
            wave = (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
            for start in range(0, len(wave), 1024):
                frame = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="flt", layout="mono")
                frame.sample_rate = 16000
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


@pytest.fixture(scope="session")
def av_clip(tmp_path_factory) -> Path:
    pytest.importorskip("av")
    return write_clip(tmp_path_factory.mktemp("clips") / "clip.mp4")


@pytest.fixture(scope="session")
def clip_writer():
    pytest.importorskip("av")
    return write_clip
