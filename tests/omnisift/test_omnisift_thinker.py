"""OmniSIFT inside transformers' Qwen2.5-Omni thinker: positions, rope_deltas, generate(), gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from leanlm.omnisift import OmniSIFT, RandomPruning
from leanlm.omnisift.qwen_omni import attach
from leanlm.omnisift.tiny import av_prompt, tiny_thinker

torch.set_num_threads(1)

FRAMES, GRID, AUDIO = 4, (4, 8), 100  # 4 LLM frames of 2x4 = 8 tokens, 4 s of audio (25 tokens/s)


@pytest.fixture(scope="module")
def thinker():
    return tiny_thinker(seed=0, compact_ids=False, compressor=OmniSIFT(0.5, 0.4, hidden_size=64, selector_dim=32,
                                                                      selector_heads=4))


def encoder_inputs(model, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = av_prompt(model.config, FRAMES, GRID, AUDIO, prefix=[100, 101, 102], suffix=[103, 104])
    vc = model.config.vision_config
    patches = FRAMES * GRID[0] * GRID[1]
    pixel = torch.randn(batch * patches, vc.in_channels * vc.temporal_patch_size * vc.patch_size**2, generator=g)
    n_mel = int(p.audio_feature_lengths[0])
    feats = torch.randn(batch, model.config.audio_config.num_mel_bins, n_mel, generator=g)
    ids = p.input_ids.repeat(batch, 1)
    return dict(
        input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixel,
        video_grid_thw=p.video_grid_thw.repeat(batch, 1), input_features=feats,
        feature_attention_mask=torch.ones(batch, n_mel, dtype=torch.long), use_audio_in_video=True,
        video_second_per_grid=p.video_second_per_grid.repeat(batch),
    ), p


def capture_model_kwargs(model):
    seen = []
    handle = model.model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs), with_kwargs=True)
    return seen, handle


def test_kept_positions_equal_original_tmrope_ids(thinker):
    inputs, p = encoder_inputs(thinker)
    full_pos, full_delta = thinker.get_rope_index(
        inputs["input_ids"], None, inputs["video_grid_thw"], inputs["attention_mask"], True,
        p.audio_feature_lengths, inputs["video_second_per_grid"],
    )
    seen, handle = capture_model_kwargs(thinker)
    with torch.no_grad():
        thinker(**inputs)
    handle.remove()
    keep = thinker.last_compression.keep[0]
    assert torch.equal(seen[0]["position_ids"][:, 0], full_pos[:, 0, keep])
    assert seen[0]["inputs_embeds"].shape[1] == int(keep.sum()) < inputs["input_ids"].shape[1]
    # text and special tokens are never pruned
    ids = inputs["input_ids"][0]
    av = (ids == thinker.config.video_token_id) | (ids == thinker.config.audio_token_id)
    assert keep[~av].all()
    # budget: 4 frames x int(8 * 0.5) video, 2 chunks x int(50 * 0.4) audio
    stats = thinker.last_compression
    assert (stats.video_total - stats.video_kept, stats.audio_total - stats.audio_kept) == (16, 40)
    # rope_deltas = original delta + pruned tokens, so the next position is max(original ids) + 1
    assert int(thinker.rope_deltas[0]) == int(full_delta[0]) + int((~keep).sum())


def test_pruned_embeddings_are_the_scattered_encoder_features(thinker):
    inputs, _ = encoder_inputs(thinker)
    comp = thinker.compressor
    thinker.set_compressor(None)
    seen, handle = capture_model_kwargs(thinker)
    with torch.no_grad():
        thinker(**inputs)
        thinker.set_compressor(comp)
        thinker(**inputs)
    handle.remove()
    keep = thinker.last_compression.keep[0]
    assert torch.equal(seen[1]["inputs_embeds"][0], seen[0]["inputs_embeds"][0, keep])


def manual_decode(model, inputs, keep, steps):
    """Reference: gather by ``keep`` ourselves, then a plain decode loop on ``model.model`` with explicit
    positions max(original ids) + 1 + t."""
    ids = inputs["input_ids"]
    comp = model.compressor
    model.set_compressor(None)
    seen, handle = capture_model_kwargs(model)
    with torch.no_grad():
        model(**inputs)  # uncompressed prefill, only to capture the scattered embeddings and positions
    handle.remove()
    model.set_compressor(comp)
    embeds = seen[0]["inputs_embeds"][:, keep]
    pos = seen[0]["position_ids"][:, :, keep]
    cache = DynamicCache(config=model.config.get_text_config())
    tokens, logits_all = [], []
    with torch.no_grad():
        out = model.model(inputs_embeds=embeds, position_ids=pos, past_key_values=cache, use_cache=True)
        logits = model.lm_head(out.last_hidden_state[:, -1])
        next_pos = int(seen[0]["position_ids"].max()) + 1
        for t in range(steps):
            logits_all.append(logits)
            tok = logits.argmax(-1)
            tokens.append(int(tok))
            step_pos = torch.full((3, 1, 1), next_pos + t)
            out = model.model(
                inputs_embeds=model.get_input_embeddings()(tok.view(1, 1)), position_ids=step_pos,
                past_key_values=cache, use_cache=True,
            )
            logits = model.lm_head(out.last_hidden_state[:, -1])
    assert ids.shape[0] == 1
    return tokens, torch.cat(logits_all)


def test_pruned_generate_equals_manual_decode_loop(thinker):
    inputs, _ = encoder_inputs(thinker, seed=3)
    steps = 6
    with torch.no_grad():
        gen = thinker.generate(**inputs, max_new_tokens=steps, do_sample=False, output_scores=True,
                               return_dict_in_generate=True)
    keep = thinker.last_compression.keep[0]
    tokens, logits = manual_decode(thinker, inputs, keep, steps)
    assert gen.sequences[0, inputs["input_ids"].shape[1]:].tolist() == tokens
    assert torch.allclose(torch.cat(gen.scores), logits, atol=1e-4)


def test_without_the_rope_delta_fix_positions_would_be_wrong(thinker):
    """Guard that the test above can fail: the uncorrected delta gives a different next position."""
    inputs, p = encoder_inputs(thinker, seed=3)
    _, delta = thinker.get_rope_index(
        inputs["input_ids"], None, inputs["video_grid_thw"], inputs["attention_mask"], True,
        p.audio_feature_lengths, inputs["video_second_per_grid"],
    )
    with torch.no_grad():
        thinker(**inputs)
    kept = int(thinker.last_compression.keep.sum())
    assert kept + int(delta[0]) != kept + int(thinker.rope_deltas[0])


def test_no_compression_without_audio_in_video(thinker):
    inputs, _ = encoder_inputs(thinker)
    comp = thinker.compressor
    with torch.no_grad():
        thinker.set_compressor(None)
        ref = thinker(**inputs).logits
        thinker.set_compressor(comp)
        # an input without audio placeholders is never compressed
        ids = torch.tensor([[100, 101, 102, 103]])
        out = thinker(input_ids=ids, attention_mask=torch.ones_like(ids), use_audio_in_video=True)
        assert thinker.last_compression is None and out.logits.shape[1] == 4
        full = thinker(**inputs)
    assert thinker.last_compression is not None and full.logits.shape[1] < ref.shape[1]


def test_batched_prefill_with_left_padding_matches_single_rows():
    model = tiny_thinker(seed=1, compact_ids=False, compressor=OmniSIFT(0.5, 0.4, hidden_size=64, selector_dim=32,
                                                                        selector_heads=4))
    one, _ = encoder_inputs(model, batch=1, seed=5)
    two, _ = encoder_inputs(model, batch=1, seed=6)
    # row 1 has two more text tokens; row 0 is left-padded to the same length
    ids1 = torch.cat([torch.tensor([[105, 106]]), two["input_ids"]], dim=1)
    ids0 = torch.cat([torch.tensor([[0, 0]]), one["input_ids"]], dim=1)
    mask0 = torch.cat([torch.zeros(1, 2, dtype=torch.long), one["attention_mask"]], dim=1)
    batch = dict(
        input_ids=torch.cat([ids0, ids1]), attention_mask=torch.cat([mask0, torch.ones_like(ids1)]),
        pixel_values_videos=torch.cat([one["pixel_values_videos"], two["pixel_values_videos"]]),
        video_grid_thw=torch.cat([one["video_grid_thw"], two["video_grid_thw"]]),
        input_features=torch.cat([one["input_features"], two["input_features"]]),
        feature_attention_mask=torch.cat([one["feature_attention_mask"], two["feature_attention_mask"]]),
        use_audio_in_video=True, video_second_per_grid=torch.tensor([1.0, 1.0]),
    )
    single = dict(two, input_ids=ids1, attention_mask=torch.ones_like(ids1))
    with torch.no_grad():
        out = model(**batch)
        keep = model.last_compression.keep.clone()
        deltas = model.rope_deltas.clone()
        ref0 = model(**one).logits[0, -1]
        ref1 = model(**single).logits[0, -1]
    assert int(keep[0].sum()) + 2 == int(keep[1].sum())  # same budget; pads are not kept
    assert torch.allclose(out.logits[0, -1], ref0, atol=1e-4)
    assert torch.allclose(out.logits[1, -1], ref1, atol=1e-4)
    # both rows continue at max(original ids) + 1 after the compressed, padded prompt
    assert int(deltas[1]) == int(model.rope_deltas[0])


def test_gradients_reach_the_selector_through_the_lm_loss():
    model = tiny_thinker(seed=2, compact_ids=False, compressor=OmniSIFT(0.5, 0.4, hidden_size=64, selector_dim=32,
                                                                         selector_heads=4))
    model.train()
    inputs, _ = encoder_inputs(model)
    labels = inputs["input_ids"].clone()
    labels[:, :-2] = -100
    out = model(**inputs, labels=labels)
    # the loss is the plain LM loss on the two text labels: no auxiliary term
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.compressor.selector.named_parameters()}
    assert len(grads) == 18
    assert all(g is not None for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    # forward values are unchanged by the STE gate (it is 1 on kept tokens)
    model.eval()
    with torch.no_grad():
        ref = model(**inputs, labels=labels)
    assert torch.allclose(ref.loss, out.loss, atol=1e-5)


def test_attach_converts_a_plain_thinker():
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from leanlm.omnisift.tiny import tiny_thinker_config

    torch.manual_seed(0)
    plain = Qwen2_5OmniThinkerForConditionalGeneration(tiny_thinker_config()).eval()
    inputs, _ = encoder_inputs(plain)
    with torch.no_grad():
        ref = plain(**inputs).logits
        model = attach(plain, None)
        same = model(**inputs).logits
        model.set_compressor(RandomPruning(0.5, 0.4))
        pruned = model(**inputs).logits
    assert torch.equal(ref, same)
    assert pruned.shape[1] < ref.shape[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compression_on_cuda_matches_cpu():
    model = tiny_thinker(seed=0, compact_ids=False, compressor=OmniSIFT(0.5, 0.4, hidden_size=64, selector_dim=32,
                                                                        selector_heads=4))
    inputs, _ = encoder_inputs(model)
    with torch.no_grad():
        cpu_logits = model(**inputs).logits
        cpu_keep = model.last_compression.keep.clone()
        model.cuda()
        gpu_inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs.items()}
        gpu_logits = model(**gpu_inputs).logits
    assert torch.equal(model.last_compression.keep.cpu(), cpu_keep)
    assert torch.allclose(gpu_logits.cpu(), cpu_logits, atol=1e-3)


def test_cli_demo_runs_each_method():
    from typer.testing import CliRunner

    from leanlm.omnisift.cli import app

    for method in ("omnisift", "dycoke"):
        res = CliRunner().invoke(app, ["demo", "--method", method])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["demo", "--method", "nope"])
    assert res.exit_code != 0


def test_save_and_from_pretrained_keep_the_selector(tmp_path):
    from leanlm.omnisift.qwen_omni import OmniSIFTThinker

    def make():
        return OmniSIFT(0.5, 0.4, hidden_size=64, selector_dim=32, selector_heads=4)

    model = tiny_thinker(seed=4, compact_ids=True, compressor=make())
    model.save_pretrained(tmp_path)
    loaded = OmniSIFTThinker.from_pretrained(tmp_path, compressor=make())
    for (name, a), (_, b) in zip(model.compressor.state_dict().items(), loaded.compressor.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_mask_ste_end_to_end_dropped_audio_stays_zeroed_in_training_and_gets_gradient():
    """OmniSIFT(ste="mask") inside the thinker: in training the dropped audio tokens stay in the sequence as
    zero vectors at their original TMRoPE ids and the LM loss reaches their scores; in eval they are removed.
    The paper's ``ste="remove"`` on the same weights gives those scores exactly zero gradient."""
    grads = {}
    for ste in ("remove", "mask"):
        torch.manual_seed(0)  # the selector is initialised in OmniSIFT(): same weights in both runs
        model = tiny_thinker(seed=2, compact_ids=False, compressor=OmniSIFT(
            0.5, 0.4, hidden_size=64, selector_dim=32, selector_heads=4, ste=ste))
        model.train()
        inputs, p = encoder_inputs(model)
        labels = inputs["input_ids"].clone()
        labels[:, :-2] = -100
        scores: list[torch.Tensor] = []

        def grab(mod, args, out, scores=scores):
            out.retain_grad()
            scores.append(out)

        hook = model.compressor.selector.register_forward_hook(grab)
        seen, handle = capture_model_kwargs(model)
        out = model(**inputs, labels=labels)
        hook.remove()
        handle.remove()
        out.loss.backward()
        keep = model.last_compression.keep[0]
        layout = model.last_compression.layouts[0]
        audio = torch.stack([c.audio for c in layout.chunks])
        dropped = ~keep[audio]
        assert dropped.any()
        grads[ste] = (scores[0].grad, dropped)
        full_pos, _ = model.get_rope_index(inputs["input_ids"], None, inputs["video_grid_thw"],
                                           inputs["attention_mask"], True, p.audio_feature_lengths,
                                           inputs["video_second_per_grid"])
        sent = seen[0]["inputs_embeds"][0]
        if ste == "mask":
            gathered = keep.clone()
            gathered[audio.reshape(-1)] = True
            assert sent.shape[0] == int(gathered.sum()) == int(keep.sum()) + int(dropped.sum())
            assert torch.equal(seen[0]["position_ids"][:, 0], full_pos[:, 0, gathered])
            where = torch.nonzero(gathered, as_tuple=True)[0]
            zero_rows = torch.isin(where, audio[dropped])
            assert torch.equal(sent[zero_rows], torch.zeros_like(sent[zero_rows]))  # forward value 0
            assert (sent[~zero_rows].abs().sum(-1) > 0).all()
        else:
            assert sent.shape[0] == int(keep.sum())
        model.eval()
        with torch.no_grad():
            seen, handle = capture_model_kwargs(model)
            model(**inputs, labels=labels)
            handle.remove()
        assert seen[0]["inputs_embeds"].shape[1] == int(model.last_compression.keep[0].sum())  # removal
    g_remove, d_remove = grads["remove"]
    g_mask, d_mask = grads["mask"]
    assert torch.equal(d_remove, d_mask)  # same weights, same selection
    assert torch.equal(g_remove[d_remove], torch.zeros(int(d_remove.sum())))
    assert (g_mask[d_mask].abs() > 0).all()
