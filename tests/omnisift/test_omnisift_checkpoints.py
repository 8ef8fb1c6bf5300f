"""Real-checkpoint correctness: D from the text config, official selector keys, saved compressor spec,
the random-selector warning, media on a non-empty cache, and the selector's own optimizer group."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    DynamicCache,
    Qwen2_5OmniConfig,
    Qwen2_5OmniForConditionalGeneration,
    Qwen2_5OmniThinkerForConditionalGeneration,
)

from leanlm.omnisift import VGAS, AVLayout, OmniSIFT, RandomPruning
from leanlm.omnisift.qwen_omni import OmniSIFTThinker, attach
from leanlm.omnisift.tiny import av_prompt, tiny_thinker, tiny_thinker_config

torch.set_num_threads(1)


def _inputs(model, frames=4, grid=(4, 8), audio=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = av_prompt(model.config, frames, grid, audio, prefix=[10, 11], suffix=[12])
    vc = model.config.vision_config
    pixels = torch.randn(frames * grid[0] * grid[1], vc.in_channels * vc.temporal_patch_size * vc.patch_size**2,
                         generator=g)
    mel = int(p.audio_feature_lengths[0])
    return dict(
        input_ids=p.input_ids, attention_mask=torch.ones_like(p.input_ids), pixel_values_videos=pixels,
        video_grid_thw=p.video_grid_thw, input_features=torch.randn(1, model.config.audio_config.num_mel_bins, mel,
                                                                    generator=g),
        feature_attention_mask=torch.ones(1, mel, dtype=torch.long), use_audio_in_video=True,
        video_second_per_grid=p.video_second_per_grid,
    )


def _omnisift_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "RANDOMLY INITIALISED" in str(w.message)]


def test_selector_width_comes_from_the_text_config():
    # hidden size 48 (not 3584): OmniSIFT() sizes its selector from config.get_text_config()
    model = tiny_thinker(compact_ids=True, hidden_size=48, compressor=OmniSIFT(0.5, 0.4, selector_dim=32,
                                                                                selector_heads=4))
    assert model.compressor.selector.a_proj.in_features == 48
    assert model.compressor.selector.v_proj.in_features == 48
    with torch.no_grad():
        model(**_inputs(model))
    stats = model.last_compression
    assert stats.audio_kept < stats.audio_total and stats.video_kept < stats.video_total
    # attach() on a plain transformers thinker does the same
    torch.manual_seed(0)
    plain = Qwen2_5OmniThinkerForConditionalGeneration(tiny_thinker_config(compact_ids=True, hidden_size=48)).eval()
    attached = attach(plain, OmniSIFT(0.5, 0.4, selector_dim=32, selector_heads=4))
    assert attached.compressor.selector.a_proj.in_features == 48
    # an explicit, wrong width is a clear error, not a shape error deep inside a matmul
    with pytest.raises(ValueError, match=r"hidden size 64.*text hidden size is 48"):
        tiny_thinker(compact_ids=True, hidden_size=48, compressor=OmniSIFT(0.5, 0.4, 64))
    with pytest.raises(ValueError, match="no selector yet"):
        OmniSIFT(0.5, 0.4)(torch.zeros(1, 4, 8), [AVLayout()])


def _full_omni_checkpoint(tmp_path, official_selector: VGAS | None):
    """A tiny full Qwen2.5-Omni checkpoint (``thinker.*`` keys), optionally with OmniSIFT-7B-style
    ``thinker.compressor.*`` selector weights (the official ``TransformerAudioSelector`` names)."""
    torch.manual_seed(1)
    config = Qwen2_5OmniConfig(thinker_config=tiny_thinker_config(compact_ids=True).to_dict(), enable_audio_output=False)
    full = Qwen2_5OmniForConditionalGeneration(config)
    full.save_pretrained(tmp_path)
    if official_selector is not None:
        state = load_file(tmp_path / "model.safetensors")
        for key, value in official_selector.state_dict().items():
            state[f"thinker.compressor.{key}"] = value.clone().contiguous()
        save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    return full


def test_official_omnisift_7b_selector_keys_are_mapped(tmp_path):
    torch.manual_seed(2)
    official = VGAS(64)  # the official selector: D -> 512, 8 heads
    full = _full_omni_checkpoint(tmp_path, official)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = OmniSIFTThinker.from_pretrained(tmp_path)
    assert not _omnisift_warnings(record)
    assert isinstance(model.compressor, OmniSIFT)  # built because the checkpoint holds a selector
    for key, value in official.state_dict().items():
        assert torch.equal(model.compressor.selector.state_dict()[key], value), key
    # the thinker's own weights come from the thinker.* keys
    assert torch.equal(model.lm_head.weight, full.thinker.lm_head.weight)
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, full.thinker.model.layers[1].mlp.up_proj.weight)
    # saving writes our own layout (no thinker. prefix), which loads back the same
    model.save_pretrained(tmp_path / "again")
    again = OmniSIFTThinker.from_pretrained(tmp_path / "again")
    for key, value in official.state_dict().items():
        assert torch.equal(again.compressor.selector.state_dict()[key], value), key
    assert torch.equal(again.lm_head.weight, full.thinker.lm_head.weight)


def test_missing_selector_weights_warn_loudly(tmp_path):
    _full_omni_checkpoint(tmp_path, None)
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        model = OmniSIFTThinker.from_pretrained(tmp_path, compressor=OmniSIFT(0.5, 0.4, selector_dim=32,
                                                                             selector_heads=4))
    assert model.compressor.selector is not None
    # a parameter-free compressor has nothing to warn about
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        OmniSIFTThinker.from_pretrained(tmp_path, compressor=RandomPruning(0.5, 0.4))
    assert not _omnisift_warnings(record)


def test_ratios_and_selector_width_are_saved_and_restored(tmp_path):
    comp = OmniSIFT(0.6, 0.45, selector_dim=32, selector_heads=4, temporal=False, seed=3)
    model = tiny_thinker(compact_ids=True, compressor=comp)
    with torch.no_grad():
        for p in comp.selector.parameters():
            p.add_(torch.randn_like(p))
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loaded = OmniSIFTThinker.from_pretrained(tmp_path)
    assert not _omnisift_warnings(record)
    assert loaded.compressor.spec() == comp.spec()
    assert loaded.compressor.spec()["rho_v"] == 0.6 and loaded.compressor.spec()["selector_dim"] == 32
    for key, value in comp.selector.state_dict().items():
        assert torch.equal(loaded.compressor.selector.state_dict()[key], value), key
    inputs = _inputs(model)
    with torch.no_grad():
        a, b = model(**inputs).logits, loaded(**inputs).logits
    assert torch.equal(model.last_compression.keep, loaded.last_compression.keep)
    torch.testing.assert_close(a, b)
    # a baseline round-trips too
    model.set_compressor(RandomPruning(0.3, 0.2, seed=5))
    model.save_pretrained(tmp_path / "random")
    again = OmniSIFTThinker.from_pretrained(tmp_path / "random")
    assert isinstance(again.compressor, RandomPruning) and again.compressor.spec() == model.compressor.spec()


def test_media_with_a_non_empty_cache_is_an_error():
    model = tiny_thinker(compact_ids=True, compressor=OmniSIFT(0.5, 0.4, selector_dim=32, selector_heads=4))
    inputs = _inputs(model)
    cache = DynamicCache(config=model.config.get_text_config())
    with torch.no_grad():
        model(**inputs, past_key_values=cache, use_cache=True)
        assert cache.get_seq_length() > 0
        with pytest.raises(ValueError, match="non-empty cache"):
            model(**inputs, past_key_values=cache, use_cache=True)


def test_selector_gets_its_own_optimizer_group_and_a_real_gradient():
    """End-to-end STE path: the LM loss reaches every selector tensor, and the selector's group is
    clipped by its own norm (the backbone's larger norm no longer shrinks it)."""
    from leanlm.omnisift.training import GroupedAdamW, SelectorOptim

    model = tiny_thinker(compact_ids=True, compressor=OmniSIFT(0.5, 0.4, selector_dim=32, selector_heads=4)).train()
    opt = GroupedAdamW(model, 1e-3, SelectorOptim(lr=1e-2, eps=1e-12, clip=1.0))
    names = [g["name"] for g in opt.param_groups]
    assert names == ["backbone", "selector"]
    sel = opt.param_groups[1]
    assert sel["lr"] == 1e-2 and sel["eps"] == 1e-12
    assert {id(p) for p in sel["params"]} == {id(p) for p in model.compressor.parameters()}
    inputs = _inputs(model)
    labels = inputs["input_ids"].clone()
    before = {k: v.clone() for k, v in model.compressor.selector.state_dict().items()}
    out = model(**inputs, labels=labels)
    opt.zero_grad()
    out.loss.backward()
    grads = [p.grad for p in model.compressor.selector.parameters()]
    assert all(g is not None for g in grads)
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    assert norm > 1e-9
    opt.step()
    assert opt.last_norms["selector"] == pytest.approx(norm, rel=1e-5)
    # Adam moves every selector tensor by about lr regardless of the gradient's scale (eps 1e-12 << grads)
    moved = [float((model.compressor.selector.state_dict()[k] - v).abs().max()) for k, v in before.items()
             if k.endswith("weight") and "norm" not in k]
    assert min(moved) > 1e-3


def test_omnizip_uses_the_audio_encoders_last_layer_attention():
    from leanlm.omnisift import OmniZipStyle
    from leanlm.omnisift.stvp import keep_least_similar

    comp = OmniZipStyle(0.5, 0.4)
    model = tiny_thinker(compact_ids=True, compressor=comp)
    seen = []
    original = comp.compress

    def spy(embeds, layouts):
        seen.append([s.clone() for s in comp.audio_scores])
        return original(embeds, layouts)

    comp.compress = spy
    inputs = _inputs(model)
    with torch.no_grad():
        model(**inputs)
    assert comp.audio_scores is None  # only set for the call
    (scores,) = seen[0]
    layout = model.last_compression.layouts[0]
    assert scores.shape == (layout.audio.numel(),) and bool((scores > 0).all())
    # each attention window's received attention sums to 1 over its frames; 2 frames pool into a token
    mel = int(inputs["feature_attention_mask"].sum())
    frames = (mel - 1) // 2 + 1
    n_windows = -(-mel // (2 * model.config.audio_config.n_window))
    assert abs(float(scores.sum()) * 2 - n_windows) < 1e-4 * n_windows or frames % 2 == 1
    # the audio keep-set is the top of those scores (the budget spent over the whole stream)
    _, a_drop = comp.budget(layout)
    want = keep_least_similar(-scores.float(), a_drop)
    assert torch.equal(model.last_compression.keep[0, layout.audio], want)
